"""Seeded sampled generation from a prefilled KV cache, with edits before, between and after (the eager path).

Greedy generation (`generation.generate`) reproduces transformers' `generate`; sampling needs one thing more:
arms of an experiment must be *seed-matched*, row by row, so that two conditions that give the same logits give
the same text and a difference between arms is the intervention's, not the random stream's. transformers'
sampling draws from one global generator in batch order, so a row's draw depends on its batch neighbours.
Here every row draws from its own counter-based stream: the Gumbel noise for (row seed, step, token id) is a
hash of the three (splitmix64), so a row samples the same token for the same logits whatever batch, device or
arm it runs in. `argmax(logits / T + gumbel)` is a draw from softmax(logits / T) (the Gumbel-max trick);
`top_k` keeps the k largest logits first, as transformers' warper does.

A condition reads its prompts (prefill, with `prefill_edit` hooks on), may then edit the KV cache
(`cache_edit`: e.g. `kvsurgery.replace_last`), and samples `max_new_tokens` tokens with `decode_edit` hooks
on. With `refeed_last` the first decode call feeds the prompt's last token again, at position T (after the
cache's T entries), and the first token is sampled from that call: what the n300 source's loop did after
editing the cache. Without it the first token comes from the prefill's logits, as `generate` does. Rows of
different conditions share batches; a non-refeeding row's slot in the refeed call is masked out.

This path runs transformers' forward step by step (no CUDA graph): every result records it as `eager-sampled`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from harness.engine.formatting import RAW, PromptFormat
from harness.engine.generation import GenerationRun, PromptBatch, RowEdit, _decode, _record, encode_left, eos_ids
from harness.engine.kvsurgery import output_cache
from harness.engine.models import LoadedModel

PATH = "eager-sampled"
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(value: int) -> int:
    """A 64-bit constant as torch's int64 holds it."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_M1, _M2, _G = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(_GOLDEN)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def uniform(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(rows, vocab) float64 in (0, 1): a hash of (row seed, step, token id), on the seeds' device."""
    key = _mix(seeds.long() * _G + _G)  # (rows,): each seed's own 64-bit key, so streams never overlap
    row = _mix(key + _signed((step + 1) * _GOLDEN))
    token = torch.arange(1, vocab + 1, device=seeds.device, dtype=torch.long) * _G  # (vocab,)
    bits = _shr(_mix(row[:, None] + token[None]), 11)  # 53 random bits
    return (bits.double() + 0.5) / float(1 << 53)


def choose(logits: torch.Tensor, temperature: float, top_k: torch.Tensor, seeds: torch.Tensor,
           step: int) -> torch.Tensor:
    """(rows,) sampled token ids: argmax of logits / temperature (top_k largest kept where top_k > 0) plus the
    rows' Gumbel noise for this step."""
    scaled = logits.double() / temperature  # (rows, vocab)
    if bool((top_k > 0).any()):
        k = int(top_k.max())
        kth = scaled.topk(k, dim=-1).values.gather(1, (top_k.clamp(min=1) - 1)[:, None])  # (rows, 1)
        scaled = torch.where((top_k[:, None] > 0) & (scaled < kth), float("-inf"), scaled)
    gumbel = -torch.log(-torch.log(uniform(seeds, step, scaled.shape[-1])))
    return (scaled + gumbel).argmax(-1)


CacheEdit = Callable[[PromptBatch, torch.Tensor, Any], Any]
"""cache_edit(batch, index, cache) -> what it did (recorded): `index` (rows,) is each row's prompt index in its
condition, -1 for rows of other conditions (which the edit must leave alone)."""


@dataclass(frozen=True)
class SampledCondition:
    """Prompts sampled under one set of edits; `seeds[i]` is prompt i's stream (equal seeds: matched draws)."""

    name: str
    prompts: Sequence[str]
    seeds: Sequence[int]
    top_k: int = 0  # 0: the full distribution
    refeed_last: bool = False
    prefill_edit: RowEdit | None = None
    cache_edit: CacheEdit | None = None
    decode_edit: RowEdit | None = None


@dataclass(frozen=True)
class _Rows:
    """Per row of one padded batch: owner condition, index within it, seed, top_k, refeed."""

    owner: torch.Tensor
    local: torch.Tensor
    seeds: torch.Tensor
    top_k: torch.Tensor
    refeed: torch.Tensor


def cache_argument(model: Any) -> str:
    """The keyword the model's forward takes its KV cache by (transformers renamed `past_key_values`)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: Any) -> tuple[torch.Tensor, Any]:
    """((rows, vocab) float logits of each row's last position, the cache)."""
    extra = {cache_argument(lm.model): cache} if cache is not None else {}
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                   **extra)
    return out.logits[:, -1].float(), output_cache(out)


@contextmanager
def _entered(edits: Sequence[tuple[str, RowEdit | None, torch.Tensor]], batch: PromptBatch) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(edit(batch, index)) for name, edit, index in edits if edit is not None}


def _sample_batch(lm: LoadedModel, batch: PromptBatch, rows: _Rows, conditions: Sequence[SampledCondition],
                  temperature: float, max_new_tokens: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """(rows, width + new) ids, and what each condition's edits recorded, by phase."""
    present = [(i, c) for i, c in enumerate(conditions) if bool((rows.owner == i).any())]
    index = {c.name: torch.where(rows.owner == i, rows.local, -1) for i, c in present}
    mask = batch.attention_mask
    log: dict[str, Any] = {}
    with torch.no_grad():
        with _entered([(c.name, c.prefill_edit, index[c.name]) for _, c in present], batch) as hooks:
            logits, cache = _forward(lm, batch.input_ids, mask, (mask.long().cumsum(-1) - 1).clamp(min=0), None)
        log["prefill"] = _record(hooks)
        log["cache"] = {c.name: _record(c.cache_edit(batch, index[c.name], cache))
                        for _, c in present if c.cache_edit is not None}
        with _entered([(c.name, c.decode_edit, index[c.name]) for _, c in present], batch) as hooks:
            tokens = _loop(lm, batch, rows, logits, cache, temperature, max_new_tokens)
        log["decode"] = _record(hooks)
    return torch.cat([batch.input_ids, tokens], dim=1), log


def _loop(lm: LoadedModel, batch: PromptBatch, rows: _Rows, logits: torch.Tensor, cache: Any, temperature: float,
          max_new_tokens: int) -> torch.Tensor:
    """(rows, generated) sampled ids; rows that ended are filled with the pad id, as `generate` fills them."""
    mask, device = batch.attention_mask.long(), batch.input_ids.device
    position = mask.sum(1)  # (rows,) where the next fed token sits
    refeed = rows.refeed.to(device)
    if bool(refeed.any()):  # every row feeds its last prompt token; a non-refeeding row's slot is masked out
        mask = torch.cat([mask, refeed.long()[:, None]], dim=1)
        again, cache = _forward(lm, batch.input_ids[:, -1:], mask, position[:, None], cache)
        logits = torch.where(refeed[:, None], again, logits)
        position = position + refeed.long()
    stop = torch.tensor(sorted(eos_ids(lm)), device=device)
    pad = int(lm.tokenizer.pad_token_id)
    finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        token = choose(logits, temperature, rows.top_k.to(device), rows.seeds.to(device), step)
        token = token.masked_fill(finished, pad)
        out.append(token)
        finished |= torch.isin(token, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits, cache = _forward(lm, token[:, None], mask, position[:, None], cache)
        position = position + 1
    return torch.stack(out, dim=1)


@dataclass(frozen=True)
class SampledRun:
    """One condition's generations, what its edits recorded per batch (prefill, cache and decode phases), and
    the path that ran."""

    run: GenerationRun
    records: list[dict[str, Any]]


def _plan(conditions: Sequence[SampledCondition]) -> tuple[list[str], _Rows]:
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}; name each condition once")
    for c in conditions:
        if len(c.seeds) != len(c.prompts):
            raise ValueError(f"condition {c.name!r}: {len(c.seeds)} seeds for {len(c.prompts)} prompts; give one "
                             "seed per prompt")
    prompts = [p for c in conditions for p in c.prompts]
    rows = _Rows(torch.tensor([i for i, c in enumerate(conditions) for _ in c.prompts], dtype=torch.long),
                 torch.tensor([j for c in conditions for j in range(len(c.prompts))], dtype=torch.long),
                 torch.tensor([int(s) for c in conditions for s in c.seeds], dtype=torch.long),
                 torch.tensor([c.top_k for c in conditions for _ in c.prompts], dtype=torch.long),
                 torch.tensor([c.refeed_last for c in conditions for _ in c.prompts], dtype=torch.bool))
    return prompts, rows


def sample_conditions(lm: LoadedModel, conditions: Sequence[SampledCondition], max_new_tokens: int,
                      temperature: float, *, batch_size: int = 256,
                      fmt: PromptFormat = RAW) -> dict[str, SampledRun]:
    """Every condition's sampled continuations, as rows of shared batches; each condition's run by name."""
    if max_new_tokens < 1 or temperature <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}, temperature={temperature}; sample at least one token "
                         "at a positive temperature")
    prompts, rows = _plan(conditions)
    generations: list[Any] = []
    records: list[tuple[slice, dict[str, Any]]] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left(lm, prompts[start : start + batch_size], start, fmt)
        part = _Rows(*(t[batch.rows] for t in vars(rows).values()))
        out, log = _sample_batch(lm, batch, part, conditions, temperature, max_new_tokens)
        generations.extend(_decode(lm, batch, out))
        records.append((batch.rows, log))
    owners = rows.owner.tolist()
    path = {"path": PATH, "reason": "seeded sampling with cache edits runs transformers' forward step by step"}
    return {c.name: SampledRun(
        GenerationRun([g for g, o in zip(generations, owners, strict=True) if o == i], [],
                      [path for span, _ in records if i in owners[span]]),
        [{phase: entries[c.name] for phase, entries in log.items() if c.name in entries}
         for span, log in records if i in owners[span]])
        for i, c in enumerate(conditions)}

