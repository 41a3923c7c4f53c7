"""The layer-31 attention-ablation "naked loop" claim (claims-spec A.3): as published, its nulls and controls (W-A2).

The published detector reads the decoded FULL text, prompt included, and its word rule holds for any text
with a word in it. Its criterion is therefore also run where it should stay silent (nulls: the unablated text,
other layers, ordinary prompts), and the verdict is non-diagnostic where it holds there. The controls measure a
calibrated repetition metric on the completion only, ablated minus normal per prompt, with CIs: at layer 31,
layer 31 against the other layers, and recursive against ordinary prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from harness.analysis import stats
from harness.analysis.textmetrics import RepetitionCheck, completion_metrics, published_repetition
from harness.claimkit.effects import EffectSpec, Stated, paired_effect, two_sample_effect
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
from harness.engine.generation import Generation, GenerationRun, RowEdit
from harness.engine.interventions import zero_attention_output

_METRIC = {"metric": str}
SCHEMA = Schema(
    protocol={"layer": int, "site": str, "ablation": Literal["zero"], "hook_mode": Literal["all_calls"],
              "max_new_tokens": int, "greedy": bool, "detector": Literal["complete", "corrected"],
              "detector_ratio": float, "loop_phrases": dict[str, list[str]],
              "detector_text": Literal["full", "completion"], "prompt_category": str, "chat_template": bool,
              "bos": bool, "dtype": DType, "control_alpha": float},
    controls={
        "detector_on_unablated": {},
        "other_layers": {"layers": list[int], "random_layers": int},
        "non_recursive_prompts": {"prompt_category": str},
        "n20": {"prompt_category": str, "min_prompts": int},
        "calibrated_repetition": {"prompt_category": str, **_METRIC, "n_resamples": int},
        "layer_specificity": {"prompt_category": str, **_METRIC},
        "prompt_specificity": {"recursive_category": str, "non_recursive_category": str, **_METRIC},
    },
)


def _ablation(ctx: GenContext, layer: int) -> RowEdit:
    """The published ablation at `layer`, on the rows of its own condition."""
    return lambda _batch, index: zero_attention_output(ctx.lm.model, layer, rows=index >= 0)


def _runs(ctx: GenContext, prompts: Sequence[str], layers: Sequence[int]) -> dict[str, GenerationRun]:
    """Normal generations and one ablated run per layer (named by the layer), batched; a condition another
    protocol of this module already generated on the same prompts is reused (GenContext.run_keyed)."""
    return ctx.run_keyed(prompts, {"normal": None, **{str(layer): _ablation(ctx, layer) for layer in layers}})


def _both(ctx: GenContext, prompts: Sequence[str]) -> tuple[GenerationRun, GenerationRun, int]:
    """Normal and L31-ablated generations of the same prompts, as the source ran them."""
    layer = ctx.layer(ctx.claim.protocol["layer"])
    runs = _runs(ctx, prompts, [layer])
    return runs["normal"], runs[str(layer)], layer


def _detect(ctx: GenContext, text: str) -> RepetitionCheck:
    """The published detector on one decoded full text (prompt included), with the claim's constants."""
    p = ctx.claim.protocol
    return published_repetition(text, p["detector"], p["detector_ratio"], p["loop_phrases"][p["detector"]])


def _detection_rate(ctx: GenContext, run: GenerationRun) -> float:
    return mean_of([_detect(ctx, text).fired for text in run.full_texts])


def _repetition(run: GenerationRun, metric: str) -> list[float]:
    """The calibrated metric of each completion, over its generated token ids (prompt excluded)."""
    return [completion_metrics(list(g.generated_ids)).as_dict()[metric] for g in run.generations]


def _row(ctx: GenContext, plain: Generation, cut: Generation) -> dict[str, Any]:
    """One prompt side by side: normal and ablated text, what the detector saw, the completion metrics."""
    return {"prompt": plain.prompt, "normal": plain.full_text, "ablated": cut.full_text,
            "normal_completion": plain.completion, "ablated_completion": cut.completion,
            "detector_normal": list(_detect(ctx, plain.full_text).fired_checks),
            "detector_ablated": list(_detect(ctx, cut.full_text).fired_checks),
            "metrics_normal": completion_metrics(list(plain.generated_ids)).as_dict(),
            "metrics_ablated": completion_metrics(list(cut.generated_ids)).as_dict()}


def _side_by_side(ctx: GenContext, normal: GenerationRun, ablated: GenerationRun) -> dict[str, Any]:
    rows = [_row(ctx, a, b) for a, b in zip(normal.generations, ablated.generations, strict=True)]
    return {"prompts": rows, "hook_calls": merged_calls(ablated.calls)}


def _rates(ctx: GenContext, normal: GenerationRun, ablated: GenerationRun, layer: int) -> dict[str, Any]:
    found = [_detect(ctx, text) for text in ablated.full_texts]
    return {"detection_rate": mean_of([c.fired for c in found]),
            "detection_rate_unablated": _detection_rate(ctx, normal),
            "loop_phrase_rate": mean_of([c.loop_phrase_found for c in found]), "prompts_tested": len(found),
            "prompts_with_patterns": sum(c.fired for c in found), "layer": layer}


def as_published(ctx: GenContext) -> dict[str, Any]:
    """3 published-style prompts, 40 greedy tokens, detector on the ablated full text, rate >= 0.5."""
    normal, ablated, layer = _both(ctx, ctx.prompts([ctx.claim.protocol["prompt_category"]]))
    observed = _rates(ctx, normal, ablated, layer)
    return result(ctx, "as_published", ctx.claim.criteria["as_published"], observed,
                  n={"prompts": observed["prompts_tested"]}, data=_side_by_side(ctx, normal, ablated))


def detector_on_unablated(ctx: GenContext) -> dict[str, Any]:
    """Null: the published criterion on the normal outputs of the published prompts."""
    normal, ablated, layer = _both(ctx, ctx.prompts([ctx.claim.protocol["prompt_category"]]))
    rates = _rates(ctx, normal, ablated, layer)
    observed = {"detection_rate": rates["detection_rate_unablated"],
                "detection_rate_ablated": rates["detection_rate"], "layer": layer}
    return result(ctx, "null:detector_on_unablated", control_criterion(ctx, "detector_on_unablated"), observed,
                  n={"prompts": rates["prompts_tested"]}, data=_side_by_side(ctx, normal, ablated))


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
    """Null: the published criterion with other layers ablated instead of layer 31."""
    prompts = ctx.prompts([ctx.claim.protocol["prompt_category"]])
    layers, notes = control_layers(ctx)
    runs = _runs(ctx, prompts, layers)
    rates = {f"detection_rate_layer_{layer}": _detection_rate(ctx, runs[str(layer)]) for layer in layers}
    observed = {"max_detection_rate": max(rates.values()), **rates, "layers_ablated": len(layers)}
    data = {"layers": layers, "texts": {str(layer): runs[str(layer)].full_texts for layer in layers}}
    return result(ctx, "null:other_layers", control_criterion(ctx, "other_layers"), observed,
                  n={"prompts": len(prompts), "layers": len(layers)}, data=data, notes=notes)


def non_recursive_prompts(ctx: GenContext) -> dict[str, Any]:
    """Null: the published ablation and criterion on ordinary prompts."""
    prompts = ctx.prompts([ctx.claim.control("non_recursive_prompts")["prompt_category"]])
    normal, ablated, layer = _both(ctx, prompts)
    observed = _rates(ctx, normal, ablated, layer)
    return result(ctx, "null:non_recursive_prompts", control_criterion(ctx, "non_recursive_prompts"), observed,
                  n={"prompts": len(prompts)}, data=_side_by_side(ctx, normal, ablated))


def n20(ctx: GenContext) -> dict[str, Any]:
    """Robustness: the published protocol on at least `min_prompts` recursive prompts."""
    control = ctx.claim.control("n20")
    prompts = ctx.prompts([control["prompt_category"]])
    if len(prompts) < control["min_prompts"]:
        return inconclusive(ctx, "robustness:n20", {"prompts": len(prompts)},
                            f"{len(prompts)} prompts in the bank, the check needs {control['min_prompts']}")
    normal, ablated, layer = _both(ctx, prompts)
    return result(ctx, "robustness:n20", control_criterion(ctx, "n20"), _rates(ctx, normal, ablated, layer),
                  n={"prompts": len(prompts)}, data=_side_by_side(ctx, normal, ablated))


def _stated(ctx: GenContext, name: str, stated: Stated, extra: dict[str, Any], n: dict[str, int],
            data: dict[str, Any], tests: dict[str, Any] | None = None,
            notes: tuple[str, ...] = ()) -> dict[str, Any]:
    return result(ctx, f"control:{name}", control_criterion(ctx, name), {**stated.observed, **extra}, n=n,
                  tests=tests or {}, data=data, notes=notes, effect=stated.effect, n_needed=stated.n_needed)


def calibrated_repetition(ctx: GenContext) -> dict[str, Any]:
    """Layer 31 ablated minus normal, the calibrated metric on the completion's token ids, paired by prompt."""
    control = ctx.claim.control("calibrated_repetition")
    prompts = ctx.prompts([control["prompt_category"]])
    if len(prompts) < 2:
        return inconclusive(ctx, "control:calibrated_repetition", {"prompts": len(prompts)}, "a paired CI needs 2")
    normal, ablated, layer = _both(ctx, prompts)
    metric = control["metric"]
    cut, plain = _repetition(ablated, metric), _repetition(normal, metric)
    stated = paired_effect(EffectSpec.of(ctx.claim, "calibrated_repetition"), cut, plain)
    _, p_value, tests = paired(cut, plain, ctx.seed, control["n_resamples"])
    extra = {"p_value_sign_flip": p_value, f"{metric}_ablated": mean_of(cut), f"{metric}_normal": mean_of(plain),
             "layer": layer}
    return _stated(ctx, "calibrated_repetition", stated, extra, {"prompts": len(cut)},
                   _side_by_side(ctx, normal, ablated), tests)


def layer_specificity(ctx: GenContext) -> dict[str, Any]:
    """Is layer 31 special? Its repetition increase minus the mean increase at the other layers, per prompt."""
    control = ctx.claim.control("layer_specificity")
    prompts = ctx.prompts([control["prompt_category"]])
    target = ctx.layer(ctx.claim.protocol["layer"])
    others, notes = control_layers(ctx)
    if len(prompts) < 2 or not others:
        return inconclusive(ctx, "control:layer_specificity", {"prompts": len(prompts), "layers": len(others)},
                            "a paired CI needs 2 prompts and at least one other layer")
    runs = _runs(ctx, prompts, [target, *others])
    metric, spec = control["metric"], EffectSpec.of(ctx.claim, "layer_specificity")
    plain = np.asarray(_repetition(runs["normal"], metric))
    rise = {layer: np.asarray(_repetition(runs[str(layer)], metric)) - plain for layer in [target, *others]}
    other_mean = np.mean([rise[layer] for layer in others], axis=0)
    stated = paired_effect(spec, list(rise[target]), list(other_mean))
    per_layer = {str(layer): stats.mean_ci(list(rise[layer]), spec.confidence).as_dict()
                 for layer in [target, *others]}
    extra = {"increase_l31": float(rise[target].mean()), "increase_other_layers": float(other_mean.mean()),
             "layer": target, "other_layers": len(others)}
    return _stated(ctx, "layer_specificity", stated, extra, {"prompts": len(prompts), "layers": len(others)},
                   {"increase_by_layer": per_layer, "layers": [target, *others]}, notes=notes)


def prompt_specificity(ctx: GenContext) -> dict[str, Any]:
    """Are recursive prompts special? The layer-31 increase on recursive minus on non-recursive prompts."""
    control = ctx.claim.control("prompt_specificity")
    rec = ctx.prompts([control["recursive_category"]])
    non = ctx.prompts([control["non_recursive_category"]])
    if min(len(rec), len(non)) < 2:
        return inconclusive(ctx, "control:prompt_specificity", {"recursive": len(rec), "non_recursive": len(non)},
                            "each group needs 2 prompts")
    layer = ctx.layer(ctx.claim.protocol["layer"])
    metric, spec = control["metric"], EffectSpec.of(ctx.claim, "prompt_specificity")
    rise_rec, rise_non = ([a - b for a, b in zip(_repetition(runs[str(layer)], metric),
                                                 _repetition(runs["normal"], metric), strict=True)]
                          for runs in (_runs(ctx, rec, [layer]), _runs(ctx, non, [layer])))
    stated = two_sample_effect(spec, rise_rec, rise_non)
    by_group = {name: stats.mean_ci(values, spec.confidence).as_dict()
                for name, values in (("recursive", rise_rec), ("non_recursive", rise_non))}
    extra = {"increase_recursive": mean_of(rise_rec), "increase_non_recursive": mean_of(rise_non), "layer": layer}
    return _stated(ctx, "prompt_specificity", stated, extra, {"recursive": len(rec), "non_recursive": len(non)},
                   {"increase_by_group": by_group})


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "null:detector_on_unablated": detector_on_unablated,
    "null:other_layers": other_layers,
    "null:non_recursive_prompts": non_recursive_prompts,
    "robustness:n20": n20,
    "control:calibrated_repetition": calibrated_repetition,
    "control:layer_specificity": layer_specificity,
    "control:prompt_specificity": prompt_specificity,
}
