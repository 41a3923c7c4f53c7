"""How a claim's prompts become the text a model reads: raw (as the sources ran them) or one user turn of the
model's chat template, with or without BOS.

A claim's `[protocol]` names its format with `chat_template` (bool) and `bos` (bool; absent: the model spec's),
and the runner and generation encode through `PromptFormat`, so the keys are honoured wherever text is encoded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MINIMAL_TEMPLATE = "User: {prompt}\nAssistant:"
"""This project's one-turn template, for tokenizers without a chat template (the offline tiny tokenizer)."""


@dataclass(frozen=True)
class PromptFormat:
    """Raw text or the chat template (one user turn and the generation prompt); BOS on, off, or the spec's."""

    chat_template: bool = False
    bos: bool | None = None

    @classmethod
    def of(cls, protocol: Mapping[str, Any]) -> PromptFormat:
        """A claim protocol's format: its `chat_template` and `bos` keys."""
        bos = protocol.get("bos")
        return cls(bool(protocol.get("chat_template", False)), None if bos is None else bool(bos))

    def texts(self, tokenizer: Any, prompts: Sequence[str], spec_bos: bool) -> tuple[list[str], bool]:
        """(texts to tokenise, add_special_tokens). A chat template writes its own BOS, so none is added to it."""
        bos = spec_bos if self.bos is None else self.bos
        if not self.chat_template:
            return list(prompts), bos
        if getattr(tokenizer, "chat_template", None):
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in prompts]
            return texts, False
        return [MINIMAL_TEMPLATE.format(prompt=p) for p in prompts], bos

    def describe(self, tokenizer: Any) -> str:
        """What the report says about the format."""
        if not self.chat_template:
            return f"raw text, BOS {'per the model spec' if self.bos is None else ('on' if self.bos else 'off')}"
        if getattr(tokenizer, "chat_template", None):
            return "the tokenizer's chat template, one user turn, generation prompt"
        return f"no chat template in the tokenizer: this project's minimal template {MINIMAL_TEMPLATE!r}"


RAW = PromptFormat()
