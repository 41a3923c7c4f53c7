"""How a role-conditioning prompt becomes model input, and which query rows are scored (claims-spec W-B9).

A `PromptFormat` is the text around a prompt (none for raw text as published; one user turn of a chat
template otherwise) and whether the tokenizer adds BOS. Both models of a comparison read the same format,
built from the instruct model's tokenizer: base and instruct share a vocabulary, so the only difference
between the arms is the model.

`encoder(score="prompt")` also marks the query rows that a raw prompt has: BOS (where the model's spec adds
it) and the user-content tokens, whose character span overlaps the prompt inside the formatted text (offsets
from the fast tokenizer). Template scaffolding (turn markers, a default system turn, the generation prompt)
is read as context by every scored row, but its own rows are not averaged, so a templated run is scored on
the rows of the raw run (the as-published measurement, every row scored) and the two compare row for row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from harness.engine.models import LoadedModel
from harness.engine.runner import Encoded

MINIMAL_TEMPLATE = "User: {prompt}\nAssistant:"
_MARK = "\ue000prompt\ue001"  # private-use characters: no template or prompt writes them
Score = Literal["all", "prompt"]


@dataclass(frozen=True)
class ScoredEncoded(Encoded):
    """Encoded prompts and the query rows to average, (batch, seq) bool on the device."""

    rows: torch.Tensor


Encoder = Callable[[LoadedModel, Sequence[str]], Encoded]


@dataclass(frozen=True)
class PromptFormat:
    """The text around each prompt, whether the tokenizer adds special tokens (BOS), and a note for the report."""

    name: str
    prefix: str
    suffix: str
    add_special_tokens: bool
    note: str
    render: Callable[[str], str] | None = None  # the template itself, to check the split around the prompt

    def text(self, prompt: str) -> str:
        text = self.prefix + prompt + self.suffix
        if self.render is not None and self.render(prompt) != text:
            raise ValueError(f"the chat template does not place the prompt {prompt!r} verbatim between a fixed "
                             f"prefix and suffix (it rendered {self.render(prompt)!r}); this control needs a "
                             "template that inserts the user content unchanged")
        return text

    def encoder(self, score: Score = "all") -> tuple[Encoder, str]:
        """An encoder for `measure_category`, and its cache name; "prompt" also marks BOS and the content rows."""
        def encode_formatted(lm: LoadedModel, prompts: Sequence[str]) -> Encoded:
            texts = [self.text(p) for p in prompts]
            enc = lm.tokenizer(texts, add_special_tokens=self.add_special_tokens, padding=True,
                               return_tensors="pt", return_offsets_mapping=score == "prompt")
            mask = enc["attention_mask"]
            ids, lengths = enc["input_ids"].to(lm.device), [int(n) for n in mask.sum(1)]
            if score == "all":
                return Encoded(ids, mask.to(lm.device), lengths)
            start = len(self.prefix)
            stop = torch.tensor([start + len(p) for p in prompts])[:, None]
            spans = enc["offset_mapping"]  # (batch, seq, 2) character span of each token
            rows = (spans[..., 0] < stop) & (spans[..., 1] > start) & mask.bool()
            if lm.spec.bos:  # the raw prompt's first row: BOS, wherever the template put it first
                rows[:, 0] |= enc["input_ids"][:, 0] == lm.tokenizer.bos_token_id
            return ScoredEncoded(ids, mask.to(lm.device), lengths, rows.to(lm.device))
        return encode_formatted, f"{self.name}/{score}"


def raw_format(lm: LoadedModel) -> PromptFormat:
    """Raw text with BOS as the model's spec says: the sources' input."""
    return PromptFormat("raw", "", "", lm.spec.bos, f"raw text, BOS {'added' if lm.spec.bos else 'none'}")


def chat_format(lm: LoadedModel) -> PromptFormat:
    """One user turn of `lm`'s chat template with the generation prompt (the template writes BOS itself);
    where the tokenizer has none, this project's MINIMAL_TEMPLATE with BOS per the spec."""
    tokenizer = lm.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        prefix, suffix = MINIMAL_TEMPLATE.split("{prompt}")
        return PromptFormat("minimal_template", prefix, suffix, lm.spec.bos,
                            f"{lm.id}: the tokenizer has no chat template, so this project's minimal template "
                            f"{MINIMAL_TEMPLATE!r} was used (BOS {'added' if lm.spec.bos else 'none'})")

    def render(prompt: str) -> str:
        return str(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True))

    parts = render(_MARK).split(_MARK)
    if len(parts) != 2:
        raise ValueError(f"{lm.id}: the chat template wrote the user content {len(parts) - 1} times; this control "
                         "needs a template with exactly one user turn")
    return PromptFormat("chat_template", parts[0], parts[1], False,
                        f"{lm.id}: the tokenizer's chat template, one user turn, generation prompt", render)
