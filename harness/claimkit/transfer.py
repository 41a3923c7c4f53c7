"""The n300 behaviour-transfer family (claims-spec A.7.6, W-A6): prompt pairs, the source's arms and the arms
that take them apart, run as rows of one seed-matched sampled generation (`harness.engine.sampling`).

Per pair (a recursive source prompt, a baseline prompt, a seed), every arm samples from the baseline prompt:

| arm             | the cache it samples from                           | V_PROJ hook while sampling           |
|-----------------|-----------------------------------------------------|--------------------------------------|
| baseline        | the prompt's own (transformers' `generate`: top_k)  | none                                 |
| transfer        | last min(T_b, T_s) positions, all layers: source's  | persistent L27 patch (as coded)      |
| random          | the prompt's own                                    | persistent L27 patch of noise        |
| wrong_layer     | as transfer                                         | persistent patch at L5 (L27's rows)  |
| kv_only         | as transfer                                         | none                                 |
| v_fires         | the prompt's own, with L27 v overwritten at prefill | none (the patch fired at prefill)    |
| kv_nonrecursive | as transfer, from a token-matched non-recursive span| persistent L27 patch of that span's  |

All but `baseline` feed the prompt's last token again after the cache (the source's loop) and sample from the
full distribution. The persistent patch is the source's: it writes the source's last W rows into a call's last
W positions only when min(call length, T_source) >= W, and it is entered after the prompt is read, so it
meets only one-token calls: the CallLogs count its calls and writes (W-A6).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.claimkit.context import ModelContext
from harness.claimkit.gen import merged_calls
from harness.claimkit.rvwindows import Matched, matched_spans
from harness.engine.formatting import PromptFormat
from harness.engine.generation import PromptBatch, RowEdit
from harness.engine.hooks import Call, edit_site
from harness.engine.kvsurgery import KVRows, replace_last
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, forward_capture
from harness.engine.sampling import CacheEdit, SampledCondition, SampledRun, sample_conditions

ARMS = ("baseline", "transfer", "random", "wrong_layer", "kv_only", "v_fires", "kv_nonrecursive")
AS_PUBLISHED = ("baseline", "transfer", "random", "wrong_layer")
PERSISTENT = ("transfer", "random", "wrong_layer", "kv_nonrecursive")  # arms with the source's decode-time patch


def draw_pairs(sources: Sequence[str], baselines: Sequence[str], n: int, seed: int) -> list[tuple[str, str]]:
    """(source, baseline) pairs as the source drew them: n distinct of each (seeded) when both lists are long
    enough, else every index pair in list order and seeded draws with replacement for the rest."""
    rng = random.Random(seed)
    available = min(len(sources), len(baselines))
    if n <= available:
        return list(zip(rng.sample(list(sources), n), rng.sample(list(baselines), n), strict=True))
    first = list(zip(sources[:available], baselines[:available], strict=True))
    return first + [(rng.choice(list(sources)), rng.choice(list(baselines))) for _ in range(n - available)]


@dataclass(frozen=True)
class VRows:
    """Right-aligned last `window` rows of one v site per prompt, (n, window, width), and each prompt's length."""

    rows: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def capture(cls, lm: LoadedModel, prompts: Sequence[str], layer: int, window: int, batch_size: int,
                fmt: PromptFormat) -> VRows:
        site = f"blocks.{layer}.attn.v"
        cap = forward_capture(lm, prompts, [site], Window(window), batch_size, fmt)
        left = cap.windows[site]  # (n, window, width), rows left-aligned, cap.rows[i] of them real
        valid = torch.tensor(cap.rows)[:, None]
        column = torch.arange(window)[None] - (window - valid)  # (n, window): source row per column
        index = column.clamp(min=0).to(left.device)[..., None].expand(-1, -1, left.shape[-1])
        keep = (column >= 0).to(left.device, left.dtype)[..., None]
        return cls(left.gather(1, index) * keep, torch.tensor(cap.lengths))

    def noise(self, lengths: torch.Tensor, seed: int) -> VRows:
        """Gaussian rows of the same shape (seeded), with other lengths: the source's random control."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(self.rows.shape, generator=gen).to(self.rows.device, self.rows.dtype)
        return VRows(noise, lengths)


def _mine(index: torch.Tensor, of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of this condition, their source index) for a batch's `index` (-1: another condition's row)."""
    chosen = index >= 0
    return chosen, of[index.clamp(min=0).cpu()]


def persistent_v(lm: LoadedModel, layer: int, source: VRows, of: torch.Tensor, window: int) -> RowEdit:
    """The source's persistent V_PROJ patch: writes a row's last `window` positions with its source's last
    rows only on calls where min(call length, T_source) >= window."""
    def edit(batch: PromptBatch, index: torch.Tensor) -> Any:
        chosen, src = _mine(index, of)
        device = lm.device
        vectors, lengths, chosen = source.rows[src].to(device), source.lengths[src].to(device), chosen.to(device)

        def write(v: torch.Tensor, call: Call) -> torch.Tensor | None:  # v: (rows, seq, width)
            rows = chosen & (lengths.clamp(max=call.seq_len) >= window)
            if not bool(rows.any()):
                return None
            out = v.clone()
            out[rows, -window:] = vectors[rows].to(v.dtype)
            return out

        return edit_site(lm.model, f"blocks.{layer}.attn.v", write)
    return edit


def prefill_v(lm: LoadedModel, layer: int, source: VRows, of: torch.Tensor, window: int) -> RowEdit:
    """The V patch made to fire: at prefill, each row's last min(window, T_row, T_source) positions of the v
    projection get its source's last rows (so the cache holds them for every later step)."""
    def edit(batch: PromptBatch, index: torch.Tensor) -> Any:
        chosen, src = _mine(index, of)
        device = lm.device
        vectors = source.rows[src].to(device)
        lengths = batch.attention_mask.to(device).sum(1)
        span = torch.minimum(torch.minimum(lengths, source.lengths[src].to(device)).clamp(max=window),
                             torch.where(chosen.to(device), window, 0))

        def write(v: torch.Tensor, _call: Call) -> torch.Tensor:  # v: (rows, width_in_tokens, v_width)
            from_end = torch.arange(v.shape[1] - 1, -1, -1, device=device)
            where = (from_end[None] < span[:, None])[..., None]
            aligned = vectors[:, (window - 1 - from_end).clamp(min=0)]
            return torch.where(where, aligned.to(v.dtype), v)

        return edit_site(lm.model, f"blocks.{layer}.attn.v", write, mode="prefill_only")
    return edit


def kv_edit(source: KVRows, of: torch.Tensor) -> CacheEdit:
    """The source's cache transplant: each row's last min(T_b, T_s) positions at every layer from its source."""
    def edit(batch: PromptBatch, index: torch.Tensor, cache: Any) -> dict[str, Any]:
        chosen, src = _mine(index, of)
        done = replace_last(cache, batch.attention_mask, source, torch.where(chosen, src, -1))
        mine = chosen.tolist()
        return {key: [v for v, keep in zip(values, mine, strict=False) if keep] for key, values in done.items()}
    return edit


@dataclass(frozen=True)
class TransferContext(ModelContext):
    """One model's pairs, source captures and seed-matched arms, cached across the protocols of a module."""

    def pairs(self) -> list[tuple[str, str]]:
        p = self.params
        sources = [q for name in p["source_categories"] for q in self.bank.category(name)]
        baselines = [q for name in p["baseline_categories"] for q in self.bank.category(name)]
        return draw_pairs(sources, baselines, p["n_pairs"], self.seed + p["pair_seed"])

    def partners(self) -> Matched:
        """Per pair, a non-recursive passage span with exactly its source's token count (kv_nonrecursive)."""
        key = (self.lm.id, self.lm.resolved_revision, self.bank.sha256, "partners", self.seed)
        if key not in self.cache:
            sources = [s for s, _ in self.pairs()]
            self.cache[key] = matched_spans(self.lm, sources, self.bank.category(self.params["passage_category"]),
                                            self.fmt)
        found: Matched = self.cache[key]
        return found

    def run(self, arms: Sequence[str]) -> dict[str, SampledRun]:
        key = (self.lm.id, self.lm.weights, self.lm.resolved_revision, self.bank.sha256, tuple(arms), self.seed)
        if key not in self.cache:
            self.cache[key] = sample_conditions(self.lm, self.conditions(arms), self.params["max_new_tokens"],
                                                self.params["temperature"], batch_size=self.params["batch_rows"],
                                                fmt=self.fmt)
        found: dict[str, SampledRun] = self.cache[key]
        return found

    def conditions(self, arms: Sequence[str]) -> list[SampledCondition]:
        p, pairs = self.params, self.pairs()
        sources = list(dict.fromkeys(s for s, _ in pairs))
        of = torch.tensor([sources.index(s) for s, _ in pairs])
        late, early, window = self.layer(p["late_layer"]), self.layer(p["early_layer"]), p["window"]
        kv = KVRows.capture(self.lm, sources, self.batch_size, self.fmt)
        v = VRows.capture(self.lm, sources, late, window, self.batch_size, self.fmt)
        baselines = [b for _, b in pairs]
        seeds = [self.seed + p["row_seed"] + i for i in range(len(pairs))]
        own = VRows.capture(self.lm, baselines, late, window, self.batch_size, self.fmt)
        noise = own.noise(own.lengths, self.seed + p["row_seed"])  # shaped like the baseline's own v, as coded
        index = torch.arange(len(pairs))

        def matched(name: str, **edits: Any) -> SampledCondition:  # seed-matched to the baseline arm, refeeding
            return SampledCondition(name, baselines, seeds, refeed_last=True, **edits)

        made = {
            "baseline": SampledCondition("baseline", baselines, seeds, top_k=p["baseline_top_k"]),
            "transfer": matched("transfer", cache_edit=kv_edit(kv, of),
                                decode_edit=persistent_v(self.lm, late, v, of, window)),
            "random": matched("random", decode_edit=persistent_v(self.lm, late, noise, index, window)),
            "wrong_layer": matched("wrong_layer", cache_edit=kv_edit(kv, of),
                                   decode_edit=persistent_v(self.lm, early, v, of, window)),
            "kv_only": matched("kv_only", cache_edit=kv_edit(kv, of)),
            "v_fires": matched("v_fires", prefill_edit=prefill_v(self.lm, late, v, of, window)),
        }
        if "kv_nonrecursive" in arms:
            spans = [q for q in self.partners().partners if q is not None]
            if len(spans) != len(pairs):
                raise ValueError(f"{len(pairs) - len(spans)} of {len(pairs)} pairs have no token-matched "
                                 f"non-recursive source in {p['passage_category']!r}; the kv_nonrecursive arm "
                                 "needs one per pair: add passages to the bank")
            kv_n = KVRows.capture(self.lm, spans, self.batch_size, self.fmt)
            v_n = VRows.capture(self.lm, spans, late, window, self.batch_size, self.fmt)
            made["kv_nonrecursive"] = matched("kv_nonrecursive", cache_edit=kv_edit(kv_n, index),
                                              decode_edit=persistent_v(self.lm, late, v_n, index, window))
        return [made[arm] for arm in arms]


def patch_calls(run: SampledRun, phase: str = "decode") -> dict[str, Any]:
    """An arm's hook calls by sequence length and its writes in one phase (`prefill` or `decode`), over its
    batches: for the persistent patch, the W-A6 count."""
    return merged_calls([record.get(phase) for record in run.records])
