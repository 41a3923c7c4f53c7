"""Batched forward passes with captures: right padding, windows gathered per prompt by its true length.

Right padding keeps every real token at the position it has when the prompt runs alone, and causal attention
never lets a real token see a pad, so batched results equal one-prompt-at-a-time within dtype tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.hooks import StopForward, capture, stop_after
from harness.models import LoadedModel
from harness.sites import parse


@dataclass(frozen=True)
class Encoded:
    input_ids: torch.Tensor  # (batch, seq), right padded
    attention_mask: torch.Tensor  # (batch, seq)
    lengths: list[int]  # true token count of each prompt, BOS included where the model has one


def encode(lm: LoadedModel, prompts: Sequence[str]) -> Encoded:
    """Tokenise raw text as the sources did: no chat template, BOS as the model's spec says."""
    if not prompts:
        raise ValueError(f"no prompts to encode for {lm.id}; give at least one")
    enc = lm.tokenizer(list(prompts), add_special_tokens=lm.spec.bos, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    return Encoded(enc["input_ids"].to(lm.device), mask.to(lm.device), [int(n) for n in mask.sum(1)])


def token_counts(lm: LoadedModel, prompts: Sequence[str]) -> list[int]:
    return [len(lm.tokenizer(p, add_special_tokens=lm.spec.bos)["input_ids"]) for p in prompts]


@dataclass(frozen=True)
class Window:
    """Which rows of each prompt a metric reads: the last `size` real tokens, optionally never position 0."""

    size: int
    exclude_bos: bool = False

    def bounds(self, length: int) -> tuple[int, int]:
        """(start, stop) of the window in a prompt of `length` tokens; W = min(size, available)."""
        first = 1 if self.exclude_bos else 0
        return max(length - self.size, first), length

    def gather(self, hidden: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """(batch, seq, d) -> (batch, size, d), rows left-aligned, missing rows zero. One gather, no host sync."""
        bounds = [self.bounds(n) for n in lengths]
        offsets = torch.arange(self.size)
        starts = torch.tensor([start for start, _ in bounds])[:, None]
        counts = torch.tensor([stop - start for start, stop in bounds])[:, None]
        index = (starts + offsets.clamp(max=counts - 1).clamp(min=0)).to(hidden.device)  # (batch, size)
        valid = (offsets < counts).to(hidden.device, hidden.dtype).unsqueeze(-1)  # (batch, size, 1)
        rows = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return rows * valid

    def valid(self, lengths: Sequence[int]) -> list[int]:
        """Rows each prompt's window really holds."""
        return [stop - start for start, stop in (self.bounds(n) for n in lengths)]


@dataclass
class Captured:
    """Windowed activations per site, (n_prompts, window, width), with each prompt's token count."""

    windows: dict[str, torch.Tensor]
    lengths: list[int]
    rows: list[int]  # valid rows per prompt in its window


def forward_capture(lm: LoadedModel, prompts: Sequence[str], sites: Sequence[str], window: Window,
                    batch_size: int = 32) -> Captured:
    """Run `prompts` in batches; keep only each site's window. Stops after the deepest site's layer."""
    last_layer = max(parse(site)[0] for site in sites)
    kept: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    lengths: list[int] = []
    base = lm.model.base_model
    for start in range(0, len(prompts), batch_size):
        enc = encode(lm, prompts[start : start + batch_size])
        with torch.no_grad(), capture(lm.model, sites, lambda t, n=enc.lengths: window.gather(t, n),
                                      model_name=lm.id) as acts, stop_after(lm.model, last_layer, lm.id):
            try:
                base(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
            except StopForward:
                pass
        for site in sites:
            kept[site].extend(acts[site])
        lengths.extend(enc.lengths)
    return Captured({s: torch.cat(v) for s, v in kept.items()}, lengths, window.valid(lengths))
