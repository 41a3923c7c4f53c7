"""An offline byte-level BPE tokenizer for tiny and random-weight models.

No machine this project runs on can reach a model hub, so tiny models (and the published architectures
with random weights) get a tokenizer trained here, deterministically, on text written by this project.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from harness.resources import models_dir

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
CORPUS = models_dir() / "tiny-tokenizer-corpus.txt"


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
