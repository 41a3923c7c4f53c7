"""Controls of the role-conditioning claims (claims-spec W-B1 to W-B4, W-B9), and the protocol table.

Each control changes one thing against `harness.claimkit.role.as_published`, reruns the comparison, and states
its effect (the mean dRFC over layers under that change) with a paired prompt-bootstrap CI
(`harness.claimkit.role_effects`), which `verdicts.control_decision` decides against the published effect:

| control                  | artefact (claims-spec)           | what changes                                         |
|--------------------------|----------------------------------|------------------------------------------------------|
| all_heads                | W-B2, 28 heads hard-coded        | every query head of the config is counted            |
| token_matched            | W-B1, length                     | self/neutral/confounder matched in token count       |
| normalised_entropy       | W-B1, length and the BOS sink    | BOS-excluded entropy over its maximum ln(q)          |
| chat_template            | W-B9, instruct read raw text     | both models read one user turn of the template       |
| unstable_layers_excluded | W-B4, unstable ratio             | layers with a near-zero RFC denominator left out     |
| prompt_level_ci (robust.)| W-B3, CIs over heads             | per-layer prompt-level CIs and BH-FDR, matched sets  |

A control that would repeat as_published on a model is dropped there (`role_effects.dropped`). Parameters
and criteria come from the claim's `[controls.<name>]` table; `kind` there says control or robustness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from harness.analysis.rfc import SELF, benjamini_hochberg, layer_metric, threshold_counts
from harness.analysis.rfc_inference import Arm, ContrastCI, flip_p_values, instruct_minus_base
from harness.claimkit.params import DType, Schema
from harness.claimkit.prompts import PromptBank, find_bank
from harness.claimkit.results import protocol_result
from harness.claimkit.role import (
    RATIO,
    Categories,
    CategoryRun,
    RoleContext,
    as_published,
    compare_pair,
    entropies,
    pair_result,
)
from harness.claimkit.role_effects import bootstrap, dropped, effect_extras, interval, stated_effect
from harness.claimkit.role_format import chat_format
from harness.engine.runner import token_counts

_HEADS = {"heads": Literal["all", "as_published"], "effect": str, "min_fraction": float}
_MATCHING = {"banks": list[str], "categories": list[str], "anchor": str, "min_matched": int}
SCHEMA = Schema(
    protocol={"categories": list[str], "prompts_per_category": int, "published_heads_counted": int,
              "aggregation": Literal["pooled", "per_prompt"], "threshold": float, "chat_template": bool,
              "bos": bool, "dtype": DType, "confidence": float, "unstable_rule": dict[str, float],
              "n_resamples": int, "ci_method": Literal["t", "BCa", "percentile"], "n_permutations": int,
              "correlate_with": dict[str, str | int] | None},
    controls={
        "all_heads": _HEADS,
        "prompt_level_ci": {**_HEADS, "fdr_alpha": float},
        "token_matched": {**_HEADS, **_MATCHING},
        "normalised_entropy": _HEADS,
        "chat_template": {**_HEADS, "categories": list[str]},
        "unstable_layers_excluded": _HEADS,
    },
)

Runs = tuple[dict[str, CategoryRun], dict[str, CategoryRun]]
Protocol = Callable[[RoleContext], dict[str, Any]]


def raw_runs(ctx: RoleContext) -> Runs:
    """Base and instruct on the claim's bank as published: raw text, first N prompts per category."""
    categories = ctx.categories()
    return ctx.runs(ctx.base, categories), ctx.runs(ctx.instruct, categories)


def inconclusive(ctx: RoleContext, name: str, reason: str, n: Mapping[str, int],
                 exclusions: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A control result with every criterion metric NaN, no decision, and a note saying why."""
    control = ctx.claim.control(name)
    observed = {m: float("nan") for m in control["criterion"]}
    return protocol_result(ctx.claim, f"control:{name}", ctx.kind(name), control["criterion"], observed,
                           lm=ctx.instruct, banks=(ctx.bank,), n=n, exclusions=exclusions,
                           notes=(f"inconclusive: {reason}",))


def _heads_note(ctx: RoleContext, setting: str) -> tuple[int, tuple[str, ...]]:
    heads, note = ctx.heads(setting)
    return heads, (note,) if note else ()


def all_heads(ctx: RoleContext) -> dict[str, Any]:
    """W-B2: every query head of the config counted, not the source's first 28; dropped where that is all."""
    control = ctx.claim.control("all_heads")
    heads, _ = _heads_note(ctx, control["heads"])
    published, _ = ctx.heads("as_published")
    if heads == published:
        return dropped(ctx, "all_heads", f"{ctx.instruct.id} has {ctx.instruct.dims.n_heads} query heads and "
                       f"as_published already counts {published} of them: this control would repeat "
                       "as_published exactly, so it is not counted for this model")
    runs = raw_runs(ctx)
    cats = entropies(runs[0]), entropies(runs[1])
    extras = effect_extras(ctx, "all_heads", instruct_minus_base(*cats), heads,
                           observed={"heads_dropped_as_published": heads - published})
    return pair_result(ctx, "control:all_heads", ctx.kind("all_heads"), control["criterion"], runs, cats, heads,
                       extras)


def match_token_counts(counts: Mapping[str, Sequence[int]], anchor: str) -> dict[str, list[int]]:
    """Indices of prompts matched in token count across every category, greedily in the anchor's order.

    Each anchor prompt takes, in every other category, the first unused prompt with exactly its token count;
    an anchor prompt without a partner in some category is left out. Any category keys work.
    """
    if anchor not in counts:
        raise ValueError(f"anchor category {anchor!r} not among {sorted(counts)}; name one of them")
    free: dict[str, dict[int, list[int]]] = {k: {} for k in counts if k != anchor}
    for k in free:
        for j, c in enumerate(counts[k]):
            free[k].setdefault(int(c), []).append(j)
    matched: dict[str, list[int]] = {k: [] for k in counts}
    for i, c in enumerate(counts[anchor]):
        if all(free[k].get(int(c)) for k in free):
            matched[anchor].append(i)
            for k in free:
                matched[k].append(free[k][int(c)].pop(0))
    return matched


@dataclass(frozen=True)
class Matched:
    """Token-matched prompt sets (prompt i of every category belongs together) and what was left out."""

    prompts: dict[str, list[str]]
    n: int
    exclusions: dict[str, int]
    banks: tuple[PromptBank, ...]


def matched_sets(ctx: RoleContext) -> Matched:
    """[controls.token_matched]'s sets: every distinct prompt of its banks then the claim's, matched greedily."""
    control = ctx.claim.control("token_matched")
    banks = tuple(find_bank(name, ctx.claim.folder) for name in control["banks"])
    pools = {k: list(dict.fromkeys(p for b in (*banks, ctx.bank) for p in b.categories.get(k, ())))
             for k in control["categories"]}
    counts = {k: token_counts(ctx.base, v) for k, v in pools.items()}
    if counts != {k: token_counts(ctx.instruct, v) for k, v in pools.items()}:
        raise ValueError(f"{ctx.base.id} and {ctx.instruct.id} tokenise the prompts differently; a "
                         "token-matched comparison needs one tokenizer for both models")
    index = match_token_counts(counts, control["anchor"])
    n = len(index[control["anchor"]])
    prompts = {k: [pools[k][i] for i in index[k]] for k in pools}
    return Matched(prompts, n, {"no_token_matched_partner": len(pools[control["anchor"]]) - n}, banks)


def token_matched(ctx: RoleContext) -> dict[str, Any]:
    """W-B1: categories matched prompt for prompt in token count; the CI resamples matched sets."""
    control = ctx.claim.control("token_matched")
    sets = matched_sets(ctx)
    if sets.n < control["min_matched"]:
        return inconclusive(ctx, "token_matched", f"{sets.n} token-matched prompt sets, need "
                            f"{control['min_matched']}", {k: sets.n for k in sets.prompts}, sets.exclusions)
    runs = ctx.runs(ctx.base, sets.prompts), ctx.runs(ctx.instruct, sets.prompts)
    cats = entropies(runs[0]), entropies(runs[1])
    heads, notes = _heads_note(ctx, control["heads"])
    observed = {"n_matched": sets.n, "mean_tokens_matched": float(runs[1][SELF].n_tokens.mean())}
    extras = effect_extras(ctx, "token_matched", instruct_minus_base(*cats), heads, joint=True,
                           observed=observed, notes=notes, exclusions=sets.exclusions,
                           banks=(*sets.banks, ctx.bank))
    return pair_result(ctx, "control:token_matched", ctx.kind("token_matched"), control["criterion"], runs, cats,
                       heads, extras)


def prompt_level_ci(ctx: RoleContext) -> dict[str, Any]:
    """W-B3, robustness: per-layer paired prompt-bootstrap CIs and label-flip permutation p (BH-FDR across
    layers) on the token-matched sets, and the mean over layers with its CI."""
    control = ctx.claim.control("prompt_level_ci")
    sets = matched_sets(ctx)
    if sets.n < ctx.claim.control("token_matched")["min_matched"]:
        return inconclusive(ctx, "prompt_level_ci", f"{sets.n} token-matched prompt sets (see token_matched)",
                            {k: sets.n for k in sets.prompts}, sets.exclusions)
    runs = ctx.runs(ctx.base, sets.prompts), ctx.runs(ctx.instruct, sets.prompts)
    base, instruct = entropies(runs[0]), entropies(runs[1])
    heads, notes = _heads_note(ctx, control["heads"])
    n_layers = len(runs[1][SELF].layers)
    ci = bootstrap(ctx, instruct_minus_base(base, instruct), heads,
                   groups=[range(n_layers), *([layer] for layer in range(n_layers))], joint=True)
    p = flip_p_values(base, instruct, heads_counted=heads, n_resamples=ctx.claim.protocol["n_permutations"],
                      seed=ctx.seed)
    fdr = benjamini_hochberg(p, control["fdr_alpha"])
    per_layer = slice(1, None)
    observed = {**interval(control["effect"], ci), "n_fdr_significant": int(fdr.rejected.sum()),
                "n_fdr_negative": int((fdr.rejected & (ci.estimate[per_layer] < 0)).sum()),
                "n_fdr_positive": int((fdr.rejected & (ci.estimate[per_layer] > 0)).sum()),
                "n_layer_ci_excludes_0": int(((ci.ci_low[per_layer] > 0) | (ci.ci_high[per_layer] < 0)).sum()),
                "n_layers": n_layers, "n_matched": sets.n, "heads_counted": heads}
    data = {"rfc_by_layer": _profile(runs[1][SELF].layers, (base, instruct), heads, ci),
            "flip_p": p.tolist(), "fdr_adjusted_p": fdr.adjusted.tolist(),
            "fdr_significant_layers": [int(x) for x in np.flatnonzero(fdr.rejected)]}
    tests = {"paired_prompt_bootstrap": ci.describe(),
             "label_flip_permutation": {"n_resamples": ctx.claim.protocol["n_permutations"], "seed": ctx.seed,
                                        "scipy": "scipy.stats.permutation_test", "two_sided": True,
                                        "fdr": "scipy.stats.false_discovery_control (BH)",
                                        "fdr_alpha": control["fdr_alpha"]}}
    effect, n_needed, why = stated_effect(ctx, "prompt_level_ci", ci)
    return protocol_result(ctx.claim, "control:prompt_level_ci", ctx.kind("prompt_level_ci"), control["criterion"],
                           observed, lm=ctx.instruct, banks=(*sets.banks, ctx.bank),
                           n={k: sets.n for k in sets.prompts}, exclusions=sets.exclusions, tests=tests,
                           notes=(*notes, *why, "robustness: reported beside the controls, never counted as one"),
                           data=data, effect=effect, n_needed=n_needed)


def _profile(layers: Sequence[int], cats: tuple[Categories, Categories], heads: int,
             ci: ContrastCI) -> dict[str, Any]:
    """harness.report.figures layout 3: RFC of both models per layer, dRFC with its paired bootstrap CI
    (group 0 of `ci` is the mean over layers, groups 1.. the layers)."""
    base, instruct = (layer_metric(c, "rfc", "pooled", heads) for c in cats)
    diff = {"label": "dRFC = instruct - base (paired prompt bootstrap CI)", "mean": ci.estimate[1:].tolist(),
            "ci_low": ci.ci_low[1:].tolist(), "ci_high": ci.ci_high[1:].tolist()}
    return {"kind": "layer_profile", "metric": "RFC", "units": RATIO, "layers": list(layers),
            "series": {"base": {"mean": base.tolist()}, "instruct": {"mean": instruct.tolist()}}, "diff": diff}


def _bos_profile(runs: Runs, layers: Sequence[int]) -> dict[str, Any]:
    """harness.report.figures layout 3: mean attention on key 0 per layer, per model and category."""
    series = {f"{model} {k}": {"mean": r.bos_mass.mean(axis=(0, 2)).tolist()}
              for model, side in zip(("base", "instruct"), runs, strict=True) for k, r in side.items()}
    return {"kind": "layer_profile", "metric": "attention on key 0", "units": "probability",
            "layers": list(layers), "series": series}


def normalised_entropy(ctx: RoleContext) -> dict[str, Any]:
    """W-B1: BOS-excluded entropy divided by its maximum ln(q), q >= 2; the BOS mass reported beside it."""
    control = ctx.claim.control("normalised_entropy")
    runs = raw_runs(ctx)
    keep = {k: (runs[0][k].n_normalised > 0) & (runs[1][k].n_normalised > 0) for k in runs[0]}
    short = sum(int((~m).sum()) for m in keep.values())
    if any(not m.any() for m in keep.values()):
        return inconclusive(ctx, "normalised_entropy", "a category has no prompt of 3 or more tokens",
                            {k: int(m.sum()) for k, m in keep.items()}, {"fewer_than_3_tokens": short})
    heads, notes = _heads_note(ctx, control["heads"])
    cats = entropies(runs[0], "normalised", keep), entropies(runs[1], "normalised", keep)
    observed = {f"mean_bos_mass_{model}": float(np.mean([r.bos_mass.mean() for r in side.values()]))
                for model, side in zip(("base", "instruct"), runs, strict=True)}
    extras = effect_extras(ctx, "normalised_entropy", instruct_minus_base(*cats), heads, observed=observed,
                           data={"bos_mass_by_layer": _bos_profile(runs, runs[1][SELF].layers)}, notes=notes,
                           exclusions={"fewer_than_3_tokens": short}, units="unitless (H'_q / ln q)")
    return pair_result(ctx, "control:normalised_entropy", ctx.kind("normalised_entropy"), control["criterion"],
                       runs, cats, heads, extras)


def chat_template(ctx: RoleContext) -> dict[str, Any]:
    """W-B9: both models read each prompt as one user turn of the instruct model's chat template; only the rows
    a raw prompt has (BOS, the user content) are scored. The effect is dRFC under the template; the
    difference-in-differences (templated - raw, instruct - base) is reported beside it."""
    control = ctx.claim.control("chat_template")
    names = control["categories"]
    categories = {k: ctx.categories()[k] for k in names}
    template = chat_format(ctx.instruct)
    raw_base, raw_instruct = ({k: side[k] for k in names} for side in raw_runs(ctx))  # as published
    raw = raw_base, raw_instruct  # every row of a raw prompt is the prompt's: BOS and its tokens
    encoder = template.encoder("prompt")
    templated = ctx.runs(ctx.base, categories, encoder), ctx.runs(ctx.instruct, categories, encoder)
    (base_r, inst_r), (base_t, inst_t) = ((entropies(r[0]), entropies(r[1])) for r in (raw, templated))
    heads, notes = _heads_note(ctx, control["heads"])
    # (instruct - base) templated minus the same raw; in this order one model against itself sums to exactly 0
    did = bootstrap(ctx, (Arm(1.0, inst_t), Arm(-1.0, base_t), Arm(-1.0, inst_r), Arm(1.0, base_r)), heads)
    observed = {**interval("did_drfc", did),
                "mean_drfc_raw": float(bootstrap(ctx, instruct_minus_base(base_r, inst_r), heads).estimate[0]),
                "mean_tokens_raw": float(np.mean([r.n_tokens.mean() for r in raw[1].values()])),
                "mean_tokens_templated": float(np.mean([r.n_tokens.mean() for r in templated[1].values()])),
                "mean_rows_scored": float(np.mean([r.n_rows.mean() for r in templated[1].values()]))}
    notes = (*notes, template.note, "both models read the same template; only BOS and the user-content query "
             "rows are scored, the rows of the raw prompt")
    extras = effect_extras(ctx, "chat_template", instruct_minus_base(base_t, inst_t), heads, observed=observed,
                           notes=notes)
    return pair_result(ctx, "control:chat_template", ctx.kind("chat_template"), control["criterion"], templated,
                       (base_t, inst_t), heads, extras)


def unstable_layers_excluded(ctx: RoleContext) -> dict[str, Any]:
    """W-B4: layers whose base or instruct RFC denominator is unstable are left out of the mean (inside every
    bootstrap draw too); dropped where no layer is flagged."""
    control = ctx.claim.control("unstable_layers_excluded")
    runs = raw_runs(ctx)
    cats = entropies(runs[0]), entropies(runs[1])
    heads, notes = _heads_note(ctx, control["heads"])
    cmp = compare_pair(cats[0], cats[1], heads, ctx.rule())
    keep = ~cmp.unstable
    if not cmp.unstable.any():
        return dropped(ctx, "unstable_layers_excluded", "no layer has an unstable RFC denominator on this model "
                       f"({ctx.rule()}): this control would repeat as_published exactly")
    if not keep.any():
        return inconclusive(ctx, "unstable_layers_excluded", "every layer has an unstable RFC denominator",
                            {k: int(c.n_tokens.size) for k, c in cats[1].items()})
    kept = cmp.rfc.diff[keep]
    counts = threshold_counts(kept, ctx.claim.protocol["threshold"])
    observed = {"median_drfc": float(np.median(kept)), "mean_drfc_all_layers": float(cmp.rfc.diff.mean()),
                "n_excluded_layers": int(cmp.unstable.sum()), "n_layers_kept": int(keep.sum()),
                "layers_below": counts.below, "layers_above": counts.above, "layers_near_zero": counts.near_zero,
                "frac_below": counts.below / kept.size, "frac_above": counts.above / kept.size,
                "frac_near_zero": counts.near_zero / kept.size}
    extras = effect_extras(ctx, "unstable_layers_excluded", instruct_minus_base(*cats), heads,
                           groups=[np.flatnonzero(keep).tolist()], observed=observed,
                           notes=(*notes, "mean, median and threshold counts over the kept layers only"))
    return pair_result(ctx, "control:unstable_layers_excluded", ctx.kind("unstable_layers_excluded"),
                       control["criterion"], runs, cats, heads, extras)


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:all_heads": all_heads,
    "control:prompt_level_ci": prompt_level_ci,
    "control:token_matched": token_matched,
    "control:normalised_entropy": normalised_entropy,
    "control:chat_template": chat_template,
    "control:unstable_layers_excluded": unstable_layers_excluded,
}
