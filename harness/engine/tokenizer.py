"""An offline byte-level BPE tokenizer for tiny and random-weight models.

No machine this project runs on can reach a model hub, so tiny models (and the published architectures
with random weights) get a tokenizer trained here, deterministically, on text written by this project.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from harness.resources import models_dir

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
CORPUS = models_dir() / "tiny-tokenizer-corpus.txt"


def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: the character that stands for each byte (printable bytes stand for
    themselves; the other 68 take the characters from U+0100 on, in byte order)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(0x100 + i) for i, b in enumerate(others)}
    return {c: b for b, c in chars.items()}


BYTE_OF = _byte_alphabet()


class OfflineTokenizer(PreTrainedTokenizerFast):
    """The offline byte-level BPE with readable decoding: bytes that do not form UTF-8 come out as `\\xNN`
    escapes instead of U+FFFD. Tiny and random-weight models emit stray byte tokens all the time; this way
    their texts show what was generated. Text that is valid UTF-8 decodes exactly as before."""

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        core = self.backend_tokenizer
        pieces = [core.id_to_token(i) or "" for i in ids if i not in skip]
        raw = bytes(BYTE_OF.get(c, 0x3F) for piece in pieces for c in piece)  # 0x3F: "?" for a foreign char
        return raw.decode("utf-8", errors="backslashreplace")


def readable(tokenizer: Any) -> OfflineTokenizer:
    """The same offline tokenizer (vocabulary, specials, padding side), decoding with escapes."""
    return OfflineTokenizer(tokenizer_object=tokenizer.backend_tokenizer, bos_token=tokenizer.bos_token,
                            eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
                            padding_side=tokenizer.padding_side)


def corpus_lines(path: Path = CORPUS) -> list[str]:
    """The training text of the offline tokenizer: a frozen file (the prompts of the first prompt banks), so
    tiny models stay the same when a claim's bank changes."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def build_offline_tokenizer(lines: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (BOS prepended, like Mistral and Llama) on `lines`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = list(lines) if lines is not None else corpus_lines()
    if not corpus:
        raise ValueError(f"no prompt text to train the offline tokenizer on (looked in {CORPUS})")
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    bos_id = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="right"
    )


def corpus_digest(lines: Iterable[str]) -> str:
    """A short hash of the training corpus, recorded with every model that uses this tokenizer."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
