"""Controls of the role-conditioning claims (claims-spec W-B1 to W-B4, W-B9), and the protocol table.

Each control changes one thing against `harness.role.as_published` and reruns the comparison: the heads
counted (`all_heads`), the CI (`prompt_level_ci`: prompts resampled, FDR across layers), the prompts
(`token_matched`), the entropy (`normalised_entropy`), the input format of the instruct model
(`chat_template`) and the layers averaged (`unstable_layers_excluded`). Its parameters and criterion come
from the claim's `[controls.<name>]` table; `heads` there says which heads it counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.analysis.rfc import (
    NEUTRAL,
    SELF,
    BootstrapResult,
    UnstableRule,
    benjamini_hochberg,
    compare_layers,
    layer_metric,
    paired_bootstrap_diff,
    threshold_counts,
)
from harness.claimkit.params import DType, Schema
from harness.claimkit.prompts import PromptBank, find_bank
from harness.claimkit.registry import Claim
from harness.claimkit.replay import RfcReplay, read_table, replay_rfc
from harness.claimkit.results import protocol_result
from harness.claimkit.role import (
    RATIO,
    Categories,
    CategoryRun,
    Extras,
    RoleContext,
    as_published,
    chat_encoder,
    compare_pair,
    entropies,
    layer_profile,
    pair_result,
)
from harness.engine.runner import token_counts

_HEADS = {"heads": Literal["all", "as_published"]}
SCHEMA = Schema(
    protocol={"categories": list[str], "prompts_per_category": int, "published_heads_counted": int,
              "aggregation": Literal["pooled", "per_prompt"], "threshold": float, "chat_template": bool,
              "bos": bool, "dtype": DType, "confidence": float, "unstable_rule": dict[str, float]},
    controls={
        "all_heads": _HEADS,
        "prompt_level_ci": {**_HEADS, "n_boot": int, "confidence": float, "fdr_alpha": float},
        "token_matched": {**_HEADS, "banks": list[str], "categories": list[str], "anchor": str, "min_matched": int},
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
    """A control result with every criterion metric NaN and a note saying why."""
    control = ctx.claim.control(name)
    observed = {m: float("nan") for m in control["criterion"]}
    return protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed,
                           lm=ctx.instruct, banks=(ctx.bank,), n=n, exclusions=exclusions,
                           notes=(f"inconclusive: {reason}",))


def _heads_note(ctx: RoleContext, setting: str) -> tuple[int, tuple[str, ...]]:
    heads, note = ctx.heads(setting)
    return heads, (note,) if note else ()


def all_heads(ctx: RoleContext) -> dict[str, Any]:
    """W-B2: every query head of the config counted, not the source's first 28."""
    control = ctx.claim.control("all_heads")
    runs = raw_runs(ctx)
    heads, _ = _heads_note(ctx, control.get("heads", "all"))
    published, _ = ctx.heads("as_published")
    notes = () if published < heads else (f"this model has {heads} query heads, which as_published counts "
                                           "too: here this control equals as_published",)
    return pair_result(ctx, "control:all_heads", "control", control["criterion"], runs,
                       (entropies(runs[0]), entropies(runs[1])), heads,
                       Extras(observed={"heads_dropped_as_published": heads - published}, notes=notes))


def prompt_level_ci(ctx: RoleContext) -> dict[str, Any]:
    """W-B3: paired prompt bootstrap of the layer dRFC and of its mean over layers; BH-FDR across layers."""
    control = ctx.claim.control("prompt_level_ci")
    runs = raw_runs(ctx)
    heads, notes = _heads_note(ctx, control["heads"])
    base, instruct = ({k: entropies(r)[k] for k in (SELF, NEUTRAL)} for r in runs)
    boot = paired_bootstrap_diff(base, instruct, metric="rfc", heads_counted=heads, n_boot=control["n_boot"],
                                 seed=ctx.seed, confidence=control["confidence"])
    fdr = benjamini_hochberg(boot.p_value, control["fdr_alpha"])
    tail = (1 - control["confidence"]) / 2
    low, high = np.quantile(boot.draws.mean(axis=1), [tail, 1 - tail])
    observed = {"mean_drfc": float(boot.observed.mean()), "mean_drfc_ci_low": float(low),
                "mean_drfc_ci_high": float(high), "n_fdr_significant": int(fdr.rejected.sum()),
                "n_fdr_negative": int((fdr.rejected & (boot.observed < 0)).sum()),
                "n_fdr_positive": int((fdr.rejected & (boot.observed > 0)).sum()),
                "n_layer_ci_excludes_0": int(((boot.ci_low > 0) | (boot.ci_high < 0)).sum()),
                "n_layers": int(boot.observed.size), "n_boot": boot.n_boot, "heads_counted": heads}
    profile = _bootstrap_profile(runs[1][SELF].layers, (base, instruct), heads, boot)
    data = {"rfc_by_layer": profile, "fdr_adjusted_p": fdr.adjusted.tolist(),
            "fdr_significant_layers": [int(x) for x in np.flatnonzero(fdr.rejected)]}
    tests = {"paired_bootstrap": {"n_boot": boot.n_boot, "seed": boot.seed, "ci": "percentile",
                                  "confidence": control["confidence"], "fdr": "benjamini_hochberg",
                                  "fdr_alpha": control["fdr_alpha"]}}
    n = {k: int(c.n_tokens.size) for k, c in base.items()}
    return protocol_result(ctx.claim, "control:prompt_level_ci", "control", control["criterion"], observed,
                           lm=ctx.instruct, banks=(ctx.bank,), n=n, tests=tests, notes=notes, data=data)


def _bootstrap_profile(layers: Sequence[int], cats: tuple[Categories, Categories], heads: int,
                       boot: BootstrapResult) -> dict[str, Any]:
    """harness.report.figures layout 3: RFC of both models per layer, dRFC with its paired bootstrap CI."""
    series = {name: {"mean": layer_metric(c, "rfc", "pooled", heads).tolist()}
              for name, c in zip(("base", "instruct"), cats, strict=True)}
    diff = {"label": "dRFC = instruct - base (paired prompt bootstrap CI)", "mean": boot.observed.tolist(),
            "ci_low": boot.ci_low.tolist(), "ci_high": boot.ci_high.tolist()}
    return {"kind": "layer_profile", "metric": "RFC", "units": RATIO, "layers": list(layers),
            "series": series, "diff": diff}


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


def _pools(ctx: RoleContext, banks: Sequence[PromptBank], names: Sequence[str]) -> dict[str, list[str]]:
    """Every distinct prompt of each category over `banks`, then the claim's own bank, in order."""
    return {k: list(dict.fromkeys(p for b in (*banks, ctx.bank) for p in b.categories.get(k, ())))
            for k in names}


def token_matched(ctx: RoleContext) -> dict[str, Any]:
    """W-B1: categories matched prompt for prompt in token count under this model's tokenizer."""
    control = ctx.claim.control("token_matched")
    banks = tuple(find_bank(name, ctx.claim.folder) for name in control["banks"])
    pools = _pools(ctx, banks, control["categories"])
    counts = {k: token_counts(ctx.base, v) for k, v in pools.items()}
    if counts != {k: token_counts(ctx.instruct, v) for k, v in pools.items()}:
        raise ValueError(f"{ctx.base.id} and {ctx.instruct.id} tokenise the prompts differently; a "
                         "token-matched comparison needs one tokenizer for both models")
    index = match_token_counts(counts, control["anchor"])
    n_matched = len(index[control["anchor"]])
    exclusions = {"no_token_matched_partner": len(pools[control["anchor"]]) - n_matched}
    if n_matched < control["min_matched"]:
        return inconclusive(ctx, "token_matched", f"{n_matched} token-matched prompt sets, need "
                            f"{control['min_matched']}", {k: n_matched for k in pools}, exclusions)
    matched = {k: [pools[k][i] for i in index[k]] for k in pools}
    runs = ctx.runs(ctx.base, matched), ctx.runs(ctx.instruct, matched)
    heads, notes = _heads_note(ctx, control["heads"])
    observed = {"n_matched": n_matched, "mean_tokens_matched": float(runs[1][SELF].n_tokens.mean())}
    return pair_result(ctx, "control:token_matched", "control", control["criterion"], runs,
                       (entropies(runs[0]), entropies(runs[1])), heads,
                       Extras(observed=observed, notes=notes, exclusions=exclusions,
                              banks=(*banks, ctx.bank)))


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
    observed = {f"mean_bos_mass_{model}": float(np.mean([r.bos_mass.mean() for r in side.values()]))
                for model, side in zip(("base", "instruct"), runs, strict=True)}
    extras = Extras(observed=observed, data={"bos_mass_by_layer": _bos_profile(runs, runs[1][SELF].layers)},
                    notes=notes, exclusions={"fewer_than_3_tokens": short}, units="unitless (H'_q / ln q)")
    return pair_result(ctx, "control:normalised_entropy", "control", control["criterion"], runs,
                       (entropies(runs[0], "normalised", keep), entropies(runs[1], "normalised", keep)),
                       heads, extras)


def chat_template(ctx: RoleContext) -> dict[str, Any]:
    """W-B9: the instruct model reads each prompt as one user turn of a chat template; the base raw text."""
    control = ctx.claim.control("chat_template")
    raw = raw_runs(ctx)[0]
    categories = {k: ctx.categories()[k] for k in control["categories"]}
    encoder = chat_encoder(ctx.instruct)
    runs = {k: raw[k] for k in categories}, ctx.runs(ctx.instruct, categories, encoder)
    heads, notes = _heads_note(ctx, control["heads"])
    observed = {name: float(np.mean([r.n_tokens.mean() for r in side.values()]))
                for name, side in zip(("mean_tokens_base_raw", "mean_tokens_instruct_templated"), runs,
                                      strict=True)}
    notes = (*notes, encoder[1], "the base model reads raw text, as published")
    return pair_result(ctx, "control:chat_template", "control", control["criterion"], runs,
                       (entropies(runs[0]), entropies(runs[1])), heads,
                       Extras(observed=observed, notes=notes))


def unstable_layers_excluded(ctx: RoleContext) -> dict[str, Any]:
    """W-B4: layers whose base or instruct RFC denominator is unstable are dropped from the mean."""
    control = ctx.claim.control("unstable_layers_excluded")
    runs = raw_runs(ctx)
    cats = entropies(runs[0]), entropies(runs[1])
    heads, notes = _heads_note(ctx, control["heads"])
    cmp = compare_pair(cats[0], cats[1], heads, ctx.rule())
    keep = ~cmp.unstable
    if not keep.any():
        return inconclusive(ctx, "unstable_layers_excluded", "every layer has an unstable RFC denominator",
                            {k: int(c.n_tokens.size) for k, c in cats[1].items()})
    kept = cmp.rfc.diff[keep]
    counts = threshold_counts(kept, ctx.claim.protocol["threshold"])
    observed = {"mean_drfc": float(kept.mean()), "median_drfc": float(np.median(kept)),
                "mean_drfc_all_layers": float(cmp.rfc.diff.mean()),
                "n_excluded_layers": int(cmp.unstable.sum()),
                "n_layers_kept": int(keep.sum()), "layers_below": counts.below, "layers_above": counts.above,
                "layers_near_zero": counts.near_zero, "frac_below": counts.below / kept.size,
                "frac_above": counts.above / kept.size, "frac_near_zero": counts.near_zero / kept.size}
    notes = (*notes, "mean, median and threshold counts over the kept layers only")
    return pair_result(ctx, "control:unstable_layers_excluded", "control", control["criterion"], runs, cats,
                       heads, Extras(observed=observed, notes=notes))


def rederive(claim: Claim, published_dir: Path) -> dict[str, Any]:
    """The headline re-derived from the published table behind it (harness.claimkit.replay), no model needed."""
    replay = replay_rfc(published_dir / claim.published["data_file"], rule=UnstableRule(
        **claim.protocol.get("unstable_rule", {})))
    r, t = replay.rfc, replay.rfc.thresholds
    observed: dict[str, Any] = {
        "mean_drfc": r.mean, "median_drfc": r.median, "n_layers": replay.n_layers, "layers_below": t.below,
        "layers_above": t.above, "layers_near_zero": t.near_zero, "n_significant_rfc": r.significant,
        "n_significant_rsi": replay.rsi.significant, "mean_drsi": replay.rsi.mean,
        "mean_drfc_without_unstable": r.mean_without_unstable, "heads_counted": replay.n_heads["instruct"],
        "mean_drfc_abs_error": abs(r.mean - claim.published["mean_drfc"])}
    if "committed_data_file" in claim.published:
        committed = replay_rfc(published_dir / claim.published["committed_data_file"])
        observed["mean_drfc_committed_table"] = committed.rfc.mean
    table = read_table(published_dir / claim.published["data_file"])
    stats = {m: table.stats("rfc", m) for m in ("base", "instruct")}
    profile = layer_profile("RFC", range(table.n_layers), stats["base"], stats["instruct"],
                            compare_layers(stats["base"], stats["instruct"]))
    published = {k: v for k, v in claim.published.items() if isinstance(v, int | float)}
    return protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                           published=published, n={"layers": replay.n_layers}, data={"rfc_by_layer": profile},
                           notes=_rederive_notes(claim, observed, replay))


def _rederive_notes(claim: Claim, observed: Mapping[str, Any], replay: RfcReplay) -> tuple[str, ...]:
    notes = [f"re-derived from {claim.published['data_file']} (`python -m harness replay rfc`); the "
             "per-layer CIs are the table's head-level ones"]
    if "mean_drfc_committed_table" in observed:
        notes.append(f"the table committed last ({claim.published['committed_data_file']}) gives mean dRFC "
                     f"{observed['mean_drfc_committed_table']:+.4f}, not the headline")
    if replay.unstable_layers:
        notes.append(f"unstable RFC denominators at layers {[u.layer for u in replay.unstable_layers]}: "
                     f"without them the mean dRFC is {replay.rfc.mean_without_unstable:+.4f}")
    return tuple(notes)

PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:all_heads": all_heads,
    "control:prompt_level_ci": prompt_level_ci,
    "control:token_matched": token_matched,
    "control:normalised_entropy": normalised_entropy,
    "control:chat_template": chat_template,
    "control:unstable_layers_excluded": unstable_layers_excluded,
}
