"""An offline byte-level BPE tokenizer for tiny and random-weight models.

No machine this project runs on can reach a model hub, so tiny models (and the published architectures
with random weights) get a tokenizer trained here, deterministically, on the project's own prompt banks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "prompts"


def corpus_lines(prompt_dir: Path = PROMPTS_DIR) -> list[str]:
    """Every quoted string of every prompt bank, sorted by file, so the tokenizer is reproducible."""
    lines: list[str] = []
    for path in sorted(prompt_dir.glob("*.toml")):
        for raw in path.read_text(encoding="utf-8").splitlines():
            text = raw.strip().rstrip(",")
            if text.startswith('"') and text.endswith('"'):
                lines.append(text[1:-1])
    return lines


def build_offline_tokenizer(lines: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (BOS prepended, like Mistral and Llama) on `lines`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = list(lines) if lines is not None else corpus_lines()
    if not corpus:
        raise ValueError(f"no prompt text to train the offline tokenizer on (looked in {PROMPTS_DIR})")
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
