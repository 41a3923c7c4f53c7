"""The layer-31 attention-ablation "naked loop" claim (claims-spec A.3) and its controls (W-A2).

The published detector reads the decoded FULL text, prompt included, and its word rule
len(words) > 0.8 * len(set(words)) holds for any text with a word in it. Every protocol therefore also runs
the detector where it should stay silent (unablated text, other layers, ordinary prompts) and flags the
criterion non-diagnostic where it fires there too; the calibrated control measures repetition on the
completion only, ablated against normal, prompt by prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from harness.analysis.textmetrics import RepetitionCheck, completion_metrics, published_repetition
from harness.claimkit.gen import (
    GenContext,
    Protocol,
    control_criterion,
    inconclusive,
    mean_of,
    merged_calls,
    paired,
    published_nulls,
    result,
)
from harness.claimkit.params import DType, Schema
from harness.engine.generation import Condition, Generation, GenerationRun, RowEdit
from harness.engine.interventions import zero_attention_output

SCHEMA = Schema(
    protocol={"layer": int, "site": str, "ablation": Literal["zero"], "hook_mode": Literal["all_calls"],
              "max_new_tokens": int, "greedy": bool, "detector": Literal["complete", "corrected"],
              "detector_text": Literal["full", "completion"], "prompt_category": str, "chat_template": bool,
              "dtype": DType},
    controls={
        "detector_on_unablated": {},
        "other_layers": {"layers": list[int], "random_layers": int},
        "non_recursive_prompts": {"prompt_category": str},
        "n20": {"prompt_category": str, "min_prompts": int},
        "calibrated_repetition": {"prompt_category": str, "metric": str, "n_resamples": int},
    },
)


def _ablation(ctx: GenContext, layer: int) -> RowEdit:
    """The published ablation at `layer`, on the rows of its own condition."""
    return lambda _batch, index: zero_attention_output(ctx.lm.model, layer, rows=index >= 0)


def _both(ctx: GenContext, prompts: Sequence[str]) -> tuple[GenerationRun, GenerationRun, int]:
    """Normal and L31-ablated generations of the same prompts, as the source ran them (in one batched run)."""
    layer = ctx.layer(ctx.claim.protocol["layer"])
    runs = ctx.run(Condition("normal", prompts), Condition("ablated", prompts, _ablation(ctx, layer)))
    return runs["normal"], runs["ablated"], layer


def _detect(ctx: GenContext, run: GenerationRun) -> list[RepetitionCheck]:
    """The published detector on each decoded full text (prompt included), as the source ran it."""
    return [published_repetition(text, ctx.claim.protocol["detector"]) for text in run.full_texts]


def _detection_rate(ctx: GenContext, run: GenerationRun) -> float:
    return mean_of([check.fired for check in _detect(ctx, run)])


def _row(ctx: GenContext, plain: Generation, cut: Generation) -> dict[str, Any]:
    """One prompt side by side: normal and ablated text, what the detector saw, the completion metrics."""
    rule = ctx.claim.protocol["detector"]
    return {"prompt": plain.prompt, "normal": plain.full_text, "ablated": cut.full_text,
            "normal_completion": plain.completion, "ablated_completion": cut.completion,
            "detector_normal": list(published_repetition(plain.full_text, rule).fired_checks),
            "detector_ablated": list(published_repetition(cut.full_text, rule).fired_checks),
            "metrics_normal": completion_metrics(list(plain.generated_ids)).as_dict(),
            "metrics_ablated": completion_metrics(list(cut.generated_ids)).as_dict()}


def _side_by_side(ctx: GenContext, normal: GenerationRun, ablated: GenerationRun) -> dict[str, Any]:
    rows = [_row(ctx, a, b) for a, b in zip(normal.generations, ablated.generations, strict=True)]
    return {"prompts": rows, "hook_calls": merged_calls(ablated.calls)}


def _rates(ctx: GenContext, normal: GenerationRun, ablated: GenerationRun, layer: int) -> dict[str, Any]:
    found = _detect(ctx, ablated)
    return {"detection_rate": mean_of([c.fired for c in found]),
            "detection_rate_unablated": _detection_rate(ctx, normal),
            "loop_phrase_rate": mean_of([c.loop_phrase_found for c in found]), "prompts_tested": len(found),
            "prompts_with_patterns": sum(c.fired for c in found), "layer": layer}


def _null(ctx: GenContext, detection_rate: float, where: str) -> dict[str, Any]:
    return published_nulls(ctx, "detection_rate", {where: detection_rate})


def as_published(ctx: GenContext) -> dict[str, Any]:
    """3 published-style prompts, 40 greedy tokens, detector on the ablated full text, rate >= 0.5."""
    normal, ablated, layer = _both(ctx, ctx.prompts([ctx.claim.protocol["prompt_category"]]))
    observed = _rates(ctx, normal, ablated, layer)
    null = _null(ctx, observed["detection_rate_unablated"], "on the unablated outputs of the same prompts")
    return result(ctx, "as_published", ctx.claim.criteria["as_published"], observed,
                  n={"prompts": observed["prompts_tested"]}, data=_side_by_side(ctx, normal, ablated), **null)


def detector_on_unablated(ctx: GenContext) -> dict[str, Any]:
    """The identical detector on the normal outputs of the published prompts; passes if it stays silent."""
    normal, ablated, layer = _both(ctx, ctx.prompts([ctx.claim.protocol["prompt_category"]]))
    rates = _rates(ctx, normal, ablated, layer)
    observed = {"detection_rate": rates["detection_rate_unablated"],
                "detection_rate_ablated": rates["detection_rate"], "layer": layer}
    return result(ctx, "control:detector_on_unablated", control_criterion(ctx, "detector_on_unablated"),
                  observed, n={"prompts": rates["prompts_tested"]}, data=_side_by_side(ctx, normal, ablated),
                  **_null(ctx, observed["detection_rate"], "on unablated text"))


def control_layers(ctx: GenContext) -> tuple[list[int], tuple[str, ...]]:
    """The other layers to ablate on this model: the listed ones mapped by relative depth (duplicates and the
    ablated layer itself dropped, with a note) plus seeded random layers from the rest."""
    control = ctx.claim.control("other_layers")
    target = ctx.layer(ctx.claim.protocol["layer"])
    mapped = [ctx.layer(published) for published in control["layers"]]
    chosen = list(dict.fromkeys(m for m in mapped if m != target))
    notes: tuple[str, ...] = ()
    if len(chosen) < len(mapped):
        notes = (f"published layers {control['layers']} map onto {mapped} on this "
                 f"{ctx.lm.dims.n_layers}-layer model; repeats and the ablated layer {target} were dropped",)
    rest = [layer for layer in range(ctx.lm.dims.n_layers) if layer != target and layer not in chosen]
    drawn = random.Random(ctx.seed).sample(rest, min(control["random_layers"], len(rest)))
    return chosen + sorted(drawn), notes


def other_layers(ctx: GenContext) -> dict[str, Any]:
    """The published ablation at other layers: if the effect is about layer 31 the detector stays silent."""
    prompts = ctx.prompts([ctx.claim.protocol["prompt_category"]])
    layers, notes = control_layers(ctx)
    by_name = ctx.run(*(Condition(str(layer), prompts, _ablation(ctx, layer)) for layer in layers))
    runs = {layer: by_name[str(layer)] for layer in layers}
    rates = {f"detection_rate_layer_{layer}": _detection_rate(ctx, run) for layer, run in runs.items()}
    observed = {"max_detection_rate": max(rates.values()), **rates, "layers_ablated": len(layers)}
    null = _null(ctx, observed["max_detection_rate"], f"with layer(s) {layers} ablated instead")
    data = {"layers": layers, "texts": {str(layer): run.full_texts for layer, run in runs.items()}}
    return result(ctx, "control:other_layers", control_criterion(ctx, "other_layers"), observed,
                  n={"prompts": len(prompts), "layers": len(layers)}, data=data,
                  non_diagnostic=null["non_diagnostic"], notes=(*notes, *null["notes"]))


def non_recursive_prompts(ctx: GenContext) -> dict[str, Any]:
    """The published ablation and detector on ordinary prompts: a recursion-specific loop must not show."""
    prompts = ctx.prompts([ctx.claim.control("non_recursive_prompts")["prompt_category"]])
    normal, ablated, layer = _both(ctx, prompts)
    observed = _rates(ctx, normal, ablated, layer)
    return result(ctx, "control:non_recursive_prompts", control_criterion(ctx, "non_recursive_prompts"),
                  observed, n={"prompts": len(prompts)}, data=_side_by_side(ctx, normal, ablated),
                  **_null(ctx, observed["detection_rate"], "on non-recursive prompts"))


def n20(ctx: GenContext) -> dict[str, Any]:
    """The published protocol on at least `min_prompts` recursive prompts."""
    control = ctx.claim.control("n20")
    prompts = ctx.prompts([control["prompt_category"]])
    if len(prompts) < control["min_prompts"]:
        return inconclusive(ctx, "control:n20", {"prompts": len(prompts)},
                            f"{len(prompts)} prompts in the bank, the control needs {control['min_prompts']}")
    normal, ablated, layer = _both(ctx, prompts)
    return result(ctx, "control:n20", control_criterion(ctx, "n20"), _rates(ctx, normal, ablated, layer),
                  n={"prompts": len(prompts)}, data=_side_by_side(ctx, normal, ablated))


def calibrated_repetition(ctx: GenContext) -> dict[str, Any]:
    """A calibrated repetition metric on the completion's token ids, ablated minus normal, per prompt."""
    control = ctx.claim.control("calibrated_repetition")
    normal, ablated, layer = _both(ctx, ctx.prompts([control["prompt_category"]]))
    metric = control["metric"]
    cut = [completion_metrics(list(g.generated_ids)).as_dict()[metric] for g in ablated.generations]
    plain = [completion_metrics(list(g.generated_ids)).as_dict()[metric] for g in normal.generations]
    mean_diff, p_value, tests = paired(cut, plain, ctx.seed, control["n_resamples"])
    observed = {"mean_diff": mean_diff, "p_value": p_value, f"{metric}_ablated": mean_of(cut),
                f"{metric}_normal": mean_of(plain), "layer": layer}
    return result(ctx, "control:calibrated_repetition", control_criterion(ctx, "calibrated_repetition"),
                  observed, n={"prompts": len(cut)}, tests=tests, data=_side_by_side(ctx, normal, ablated))


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:detector_on_unablated": detector_on_unablated,
    "control:other_layers": other_layers,
    "control:non_recursive_prompts": non_recursive_prompts,
    "control:n20": n20,
    "control:calibrated_repetition": calibrated_repetition,
}
