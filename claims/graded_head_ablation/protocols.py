"""Graded head ablation (claims-spec B.3 `graded_head_ablation`, W-B10): planned by the source, never run.

The source's plan scales five heads' attention patterns by 0.5 ("half_out") or 0 ("zero_out") in place and
reads entropy back at the same hook, which measures the edit, not its effect (W-B10). Here each target
head's output is scaled through its slice of the o_proj input (`harness.interventions.scale_heads`; query
heads are counted per query head under GQA). For everything downstream this equals scaling the head's
pattern, since the head's output is its pattern times its values. Entropy and RFC are then measured in the
layers AFTER the ablated one and compared with an unablated run on the same prompts. The ablated layer's own
entropy must not move at all (its attention runs before the edit): that is checked, not assumed.

There is no published figure, so nothing here can be reproduced: both protocols are of kind `measure`
(verdict `measured`). `measure` runs the plan and records the effect sizes; its criterion is only that the
experiment is well formed; `measure:random_heads` ablates other heads of the same layers for scale. Both
results are also marked non-diagnostic. Targets are mapped to smaller models by relative depth (layers) and
modulo the head count (heads), with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.analysis.entropy import Array
from harness.analysis.rfc import category_entropy, layer_metric
from harness.analysis.stats import nan_mean
from harness.claimkit.params import Schema
from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim
from harness.claimkit.results import protocol_result
from harness.claimkit.role import CategoryRun, entropies, measure
from harness.engine.interventions import scale_heads
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer

SCHEMA = Schema(
    protocol={"targets": list[list[int]], "published_n_heads": int, "factors": list[float], "site": str,
              "categories": list[str], "prompts_per_category": int, "chat_template": bool, "min_effect": float},
    controls={"random_heads": {"n_random": int, "factor": float}},
)


@dataclass(frozen=True)
class Target:
    """A head to ablate: as published, and mapped to this model."""

    published: tuple[int, int]
    layer: int
    head: int

    @property
    def label(self) -> str:
        (layer, head) = self.published
        mapped = f"L{self.layer}H{self.head}"
        return mapped if (layer, head) == (self.layer, self.head) else f"L{layer}H{head} -> {mapped}"


def map_targets(claim: Claim, lm: LoadedModel) -> tuple[list[Target], tuple[str, ...]]:
    """The claim's (layer, head) targets on this model: layers by relative depth, heads modulo n_heads."""
    dims = lm.dims
    targets = [Target((int(layer), int(head)), map_layer(int(layer), claim.published_n_layers, dims.n_layers),
                      int(head) % dims.n_heads) for layer, head in claim.protocol["targets"]]
    moved = [t.label for t in targets if t.published != (t.layer, t.head)]
    notes = (f"targets mapped from {claim.published_n_layers} layers x {claim.protocol['published_n_heads']} "
             f"heads to {dims.n_layers} x {dims.n_heads} (layer by relative depth, head modulo "
             f"{dims.n_heads}): {', '.join(moved)}",) if moved else ()
    return targets, notes


@dataclass(frozen=True)
class Effect:
    """One ablation against the clean run; per-layer arrays cover `downstream` (the layers after it)."""

    target: Target
    factor: float
    ablated_layer_change: float  # max |H_ablated - H_clean| at the ablated layer itself: 0 when well formed
    downstream: tuple[int, ...]
    delta_entropy: Array  # (layer,) pooled entropy change, mean over heads and categories, nats
    delta_rfc: Array  # (layer,) RFC change (aggregation b, all heads)

    def record(self) -> dict[str, Any]:
        """One row of the page's effects table."""
        d_rfc, d_h = np.abs(self.delta_rfc), np.abs(self.delta_entropy)
        empty = not self.downstream
        return {"target": self.target.label, "factor": self.factor, "downstream_layers": len(self.downstream),
                "ablated_layer_change": self.ablated_layer_change,
                "mean_delta_entropy": float("nan") if empty else float(self.delta_entropy.mean()),
                "max_abs_delta_entropy": float("nan") if empty else float(d_h.max()),
                "mean_abs_delta_rfc": float("nan") if empty else float(d_rfc.mean()),
                "max_abs_delta_rfc": float("nan") if empty else float(d_rfc.max())}


def _pooled(runs: Mapping[str, CategoryRun]) -> Array:
    """(layer,) token-weighted entropy per head, averaged over heads and categories."""
    return np.mean([category_entropy(c, "pooled").mean(-1) for c in entropies(runs).values()], axis=0)


def ablation_effect(lm: LoadedModel, clean: Mapping[str, CategoryRun], target: Target, factor: float,
                    batch_size: int = 32) -> Effect:
    """Scale `target` by `factor`, measure its layer and every later one, and compare with `clean`."""
    layers = list(range(target.layer, lm.dims.n_layers))
    prompts = {k: list(run.prompts) for k, run in clean.items()}
    with scale_heads(lm.model, target.layer, [target.head], factor):
        ablated = measure(lm, prompts, batch_size=batch_size, layers=layers)
    base = {k: run.at_layers(layers) for k, run in clean.items()}
    own = max(float(np.abs(ablated[k].published[:, 0] - base[k].published[:, 0]).max()) for k in clean)
    down = {k: run.at_layers(layers[1:]) for k, run in ablated.items()} if len(layers) > 1 else {}
    if not down:
        return Effect(target, factor, own, (), np.zeros(0), np.zeros(0))
    before = {k: run.at_layers(layers[1:]) for k, run in clean.items()}
    delta_h = _pooled(down) - _pooled(before)
    delta_rfc = layer_metric(entropies(down), "rfc") - layer_metric(entropies(before), "rfc")
    return Effect(target, factor, own, tuple(layers[1:]), delta_h, delta_rfc)


@dataclass(frozen=True)
class AblationContext:
    """What the graded-ablation protocols need: the claim, the model (an instruct model), the bank."""

    claim: Claim
    lm: LoadedModel
    bank: PromptBank
    seed: int = 0
    batch_size: int = 32
    cache: dict[Hashable, dict[str, CategoryRun]] = field(default_factory=dict)

    def clean(self) -> dict[str, CategoryRun]:
        """The unablated run on the protocol's categories, measured once per model and bank."""
        p = self.claim.protocol
        prompts = {k: self.bank.category(k)[:p["prompts_per_category"]] for k in p["categories"]}
        key = (self.lm.id, self.lm.resolved_revision, tuple((k, tuple(v)) for k, v in prompts.items()))
        if key not in self.cache:
            self.cache[key] = measure(self.lm, prompts, batch_size=self.batch_size)
        return self.cache[key]

    def effects(self, clean: Mapping[str, CategoryRun], targets: Sequence[Target],
                factors: Sequence[float]) -> list[Effect]:
        return [ablation_effect(self.lm, clean, t, float(f), self.batch_size)
                for t in targets for f in factors]


def summary(effects: Sequence[Effect], min_effect: float) -> dict[str, Any]:
    """Well-formedness figures and effect sizes over all conditions (factor-wise means of |dRFC|)."""
    measured = [e for e in effects if e.downstream]
    effective = [float(np.abs(e.delta_entropy).max() > min_effect) for e in measured]
    observed: dict[str, Any] = {
        "n_conditions": len(effects), "n_conditions_measured": len(measured),
        "ablated_layer_max_abs_change": max(e.ablated_layer_change for e in effects),
        "hook_effective_fraction": nan_mean(effective)}
    for factor in sorted({e.factor for e in effects}, reverse=True):
        rows = [e for e in measured if e.factor == factor]
        observed[f"mean_abs_delta_rfc_x{factor:g}"] = nan_mean([float(np.abs(e.delta_rfc).mean()) for e in rows])
        observed[f"mean_abs_delta_entropy_x{factor:g}"] = nan_mean([float(np.abs(e.delta_entropy).mean())
                                                                 for e in rows])
    return observed


def delta_profile(effects: Sequence[Effect], n_layers: int, factor: float) -> dict[str, Any]:
    """harness.report.figures layout 3: dRFC per layer after each target's ablation at `factor` (NaN upstream)."""
    series = {}
    for e in effects:
        if e.factor == factor and e.downstream:
            values = np.full(n_layers, np.nan)
            values[list(e.downstream)] = e.delta_rfc
            series[e.target.label] = {"mean": values.tolist()}
    return {"kind": "layer_profile", "metric": f"dRFC (ablated x{factor:g} - clean)",
            "units": "ratio, unitless", "layers": list(range(n_layers)), "series": series}


def _result(ctx: AblationContext, protocol: str, kind: str, criterion: Mapping[str, Any],
            effects: list[Effect], notes: tuple[str, ...], n_prompts: Mapping[str, int]) -> dict[str, Any]:
    observed = summary(effects, ctx.claim.protocol["min_effect"])
    no_downstream = sum(1 for e in effects if not e.downstream)
    data: dict[str, Any] = {"effects": [e.record() for e in effects]}
    for factor in sorted({e.factor for e in effects}):
        data[f"delta_rfc_by_layer_x{factor:g}"] = delta_profile(effects, ctx.lm.dims.n_layers, factor)
    notes = (*notes, "no published figure: a measurement, not a reproduction; the criterion checks "
             "well-formedness only (non-diagnostic)")
    exclusions = {"no_downstream_layer": no_downstream} if no_downstream else {}
    published = {k: v for k, v in ctx.claim.published.items() if not isinstance(v, str)}
    return protocol_result(ctx.claim, protocol, kind, dict(criterion), observed, lm=ctx.lm, banks=(ctx.bank,),
                           n=dict(n_prompts), exclusions=exclusions, notes=notes, non_diagnostic=True,
                           data=data, published=published)


def planned(ctx: AblationContext) -> dict[str, Any]:
    """The planned experiment: every target at every factor, effects measured downstream."""
    targets, notes = map_targets(ctx.claim, ctx.lm)
    clean = ctx.clean()
    effects = ctx.effects(clean, targets, ctx.claim.protocol["factors"])
    return _result(ctx, "measure", "measure", ctx.claim.criteria["measure"], effects, notes,
                   {k: len(r.prompts) for k, r in clean.items()})


def random_heads(ctx: AblationContext) -> dict[str, Any]:
    """Other heads of the target layers (seeded draw, never a target), ablated at the control's factor."""
    control = ctx.claim.control("random_heads")
    targets, notes = map_targets(ctx.claim, ctx.lm)
    rng = np.random.default_rng(ctx.seed)
    chosen: list[Target] = []
    for layer in sorted({t.layer for t in targets if t.layer < ctx.lm.dims.n_layers - 1}):
        taken = {t.head for t in targets if t.layer == layer}
        free = [h for h in range(ctx.lm.dims.n_heads) if h not in taken]
        picks = rng.choice(free, size=min(control["n_random"], len(free)), replace=False) if free else []
        chosen += [Target((layer, int(h)), layer, int(h)) for h in picks]
    clean = ctx.clean()
    effects = ctx.effects(clean, chosen, [control["factor"]])
    return _result(ctx, "measure:random_heads", "measure", control["criterion"], effects,
                   (*notes, f"random heads (seed {ctx.seed}): {', '.join(t.label for t in chosen)}"),
                   {k: len(r.prompts) for k, r in clean.items()})


PROTOCOLS: dict[str, Callable[[AblationContext], dict[str, Any]]] = {
    "measure": planned,
    "measure:random_heads": random_heads,
}
