"""Batched forward passes with captures: right padding, windows gathered per prompt by its true length.

Right padding keeps every real token at the position it has when the prompt runs alone, and causal attention
never lets a real token see a pad, so batched results equal one-prompt-at-a-time within dtype tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import torch

from harness.engine.formatting import RAW, PromptFormat
from harness.engine.hooks import StopForward, capture, stop_after
from harness.engine.models import LoadedModel
from harness.engine.sites import parse


@dataclass(frozen=True)
class Encoded:
    input_ids: torch.Tensor  # (batch, seq), right padded
    attention_mask: torch.Tensor  # (batch, seq)
    lengths: list[int]  # true token count of each prompt, BOS included where the model has one


class PromptTooLong(ValueError):
    """A prompt with more tokens than the model has positions; raised before any forward pass."""


def position_limit(lm: LoadedModel) -> int | None:
    """The most positions the model takes (config.max_position_embeddings), or None when it sets none."""
    value = getattr(lm.model.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def shorten(text: str, width: int = 60) -> str:
    """A prompt as an error shows it: quoted, cut after `width` characters with its full length."""
    return repr(text) if len(text) <= width else f"{text[:width] + '...'!r} ({len(text)} characters)"


def check_lengths(lm: LoadedModel, prompts: Sequence[str], counts: Sequence[int], reserve: int = 0) -> None:
    """PromptTooLong naming the first prompt whose tokens (plus `reserve` generated ones) exceed the limit."""
    limit = position_limit(lm)
    if limit is None:
        return
    over = [(p, n) for p, n in zip(prompts, counts, strict=True) if n + reserve > limit]
    if not over:
        return
    prompt, count = over[0]
    room = (f"{limit} positions" if not reserve else
            f"{limit} positions, {limit - reserve} for the prompt once {reserve} are kept for generated tokens")
    raise PromptTooLong(f"prompt {shorten(prompt)} is {count} tokens under {lm.id}'s tokenizer, but {lm.id} "
                        f"takes at most {room} ({len(over)} of {len(prompts)} prompts too long); shorten or "
                        "remove the prompt(s)")


def batch_end(counts: Sequence[int], start: int, size: int, token_budget: int) -> int:
    """End of the batch from `start`: at most `size` prompts and `token_budget` padded tokens (batch x longest);
    a prompt longer than the budget runs alone."""
    stop, longest = start, 0
    while stop < len(counts) and stop - start < size:
        longest = max(longest, counts[stop])
        if stop > start and (stop - start + 1) * longest > token_budget:
            break
        stop += 1
    return stop


def encode(lm: LoadedModel, prompts: Sequence[str], fmt: PromptFormat = RAW) -> Encoded:
    """Tokenise prompts in `fmt` (default: raw text as the sources did, BOS as the model's spec says)."""
    if not prompts:
        raise ValueError(f"no prompts to encode for {lm.id}; give at least one")
    texts, special = fmt.texts(lm.tokenizer, prompts, lm.spec.bos)
    enc = lm.tokenizer(texts, add_special_tokens=special, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    return Encoded(enc["input_ids"].to(lm.device), mask.to(lm.device), [int(n) for n in mask.sum(1)])


def token_counts(lm: LoadedModel, prompts: Sequence[str], fmt: PromptFormat = RAW) -> list[int]:
    """Each prompt's token count as `encode` would give it (one batched tokenizer call)."""
    if not prompts:
        return []
    texts, special = fmt.texts(lm.tokenizer, prompts, lm.spec.bos)
    return [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=special)["input_ids"]]


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
        index = index.clamp(max=hidden.shape[1] - 1)  # an empty window starts past the end; rows masked below
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
    halvings: int = 0  # times a batch was halved after running out of device memory


Intervene = Callable[[Encoded, int], AbstractContextManager[Any]]
"""intervene(batch, first): a context manager (hooks) for one batch whose first prompt is prompts[first]."""


def forward_capture(lm: LoadedModel, prompts: Sequence[str], sites: Sequence[str], window: Window,
                    batch_size: int = 32, fmt: PromptFormat = RAW, intervene: Intervene | None = None) -> Captured:
    """Run `prompts` in batches; keep only each site's window. Stops after the deepest site's layer.

    A batch holds at most `batch_size` prompts and `lm.token_budget` padded tokens; a prompt longer than the
    model's positions raises PromptTooLong before any forward. `intervene`, where given, is entered around each
    batch's forward before the captures are registered, so a capture at the site it edits keeps the edited
    tensor (e.g. `interventions.patch_rows` with the batch's lengths). A batch that runs out of device memory
    is halved and retried (down to one prompt); the number of halvings is returned so the report can record it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size (--claim-batch-size), e.g. 32")
    counts = token_counts(lm, prompts, fmt)
    check_lengths(lm, prompts, counts)
    last_layer = max(parse(site)[0] for site in sites)
    kept: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    lengths: list[int] = []
    start, size, halvings = 0, batch_size, 0
    while start < len(prompts):
        chunk = prompts[start : batch_end(counts, start, size, lm.token_budget)]
        try:
            acts, enc_lengths = _capture_batch(lm, chunk, sites, window, last_layer, fmt, intervene, start)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size, halvings = max(1, len(chunk) // 2), halvings + 1
            _empty_cache(lm)
            continue
        for site in sites:
            kept[site].extend(acts[site])
        lengths.extend(enc_lengths)
        start += len(chunk)
    return Captured({s: torch.cat(v) for s, v in kept.items()}, lengths, window.valid(lengths), halvings)


def _capture_batch(lm: LoadedModel, chunk: Sequence[str], sites: Sequence[str], window: Window,
                   last_layer: int, fmt: PromptFormat, intervene: Intervene | None = None,
                   first: int = 0) -> tuple[dict[str, list[torch.Tensor]], list[int]]:
    enc = encode(lm, chunk, fmt)
    edits = intervene(enc, first) if intervene is not None else nullcontext()
    keep = capture(lm.model, sites, lambda t: window.gather(t, enc.lengths), model_name=lm.id)
    # the early stop after the deepest site is the normal end of this forward
    with torch.no_grad(), edits, keep as acts, stop_after(lm.model, last_layer, lm.id), suppress(StopForward):
        lm.model.base_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    return acts, enc.lengths


def _empty_cache(lm: LoadedModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.empty_cache()


def iter_hidden_states(lm: LoadedModel, prompts: Sequence[str], batch_size: int = 32,
                       fmt: PromptFormat = RAW) -> Iterator[tuple[Encoded, tuple[torch.Tensor, ...]]]:
    """`output_hidden_states` per batch (right padded): the embeddings, each decoder layer's output, the last
    one after the final norm, as transformers returns them (n_layers + 1 tensors of (batch, seq, d_model)).

    Yields (encoded batch, hidden states); reduce each batch before the next one is computed. A prompt longer
    than the model's positions raises PromptTooLong before any forward, as in forward_capture.
    """
    check_lengths(lm, prompts, token_counts(lm, prompts, fmt))
    for start in range(0, len(prompts), batch_size):
        enc = encode(lm, prompts[start : start + batch_size], fmt)
        with torch.no_grad():
            out = lm.model.base_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                      use_cache=False, output_hidden_states=True)
        yield enc, tuple(out.hidden_states)
