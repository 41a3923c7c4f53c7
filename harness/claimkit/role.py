"""Role-conditioning claims (claims-spec part B): attention entropy of an instruct model and of its base model
on prompt categories, RFC/RSI aggregated as the source did, and the instruct - base comparison as published.

Measurement
-----------
`measure(lm, categories)` runs each category's prompts in batches through the model body
(`lm.model.base_model`, no LM head) inside `harness.attention.attention_entropy`, so every layer's entropies
come back per prompt and head, published and normalised, with the attention mass on key 0 and the token
counts: one `.cpu()` per batch, nothing kept on the device. Categories are data keys: one routine handles
any number of them, in any order. Prompts are raw text with BOS as the model's spec says (no chat template),
unless an encoder of another `harness.claimkit.role_format.PromptFormat` is passed; an encoder that marks
query rows (`score="content"`) has only those rows averaged.

Comparison (claims-spec B.2 (b), compare_base_instruct.py)
----------------------------------------------------------
Per model, per head: token-weighted pooled entropy per category; RFC_h = 1 - H_self/H_neutral,
RSI_h = (H_conf - H_self)/H_neutral; per layer the mean over the counted heads with a t-CI (df = heads - 1).
dRFC per layer = instruct - base with SE = sqrt(sd_b^2/n + sd_i^2/n); "significant" = CI excludes 0. The
source counted heads 0..27 (`range(28)`) whatever the model; `published_heads_counted` reproduces that and
counts all heads where a model has fewer than 28 (tiny models), saying so in the result's notes.

`as_published` is here; the controls are in `harness.claimkit.role_controls`, which also holds `PROTOCOLS`;
their effects with prompt-level CIs are made by `harness.claimkit.role_effects`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.analysis.entropy import Array, Mask
from harness.analysis.rfc import (
    NEUTRAL,
    SELF,
    HeadLevelRFC,
    LayerComparison,
    LayerStats,
    PromptEntropies,
    UnstableRule,
    bonferroni_significant,
    category_entropy,
    compare_layers,
    head_level_rfc,
    threshold_counts,
    unstable_denominator,
)
from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim, Criterion
from harness.claimkit.results import protocol_result
from harness.claimkit.role_format import Encoder, ScoredEncoded
from harness.claimkit.verdicts import Effect
from harness.engine.attention import EntropyResult, attention_entropy
from harness.engine.models import LoadedModel
from harness.engine.runner import encode

RATIO = "ratio, unitless"
Categories = Mapping[str, PromptEntropies]


@dataclass(frozen=True)
class CategoryRun:
    """Entropies of one prompt category under one model; per-head fields are (prompt, layer, head).

    published: mean of H_q over the scored rows (q = 0..T-1 unless an encoder marked rows); normalised: mean
    of G_q over the scored rows with q >= 2 (NaN where none); bos_mass: mean attention on key 0; n_tokens:
    (prompt,) T; n_normalised: (prompt,) scored queries with q >= 2; n_rows: (prompt,) scored rows (= T when
    every row is scored), the pooling weights of the published variant.
    """

    prompts: tuple[str, ...]
    layers: tuple[int, ...]
    published: Array
    normalised: Array
    bos_mass: Array
    n_tokens: Array
    n_normalised: Array
    n_rows: Array

    def entropies(self, variant: str = "published", keep: Mask | None = None) -> PromptEntropies:
        """The prompts in `keep` (default all) as rfc's PromptEntropies, pooled by their own query counts."""
        fields = {"published": (self.published, self.n_rows),
                  "normalised": (self.normalised, self.n_normalised)}
        if variant not in fields:
            raise ValueError(f"entropy variant {variant!r} unknown; use one of {list(fields)}")
        values, weights = fields[variant]
        index = np.flatnonzero(keep) if keep is not None else np.arange(len(self.prompts))
        return PromptEntropies(values[index], weights[index])

    def at_layers(self, layers: Sequence[int]) -> CategoryRun:
        """The same prompts, per-head fields restricted to `layers` (which must have been measured)."""
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ValueError(f"layers {missing} were not measured (measured: {list(self.layers)}); "
                             "measure them first")
        idx = [self.layers.index(layer) for layer in layers]
        return CategoryRun(self.prompts, tuple(layers), self.published[:, idx], self.normalised[:, idx],
                           self.bos_mass[:, idx], self.n_tokens, self.n_normalised, self.n_rows)

    def select(self, index: Sequence[int]) -> CategoryRun:
        """The prompts at `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return CategoryRun(tuple(self.prompts[i] for i in idx), self.layers, self.published[idx],
                           self.normalised[idx], self.bos_mass[idx], self.n_tokens[idx],
                           self.n_normalised[idx], self.n_rows[idx])


def _stack(prompts: Sequence[str], parts: Sequence[EntropyResult], n_heads: int) -> CategoryRun:
    """Concatenate per-batch results (layer, batch, head) into one CategoryRun (prompt, layer, head)."""
    if parts[0].n_heads != n_heads:
        raise ValueError(f"the attention layers have {parts[0].n_heads} query heads but the config says "
                         f"{n_heads}; check the model config (num_attention_heads)")

    def per_head(name: str) -> Array:
        return np.concatenate([getattr(p, name).double().numpy().transpose(1, 0, 2) for p in parts])

    def counts(name: str) -> Array:
        return np.concatenate([getattr(p, name).double().numpy() for p in parts])

    return CategoryRun(tuple(prompts), parts[0].layers, per_head("published"), per_head("normalised"),
                       per_head("bos_mass"), counts("n_tokens"), counts("n_normalised"), counts("n_rows"))


def measure_category(lm: LoadedModel, prompts: Sequence[str], *, batch_size: int = 32,
                     layers: Sequence[int] | None = None, encoder: Encoder = encode) -> CategoryRun:
    """Entropies of `prompts` under `lm`, `batch_size` prompts per forward, one host transfer per batch."""
    if not prompts or batch_size < 1:
        raise ValueError(f"{len(prompts)} prompts, batch_size {batch_size}: give >= 1 prompt and batch_size")
    parts: list[EntropyResult] = []
    with torch.no_grad(), attention_entropy(lm.model, layers) as engine:
        for start in range(0, len(prompts), batch_size):
            enc = encoder(lm, prompts[start:start + batch_size])
            lm.model.base_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
            parts.append(engine.pop(enc.rows if isinstance(enc, ScoredEncoded) else None).cpu())
    return _stack(prompts, parts, lm.dims.n_heads)


def measure(lm: LoadedModel, categories: Mapping[str, Sequence[str]], **kwargs: Any
            ) -> dict[str, CategoryRun]:
    """`measure_category` for every category key (any keys, any number of them)."""
    return {name: measure_category(lm, prompts, **kwargs) for name, prompts in categories.items()}


def entropies(runs: Mapping[str, CategoryRun], variant: str = "published",
              keep: Mapping[str, Mask] | None = None) -> dict[str, PromptEntropies]:
    return {k: run.entropies(variant, None if keep is None else keep[k]) for k, run in runs.items()}


def published_heads_counted(n_heads: int, cap: int) -> tuple[int, str | None]:
    """The source's head count: the first `cap` heads ([protocol].published_heads_counted: the source's
    `range(28)`); all heads (and a note) when the model has fewer."""
    if n_heads < 1 or cap < 1:
        raise ValueError(f"n_heads={n_heads}, cap={cap}: both must be >= 1")
    if n_heads >= cap:
        return cap, None
    return n_heads, (f"the source counted heads 0..{cap - 1}; this model has only {n_heads} query heads, "
                     f"so all {n_heads} are counted (a model with >= {cap} heads would drop the rest)")


@dataclass(frozen=True)
class PairComparison:
    """Aggregation (b) for base and instruct on the counted heads, and instruct - base per layer."""

    base: HeadLevelRFC
    instruct: HeadLevelRFC
    rfc: LayerComparison
    rsi: LayerComparison
    unstable: Mask  # (layer,) base or instruct RFC denominator flagged (W-B4)
    heads_counted: int


def compare_pair(base: Categories, instruct: Categories, heads_counted: int | None,
                 rule: UnstableRule | None = None) -> PairComparison:
    """Head-level RFC/RSI of both models, their layer differences and the unstable-denominator flags.

    A layer is flagged when either model's layer RFC or its layer H_neutral (pooled, mean over the counted
    heads) breaks `rule`: the layer-level reading of W-B4 that the published tables also allow.
    """
    b, i = head_level_rfc(base, heads_counted), head_level_rfc(instruct, heads_counted)
    h_neutral = [category_entropy(c[NEUTRAL], "pooled", heads_counted).mean(-1) for c in (base, instruct)]
    flags = [unstable_denominator(m.rfc.mean, h, rule) for m, h in zip((b, i), h_neutral, strict=True)]
    return PairComparison(b, i, compare_layers(b.rfc, i.rfc), compare_layers(b.rsi, i.rsi),
                          flags[0] | flags[1], b.rfc.n_heads)


def summarise(cmp: PairComparison, threshold: float = 0.01) -> dict[str, Any]:
    """The observed figures of one comparison, named as the claims' [published] tables name them."""
    d = cmp.rfc.diff
    counts = threshold_counts(d, threshold)
    return {
        "mean_drfc": float(d.mean()), "median_drfc": float(np.median(d)), "std_drfc_ddof0": float(d.std()),
        "min_drfc": float(d.min()), "min_drfc_layer": int(d.argmin()), "max_drfc": float(d.max()),
        "max_drfc_layer": int(d.argmax()), "n_layers": int(d.size), "layers_below": counts.below,
        "layers_above": counts.above, "layers_near_zero": counts.near_zero,
        "frac_below": counts.below / d.size, "frac_above": counts.above / d.size,
        "frac_near_zero": counts.near_zero / d.size,
        "n_significant_rfc": int(cmp.rfc.significant.sum()),
        "n_significant_rfc_negative": int((cmp.rfc.ci_high < 0).sum()),
        "n_significant_rsi": int(cmp.rsi.significant.sum()), "mean_drsi": float(cmp.rsi.diff.mean()),
        "n_bonferroni_rfc": int(bonferroni_significant(d, cmp.rfc.se, cmp.rfc.df).sum()),
        "base_rfc_mean": float(cmp.base.rfc.mean.mean()),
        "instruct_rfc_mean": float(cmp.instruct.rfc.mean.mean()),
        "n_unstable_layers": int(cmp.unstable.sum()), "heads_counted": cmp.heads_counted,
    }


def _series(stats: LayerStats) -> dict[str, list[float]]:
    return {"mean": stats.mean.tolist(), "ci_low": stats.ci_low.tolist(), "ci_high": stats.ci_high.tolist()}


def layer_profile(metric: str, layers: Sequence[int], base: LayerStats, instruct: LayerStats,
                  diff: LayerComparison) -> dict[str, Any]:
    """harness.report.figures layout 3: both models with their head-level CIs, and the difference as bars."""
    return {"kind": "layer_profile", "metric": metric, "units": RATIO, "layers": list(layers),
            "series": {"base": _series(base), "instruct": _series(instruct)},
            "diff": {"label": f"d{metric} = instruct - base", "mean": diff.diff.tolist(),
                     "ci_low": diff.ci_low.tolist(), "ci_high": diff.ci_high.tolist()}}


def entropy_heatmap(base: Categories, instruct: Categories, category: str,
                    layers: Sequence[int], units: str = "nats") -> dict[str, Any]:
    """harness.report.figures layout 4: pooled H(instruct) - H(base) of one category, every layer and head."""
    values = category_entropy(instruct[category], "pooled") - category_entropy(base[category], "pooled")
    return {"kind": "layer_head", "metric": f"H(instruct) - H(base), {category}, all heads", "units": units,
            "values": values.tolist(), "layers": list(layers)}


def comparison_data(cmp: PairComparison, base: Categories, instruct: Categories, layers: Sequence[int],
                    units: str = "nats", detail: bool = False) -> dict[str, Any]:
    """The `data` of a comparison: the RFC profile and the flagged layers; with `detail` also the RSI
    profile and the self-prompt entropy heatmap (drawn for as_published only, to keep the page light)."""
    data: dict[str, Any] = {
        "rfc_by_layer": layer_profile("RFC", layers, cmp.base.rfc, cmp.instruct.rfc, cmp.rfc),
        "significant_rfc_layers": [int(x) for x in np.flatnonzero(cmp.rfc.significant)],
        "unstable_layers": [int(x) for x in np.flatnonzero(cmp.unstable)]}
    if detail:
        data["rsi_by_layer"] = layer_profile("RSI", layers, cmp.base.rsi, cmp.instruct.rsi, cmp.rsi)
        data["entropy_diff"] = entropy_heatmap(base, instruct, SELF, layers, units)
    return data


@dataclass
class RoleContext:
    """What every role-conditioning protocol needs: the claim, the instruct model and its base, the bank.

    `cache` holds measurements by (model, revision, encoder, prompts), so protocols of one test module that
    need the same forwards run them once; the test module passes one dict per module.
    """

    claim: Claim
    instruct: LoadedModel
    base: LoadedModel
    bank: PromptBank
    seed: int = 0
    batch_size: int = 32
    cache: dict[Hashable, dict[str, CategoryRun]] = field(default_factory=dict)

    @classmethod
    def for_instruct(cls, claim: Claim, lm: LoadedModel, load: Callable[[str], LoadedModel], bank: PromptBank,
                     seed: int = 0, batch_size: int = 32,
                     cache: dict[Hashable, dict[str, CategoryRun]] | None = None) -> RoleContext:
        """The context of an instruct model, its base loaded with `load` (the plugin's model_cache.get).

        The plugin's cache holds two models, so `lm` (loaded first) and its base both stay loaded; nothing
        here loads a third.
        """
        if lm.spec.base is None:
            raise ValueError(f"{lm.id} names no base model in fixtures/models/registry.toml; role-"
                             "conditioning claims compare an instruct model with its base: add `base = ...`")
        return cls(claim, lm, load(lm.spec.base), bank, seed, batch_size, {} if cache is None else cache)

    def categories(self, bank: PromptBank | None = None) -> dict[str, list[str]]:
        """The protocol's categories, first `prompts_per_category` prompts of each in list order."""
        p = self.claim.protocol
        chosen = bank or self.bank
        return {k: chosen.category(k)[:p["prompts_per_category"]] for k in p["categories"]}

    def runs(self, lm: LoadedModel, categories: Mapping[str, Sequence[str]],
             encoder: tuple[Encoder, str] | None = None) -> dict[str, CategoryRun]:
        """Measured entropies of `categories` under `lm`, from the cache when already measured; `encoder` is
        a (function, name) pair such as `PromptFormat.encoder()` (default: raw text, every row scored)."""
        fn, name = encoder or (encode, "raw/all")
        key = self.key(lm, categories, name)
        if key not in self.cache:
            self.cache[key] = measure(lm, categories, batch_size=self.batch_size, encoder=fn)
        return self.cache[key]

    @staticmethod
    def key(lm: LoadedModel, categories: Mapping[str, Sequence[str]], encoder: str = "raw/all") -> Hashable:
        """The cache key of a measurement: model, revision, encoder name and the prompts by category."""
        return lm.id, lm.resolved_revision, encoder, tuple((k, tuple(v)) for k, v in categories.items())

    def heads(self, setting: str) -> tuple[int, str | None]:
        """Heads counted under a control's `heads` setting: "as_published" (28-capped) or "all"."""
        n_heads = self.instruct.dims.n_heads
        if setting == "all":
            return n_heads, None
        if setting == "as_published":
            return published_heads_counted(n_heads, self.claim.protocol["published_heads_counted"])
        raise ValueError(f"heads = {setting!r} in {self.claim.path}; use 'as_published' or 'all'")

    def rule(self) -> UnstableRule:
        """When a layer's RFC denominator counts as unstable: the claim's [protocol.unstable_rule]."""
        return UnstableRule(**self.claim.protocol.get("unstable_rule", {}))

    def pair_notes(self) -> tuple[str, ...]:
        """A warning when base and instruct hold the same weights (random weights of one architecture)."""
        if self.base.resolved_revision != self.instruct.resolved_revision:
            return ()
        return (f"{self.base.id} and {self.instruct.id} have the same weights "
                f"({self.base.resolved_revision}): every instruct - base difference is 0 by construction",)

    def published(self) -> dict[str, Any]:
        return {k: v for k, v in self.claim.published.items()
                if isinstance(v, int | float | list) and not isinstance(v, bool)}

    def kind(self, control: str) -> str:
        """A control's kind in the claim file: control (counted) or robustness (reported beside)."""
        return str(self.claim.control(control).get("kind", "control"))


@dataclass(frozen=True)
class Extras:
    """What a protocol adds to a comparison's result: more observed figures and data, notes, exclusions."""

    observed: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    exclusions: Mapping[str, int] = field(default_factory=dict)
    banks: tuple[PromptBank, ...] = ()
    units: str = "nats"
    detail: bool = False  # add the RSI profile and the entropy heatmap to `data`
    effect: Effect | None = None  # a control's effect with its prompt-level CI (role_effects)
    n_needed: int | None = None
    tests: Mapping[str, Any] = field(default_factory=dict)


def pair_result(ctx: RoleContext, protocol: str, kind: str, criterion: Criterion,
                runs: tuple[Mapping[str, CategoryRun], Mapping[str, CategoryRun]],
                cats: tuple[Categories, Categories], heads_counted: int, extras: Extras = Extras()
                ) -> dict[str, Any]:
    """A protocol result for one comparison: `runs` and `cats` are (base, instruct)."""
    cmp = compare_pair(cats[0], cats[1], heads_counted, ctx.rule())
    observed = summarise(cmp, ctx.claim.protocol["threshold"]) | dict(extras.observed)
    observed["n_heads"] = ctx.instruct.dims.n_heads
    data = comparison_data(cmp, cats[0], cats[1], runs[1][SELF].layers, extras.units, extras.detail)
    data |= dict(extras.data)
    data["prompt_tokens"] = {k: r.n_tokens.astype(int).tolist() for k, r in runs[1].items()}
    n = {k: int(c.n_tokens.size) for k, c in cats[1].items()}
    return protocol_result(ctx.claim, protocol, kind, criterion, observed, lm=ctx.instruct,
                           banks=extras.banks or (ctx.bank,), n=n, exclusions=extras.exclusions,
                           published=ctx.published(), notes=(*extras.notes, *ctx.pair_notes()), data=data,
                           tests=extras.tests, effect=extras.effect, n_needed=extras.n_needed)


def as_published(ctx: RoleContext) -> dict[str, Any]:
    """Raw text, no chat template, heads counted as the source did, aggregation (b), instruct - base."""
    categories = ctx.categories()
    runs = ctx.runs(ctx.base, categories), ctx.runs(ctx.instruct, categories)
    heads, note = ctx.heads("as_published")
    mean_tokens = {f"mean_tokens_{k}": float(r.n_tokens.mean()) for k, r in runs[1].items()}
    return pair_result(ctx, "as_published", "as_published", ctx.claim.criteria["as_published"], runs,
                       (entropies(runs[0]), entropies(runs[1])), heads,
                       Extras(observed=mean_tokens, notes=(note,) if note else (), detail=True))
