"""The residual-patch "collapse" claim (claims-spec A.4), its nulls and controls (W-A3).

The published patch overwrites the decoder-layer output's last W positions with a source prompt's, and stays
on for the whole `generate` call: at every cached decode step the new token's residual becomes the source's
last-position vector. The nulls run the published criterion with a norm-matched random vector and on the
unpatched targets. The controls state collapse-rate differences with paired CIs: is the collapse about the
recursive source (matched non-recursive sources, a grid of sources and targets against the unpatched targets),
does it need the per-step overwrite (prefill only) or the attention sink (position 0 kept), and is it more than
the model repeating the source prompt's own argmax next token?
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.analysis.textmetrics import published_collapse, token_fraction
from harness.claimkit.effects import EffectSpec, paired_effect, stratum_effect
from harness.claimkit.gen import (
    GenContext,
    Protocol,
    control_criterion,
    inconclusive,
    mean_of,
    merged_calls,
    paired,
    result,
)
from harness.claimkit.params import DType, Schema
from harness.engine.generation import Condition, Generation, PromptBatch
from harness.engine.hooks import CallLog
from harness.engine.interventions import PatchSource, SourceRun, capture_sources, patch_residual

_TARGETS = {"target_categories": list[str], "n_targets": int}
SCHEMA = Schema(
    protocol={"layers": list[int], "site": str, "window": int,
              "mode": Literal["all_calls", "prefill_only", "decode_only"], "include_position_0": bool,
              "max_new_tokens": int, "greedy": bool, "completion": str, "collapse_min_unique_words": int,
              "n_resamples": int, "source_category": str, "target_category": str, "chat_template": bool,
              "bos": bool, "dtype": DType, "control_alpha": float},
    controls={
        "random_vector_source": _TARGETS,
        "unpatched": _TARGETS,
        "non_recursive_source": {"recursive_category": str, "non_recursive_category": str,
                                 "target_categories": list[str], "n_resamples": int},
        "grid": {"source_category": str, "target_categories": list[str], "n_sources": int, "n_targets": int,
                 "n_resamples": int, "sizes": dict[str, dict[str, int]]},
        "prefill_only": {**_TARGETS, "mode": Literal["all_calls", "prefill_only", "decode_only"]},
        "no_position_0": {**_TARGETS, "include_position_0": bool},
        "argmax_token": {**_TARGETS, "pinned_fraction": float},
    },
)

UNPATCHED = "unpatched"


@dataclass(frozen=True)
class Arm:
    """One patch condition: which source patches which target, in which mode, at every layer of the claim."""

    name: str
    sources: dict[int, PatchSource]  # model layer -> one row per source
    pairs: list[tuple[int, str]]  # (source index, target prompt)
    next_token: list[int] | None  # each source's own argmax next token (None for random vectors)
    mode: str = "all_calls"
    include_position_0: bool = True


@dataclass(frozen=True)
class Outcome:
    arm: str
    layer: int  # the published layer
    source: int
    generation: Generation
    collapse: bool
    argmax_fraction: float | None

    def row(self, full_text: bool = True) -> dict[str, Any]:
        """What the report keeps of one patched generation (without the full text: the compact grid rows)."""
        kept = {"arm": self.arm, "layer": self.layer, "source": self.source, "target": self.generation.prompt,
                "completion": self.generation.source_completion.strip(), "collapse": self.collapse,
                "argmax_fraction": self.argmax_fraction}
        return {**kept, "patched": self.generation.full_text} if full_text else kept


def layers(ctx: GenContext) -> dict[int, int]:
    """Published layer -> this model's layer, by relative depth."""
    return {published: ctx.layer(published) for published in ctx.claim.protocol["layers"]}


def sources(ctx: GenContext, prompts: Sequence[str]) -> SourceRun:
    """The source prompts' last-window residuals at every claim layer, and their own argmax next tokens."""
    return capture_sources(ctx.lm, prompts, sorted(set(layers(ctx).values())), ctx.claim.protocol["window"],
                           ctx.batch_size, ctx.fmt)


Row = tuple[int, int, int, str]  # (published layer, model layer, source index, target prompt)


@contextmanager
def _patch_rows(ctx: GenContext, arm: Arm, source_of: torch.Tensor, layer_of: torch.Tensor,
                mask: torch.Tensor) -> Iterator[dict[str, CallLog]]:
    """One batch: every claim layer patched at once, each row at its own layer (-1: none) and source."""
    with ExitStack() as stack:
        logs = {}
        for layer in sorted(set(layers(ctx).values())):
            rows = layer_of == layer  # (batch,) the rows this layer patches
            logs[f"layer_{layer}"] = stack.enter_context(patch_residual(
                ctx.lm.model, layer, arm.sources[layer].select(source_of), mode=arm.mode,
                window=ctx.claim.protocol["window"], include_position_0=arm.include_position_0,
                prompt_mask=mask, rows=rows))
        yield logs


def _condition(ctx: GenContext, arm: Arm, plan: list[Row]) -> Condition:
    """An arm as one condition of a batched generation: one row per (layer, source, target)."""
    source_of = torch.tensor([row[2] for row in plan])
    layer_of = torch.tensor([row[1] for row in plan])

    def edit(batch: PromptBatch, index: torch.Tensor) -> Any:
        safe = index.clamp(min=0)
        return _patch_rows(ctx, arm, source_of[safe], torch.where(index >= 0, layer_of[safe], -1),
                           batch.attention_mask)

    return Condition(arm.name, [row[3] for row in plan], edit)


def collapsed(ctx: GenContext, generation: Generation) -> bool:
    """The published collapse rule with the claim's word count, on the completion as the source cut it."""
    return published_collapse(generation.source_completion, ctx.claim.protocol["collapse_min_unique_words"])


def _outcomes(ctx: GenContext, arm: Arm, plan: list[Row], generations: Sequence[Generation]) -> list[Outcome]:
    outcomes = []
    for (published, _, source, _), generation in zip(plan, generations, strict=True):
        pinned = (token_fraction(list(generation.generated_ids), arm.next_token[source])
                  if arm.next_token is not None else None)
        outcomes.append(Outcome(arm.name, published, source, generation, collapsed(ctx, generation), pinned))
    return outcomes


@dataclass(frozen=True)
class ArmRuns:
    outcomes: dict[str, list[Outcome]]  # arm name -> one outcome per (layer, source, target)
    calls: dict[str, dict[str, Any]]  # arm name -> patch hook calls per model layer
    unpatched: list[Generation]


def run_arms(ctx: GenContext, arms: Sequence[Arm], unpatched: Sequence[str] = ()) -> ArmRuns:
    """Every arm's (source, target) pairs at every claim layer, and `unpatched` prompts: one batched run."""
    plans = {arm.name: [(published, layer, source, target) for published, layer in layers(ctx).items()
                        for source, target in arm.pairs] for arm in arms}
    conditions = [_condition(ctx, arm, plans[arm.name]) for arm in arms]
    runs = ctx.run(*conditions, *([Condition(UNPATCHED, unpatched)] if unpatched else []))
    calls = {arm.name: {key: merged_calls([batch[key] for batch in runs[arm.name].calls])
                        for key in sorted({key for batch in runs[arm.name].calls for key in batch})}
             for arm in arms}
    return ArmRuns({arm.name: _outcomes(ctx, arm, plans[arm.name], runs[arm.name].generations) for arm in arms},
                   calls, runs[UNPATCHED].generations if unpatched else [])


def _collapse_rate(outcomes: Sequence[Outcome]) -> float:
    return mean_of([o.collapse for o in outcomes])


def _argmax_rate(outcomes: Sequence[Outcome]) -> float:
    return mean_of([o.argmax_fraction for o in outcomes if o.argmax_fraction is not None])


def _by_layer(outcomes: Sequence[Outcome], metric: str) -> dict[str, float]:
    measure = _collapse_rate if metric == "collapse" else _argmax_rate
    found = sorted({o.layer for o in outcomes})
    return {f"{metric}_L{layer}": measure([o for o in outcomes if o.layer == layer]) for layer in found}


def _random(run: SourceRun, seed: int) -> dict[int, PatchSource]:
    """Norm-matched Gaussian sources, one seeded draw per layer."""
    return {layer: source.norm_matched_random(seed + layer) for layer, source in run.sources.items()}


def _published_pairs(ctx: GenContext, categories: Sequence[str],
                     limit: int | None = None) -> tuple[list[str], SourceRun, list[tuple[int, str]]]:
    """The published source prompt(s) paired with every target of `categories`."""
    prompts = ctx.prompts([ctx.claim.protocol["source_category"]])
    targets = ctx.prompts(categories, limit)
    return prompts, sources(ctx, prompts), [(s, t) for s in range(len(prompts)) for t in targets]


def per_target(outcomes: Sequence[Outcome], targets: Sequence[str], count: Any = None) -> list[list[float]]:
    """Each target's outcomes (over sources and layers) as 0/1: whether `count` accepts them (default: collapsed)."""
    accept = count or (lambda o: o.collapse)
    return [[float(accept(o)) for o in outcomes if o.generation.prompt == t] for t in targets]


def _over_unpatched(ctx: GenContext, name: str, patched: list[list[float]], unpatched: list[float],
                    extra: dict[str, Any], n: dict[str, int], data: dict[str, Any],
                    notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """A control whose effect is each target's patched collapse rate minus its own unpatched collapse, averaged
    over targets, with the within-target permutation interval (exact at no effect, also for rare collapses)."""
    n_resamples = ctx.claim.control(name).get("n_resamples", ctx.claim.protocol["n_resamples"])
    stated = stratum_effect(EffectSpec.of(ctx.claim, name), patched, unpatched, n_resamples, ctx.seed)
    observed = {**stated.observed, **extra, "collapse_rate_unpatched": mean_of(unpatched)}
    tests = {"within_target_permutation": {"n_resamples": n_resamples, "seed": ctx.seed,
                                           "interval": "estimate minus the quantiles of the permutation null"}}
    return result(ctx, f"control:{name}", control_criterion(ctx, name), observed, n=n, tests=tests,
                  data=data, notes=notes, effect=stated.effect, n_needed=stated.n_needed)


def as_published(ctx: GenContext) -> dict[str, Any]:
    """1 recursive source x 1 factual target x 3 layers, 30 greedy tokens, collapse rate >= 0.5."""
    p = ctx.claim.protocol
    prompts, run, pairs = _published_pairs(ctx, [p["target_category"]])
    runs = run_arms(ctx, [Arm("published", run.sources, pairs, run.next_token),
                          Arm("random_vector", _random(run, ctx.seed), pairs, None)],
                    unpatched=sorted({t for _, t in pairs}))
    patched, noise, calls = runs.outcomes["published"], runs.outcomes["random_vector"], runs.calls["published"]
    normal = {g.prompt: g for g in runs.unpatched}
    observed = {"collapse_rate": _collapse_rate(patched), "collapses": sum(o.collapse for o in patched),
                "generations": len(patched), **_by_layer(patched, "collapse"),
                "argmax_fraction": _argmax_rate(patched), "collapse_rate_random_vector": _collapse_rate(noise),
                "collapse_rate_unpatched": mean_of([collapsed(ctx, g) for g in normal.values()])}
    rows = [{**o.row(), "source_prompt": prompts[o.source], "normal": normal[o.generation.prompt].full_text,
             "random_vector": r.generation.full_text, "random_vector_collapse": r.collapse}
            for o, r in zip(patched, noise, strict=True)]
    return result(ctx, "as_published", ctx.claim.criteria["as_published"], observed,
                  n={"sources": len(prompts), "targets": len(normal), "layers": len(layers(ctx))},
                  data={"pairs": rows, "source_next_token": run.next_token, "hook_calls": calls})


def random_vector_source(ctx: GenContext) -> dict[str, Any]:
    """Null: the published criterion with norm-matched random vectors as the source, on 20 targets."""
    control = ctx.claim.control("random_vector_source")
    _, run, pairs = _published_pairs(ctx, control["target_categories"], control["n_targets"])
    runs = run_arms(ctx, [Arm("published", run.sources, pairs, run.next_token),
                          Arm("random_vector", _random(run, ctx.seed), pairs, None)])
    reference, noise = runs.outcomes["published"], runs.outcomes["random_vector"]
    observed = {"collapse_rate": _collapse_rate(noise), **_by_layer(noise, "collapse"),
                "collapse_rate_published_source": _collapse_rate(reference)}
    return result(ctx, "null:random_vector_source", control_criterion(ctx, "random_vector_source"), observed,
                  n={"targets": len(pairs), "layers": len(layers(ctx))},
                  data={"generations": [o.row() for o in reference + noise],
                        "hook_calls": runs.calls["random_vector"]})


def unpatched(ctx: GenContext) -> dict[str, Any]:
    """Null: the published metric and criterion on the same targets, unpatched."""
    control = ctx.claim.control("unpatched")
    targets = ctx.prompts(control["target_categories"], control["n_targets"])
    normal = ctx.run(Condition(UNPATCHED, targets))[UNPATCHED].generations
    observed = {"collapse_rate": mean_of([collapsed(ctx, g) for g in normal])}
    rows = [{"target": g.prompt, "completion": g.source_completion.strip(), "collapse": collapsed(ctx, g)}
            for g in normal]
    return result(ctx, "null:unpatched", control_criterion(ctx, "unpatched"), observed,
                  n={"targets": len(targets)}, data={"unpatched": rows})


def non_recursive_source(ctx: GenContext) -> dict[str, Any]:
    """Recursive against word-count-matched non-recursive sources on the same targets, paired by source."""
    control = ctx.claim.control("non_recursive_source")
    rec = ctx.prompts([control["recursive_category"]])
    non = ctx.prompts([control["non_recursive_category"]])
    targets = ctx.prompts(control["target_categories"])
    n = min(len(rec), len(non))
    if n < 2:
        return inconclusive(ctx, "control:non_recursive_source", {"source_pairs": n},
                            f"{n} matched source pair(s) in the bank; a paired CI needs at least 2")
    run = sources(ctx, rec[:n] + non[:n])
    pairs = [(s, t) for s in range(2 * n) for t in targets]
    runs = run_arms(ctx, [Arm("non_recursive_source", run.sources, pairs, run.next_token)])
    outcomes, calls = runs.outcomes["non_recursive_source"], runs.calls["non_recursive_source"]
    per_source = [_collapse_rate([o for o in outcomes if o.source == s]) for s in range(2 * n)]
    stated = paired_effect(EffectSpec.of(ctx.claim, "non_recursive_source"), per_source[:n], per_source[n:])
    _, p_value, tests = paired(per_source[:n], per_source[n:], ctx.seed, control["n_resamples"])
    rec_out, non_out = [o for o in outcomes if o.source < n], [o for o in outcomes if o.source >= n]
    observed = {**stated.observed, "p_value_sign_flip": p_value,
                "collapse_rate_recursive": _collapse_rate(rec_out),
                "collapse_rate_non_recursive": _collapse_rate(non_out),
                "argmax_fraction_recursive": _argmax_rate(rec_out),
                "argmax_fraction_non_recursive": _argmax_rate(non_out),
                "mean_tokens_recursive": mean_of(run.lengths[:n]),
                "mean_tokens_non_recursive": mean_of(run.lengths[n:])}
    data = {"sources": {"recursive": rec[:n], "non_recursive": non[:n]}, "targets": targets,
            "generations": [o.row() for o in outcomes], "hook_calls": calls}
    return result(ctx, "control:non_recursive_source", control_criterion(ctx, "non_recursive_source"),
                  observed, n={"source_pairs": n, "targets": len(targets), "layers": len(layers(ctx))},
                  tests=tests, data=data, effect=stated.effect, n_needed=stated.n_needed)


def grid(ctx: GenContext) -> dict[str, Any]:
    """Many recursive sources x many targets, each target against its own unpatched collapse."""
    control = ctx.control("grid")  # smaller on SmolLM2 on the CPU: [controls.grid].sizes
    rec = ctx.prompts([control["source_category"]], control["n_sources"])
    targets = ctx.prompts(control["target_categories"], control["n_targets"])
    if len(rec) < control["n_sources"] or len(targets) < control["n_targets"]:
        return inconclusive(ctx, "control:grid", {"sources": len(rec), "targets": len(targets)},
                            f"{len(rec)} sources and {len(targets)} targets in the bank; the control needs "
                            f"{control['n_sources']} and {control['n_targets']}")
    run = sources(ctx, rec)
    runs = run_arms(ctx, [Arm("grid", run.sources, [(s, t) for s in range(len(rec)) for t in targets],
                              run.next_token)], unpatched=targets)
    outcomes = runs.outcomes["grid"]
    base = [float(collapsed(ctx, g)) for g in runs.unpatched]
    extra = {"collapse_rate": _collapse_rate(outcomes), **_by_layer(outcomes, "collapse"),
             "argmax_fraction": _argmax_rate(outcomes)}
    data = {"sources": rec, "unpatched": [g.full_text for g in runs.unpatched], "hook_calls": runs.calls["grid"],
            "generations": [o.row(full_text=False) for o in outcomes]}
    return _over_unpatched(ctx, "grid", per_target(outcomes, targets), base, extra,
                           {"sources": len(rec), "targets": len(targets), "layers": len(layers(ctx))}, data,
                           ctx.size_notes("grid"))


def _variant(ctx: GenContext, name: str) -> dict[str, Any]:
    """The published source and targets under the control's mode or position-0 setting, against unpatched."""
    control, p = ctx.claim.control(name), ctx.claim.protocol
    _, run, pairs = _published_pairs(ctx, control["target_categories"], control["n_targets"])
    targets = list(dict.fromkeys(t for _, t in pairs))
    mode = control.get("mode", p["mode"])
    keep_0 = control.get("include_position_0", p["include_position_0"])
    runs = run_arms(ctx, [Arm("published", run.sources, pairs, run.next_token),
                          Arm(name, run.sources, pairs, run.next_token, mode, keep_0)], unpatched=targets)
    reference, variant = runs.outcomes["published"], runs.outcomes[name]
    extra = {"collapse_rate": _collapse_rate(variant), **_by_layer(variant, "collapse"),
             "collapse_rate_published": _collapse_rate(reference), "argmax_fraction": _argmax_rate(variant),
             "argmax_fraction_published": _argmax_rate(reference)}
    data = {"mode": mode, "include_position_0": keep_0, "hook_calls": runs.calls[name],
            "generations": [o.row() for o in reference + variant]}
    return _over_unpatched(ctx, name, per_target(variant, targets), [float(collapsed(ctx, g)) for g in runs.unpatched],
                           extra, {"targets": len(targets), "layers": len(layers(ctx))}, data)


def prefill_only(ctx: GenContext) -> dict[str, Any]:
    return _variant(ctx, "prefill_only")


def no_position_0(ctx: GenContext) -> dict[str, Any]:
    return _variant(ctx, "no_position_0")


def argmax_token(ctx: GenContext) -> dict[str, Any]:
    """Collapse that is more than the model repeating the source prompt's own argmax next token."""
    control = ctx.claim.control("argmax_token")
    _, run, pairs = _published_pairs(ctx, control["target_categories"], control["n_targets"])
    targets = list(dict.fromkeys(t for _, t in pairs))
    runs = run_arms(ctx, [Arm("published", run.sources, pairs, run.next_token)], unpatched=targets)
    outcomes = runs.outcomes["published"]
    limit = control["pinned_fraction"]

    def pinned(o: Outcome) -> bool:
        return (o.argmax_fraction or 0.0) >= limit

    extra = {"argmax_fraction": _argmax_rate(outcomes), **_by_layer(outcomes, "argmax_fraction"),
             "collapse_rate": _collapse_rate(outcomes),
             "collapsed_and_pinned_rate": mean_of([o.collapse and pinned(o) for o in outcomes])}
    unpinned = per_target(outcomes, targets, lambda o: o.collapse and not pinned(o))
    token = run.next_token[0]  # the same event on the unpatched generation: collapsed, and not pinned to it
    base = [float(collapsed(ctx, g) and token_fraction(list(g.generated_ids), token) < limit)
            for g in runs.unpatched]
    data = {"source_next_token": run.next_token, "hook_calls": runs.calls["published"],
            "generations": [o.row() for o in outcomes]}
    return _over_unpatched(ctx, "argmax_token", unpinned, base, extra,
                           {"targets": len(targets), "layers": len(layers(ctx))}, data)


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "null:random_vector_source": random_vector_source,
    "null:unpatched": unpatched,
    "control:non_recursive_source": non_recursive_source,
    "control:grid": grid,
    "control:prefill_only": prefill_only,
    "control:no_position_0": no_position_0,
    "control:argmax_token": argmax_token,
}
