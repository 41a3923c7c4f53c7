"""Controls for the R_V claim (claims-spec W-A1): each asks whether the published effect survives one artefact.

Every control states the separation (baseline - recursive R_V) with a CI against the published separation
(harness.claimkit.effects); the permutation test and the n >= 30 rerun are robustness checks, reported beside.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np

from harness.analysis import stats
from harness.claimkit.declare import protocol_of
from harness.claimkit.effects import EffectSpec, Stated, interval_effect, paired_effect, two_sample_effect
from harness.claimkit.params import DType, Schema
from harness.claimkit.results import protocol_result
from harness.claimkit.rv import (
    Context,
    Protocol,
    RVRun,
    _exclusions,
    _per_prompt,
    _prompts,
    _two_groups,
    as_published,
    compare,
    match_by_tokens,
    pr_means,
)
from harness.engine.formatting import PromptFormat
from harness.engine.runner import token_counts

_GROUPS = {"recursive_categories": list[str], "baseline_categories": list[str]}
SCHEMA = Schema(
    protocol={"early_layer": int, "late_layer": int, "site": str, "window": int, "exclude_bos": bool,
              "centred": bool, "chat_template": bool, "bos": bool, "dtype": DType, "test": Literal["student_t"],
              "alternative": Literal["greater", "less", "two-sided"], "recursive_category": str,
              "baseline_category": str, "control_alpha": float},
    controls={
        "token_matched": {"recursive_categories": list[str], "pool_categories": list[str], "min_pairs": int},
        "length_strata": {**_GROUPS, "min_shared_strata": int},
        "bos_excluded": {"window": int, **_GROUPS, "min_per_condition": int},
        "chat_template": {**_GROUPS, "min_per_condition": int},
        "permutation": {"n_resamples": int},
        "n30": {**_GROUPS, "min_per_condition": int},
    },
)


def _too_few(ctx: Context, name: str, rec: RVRun, base: RVRun, needed: int, why: str) -> dict[str, Any] | None:
    """An inconclusive result when either condition has fewer than `needed` valid prompts."""
    if min(len(rec.r_v), len(base.r_v)) >= needed:
        return None
    return _inconclusive(ctx, name, rec, base,
                         f"{len(rec.r_v)} recursive and {len(base.r_v)} baseline prompts valid, need {needed} ({why})")


def _inconclusive(ctx: Context, name: str, rec: RVRun, base: RVRun, why: str) -> dict[str, Any]:
    control = ctx.claim.control(name)
    observed = {m: float("nan") for m in control["criterion"]}
    observed.update(n_recursive=len(rec.r_v), n_baseline=len(base.r_v))
    return protocol_result(ctx.claim, protocol_of(ctx.claim, name), _kind(ctx, name), control["criterion"],
                           observed, lm=ctx.lm, banks=(ctx.bank,),
                           n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), notes=(f"inconclusive: {why}",))


def _kind(ctx: Context, name: str) -> str:
    return protocol_of(ctx.claim, name).partition(":")[0]


def _stated_result(ctx: Context, name: str, stated: Stated, rec: RVRun, base: RVRun, extra: dict[str, Any],
                   tests: dict[str, Any], data: dict[str, Any], notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """A control's result: its effect against the published separation decides it."""
    control = ctx.claim.control(name)
    observed = {**stated.observed, **extra, "n_recursive": len(rec.r_v), "n_baseline": len(base.r_v)}
    return protocol_result(ctx.claim, protocol_of(ctx.claim, name), "control", control["criterion"], observed,
                           lm=ctx.lm, banks=(ctx.bank,), n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), tests=tests, notes=notes, data=data,
                           published={"separation": ctx.claim.published["separation"]},
                           effect=stated.effect, n_needed=stated.n_needed)


def _two_sample_control(ctx: Context, name: str, rec: RVRun, base: RVRun, extra: dict[str, Any],
                        notes: tuple[str, ...] = ()) -> dict[str, Any]:
    stated = two_sample_effect(EffectSpec.of(ctx.claim, name), base.r_v, rec.r_v)
    observed, tests = compare(rec, base, ctx.seed, ctx.claim)
    extra = {k: v for k, v in observed.items() if k not in ("separation", "n_recursive", "n_baseline")} | extra
    return _stated_result(ctx, name, stated, rec, base, extra, tests,
                          {"recursive": _per_prompt(rec), "baseline": _per_prompt(base)}, notes)


def token_matched(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("token_matched")
    targets = _prompts(ctx.bank, control["recursive_categories"])
    pool = [p for p in dict.fromkeys(_prompts(ctx.bank, control["pool_categories"])) if p not in set(targets)]
    pairs = [(targets[i], pool[j]) for i, j in
             match_by_tokens(token_counts(ctx.lm, targets, ctx.fmt), token_counts(ctx.lm, pool, ctx.fmt))]
    rec, base = _paired(ctx.run([r for r, _ in pairs], ctx.window()), ctx.run([b for _, b in pairs], ctx.window()),
                        pairs)
    rec.excluded["no_token_matched_partner"] = len(targets) - len(pairs)
    too_few = _too_few(ctx, "token_matched", rec, base, control["min_pairs"], "too few token-matched pairs")
    if too_few:
        return too_few
    stated = paired_effect(EffectSpec.of(ctx.claim, "token_matched"), base.r_v, rec.r_v)
    extra = {"pairs": len(rec.r_v), "unmatched_recursive": len(targets) - len(pairs), **pr_means(rec, base)}
    tests = {"paired_t": stats.paired_t(base.r_v, rec.r_v).as_dict()}
    return _stated_result(ctx, "token_matched", stated, rec, base, extra, tests,
                          {"recursive": _per_prompt(rec), "baseline": _per_prompt(base)})


def _paired(rec: RVRun, base: RVRun, pairs: list[tuple[str, str]]) -> tuple[RVRun, RVRun]:
    """The pairs whose two prompts both gave a finite R_V, in pair order; a pair that lost one half is counted."""
    at_rec = {p: i for i, p in enumerate(rec.prompts)}
    at_base = {p: i for i, p in enumerate(base.prompts)}
    kept = [(at_rec[r], at_base[b]) for r, b in pairs if r in at_rec and b in at_base]
    rec.excluded["pair_partner_excluded"] = (len(rec.prompts) - len(kept)) + (len(base.prompts) - len(kept))

    def take(run: RVRun, idx: list[int]) -> RVRun:
        return RVRun([run.prompts[i] for i in idx], [run.r_v[i] for i in idx], [run.pr_early[i] for i in idx],
                      [run.pr_late[i] for i in idx], [run.tokens[i] for i in idx], run.excluded)

    return take(rec, [i for i, _ in kept]), take(base, [j for _, j in kept])


def length_strata(ctx: Context) -> dict[str, Any]:
    """Token count as a factor: the condition effect within equal-T strata (OLS with one dummy per T)."""
    control = ctx.claim.control("length_strata")
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), ctx.window())
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), ctx.window())
    shared = sorted(set(rec.tokens) & set(base.tokens))
    if len(shared) < control["min_shared_strata"]:
        return _inconclusive(ctx, "length_strata", rec, base,
                             f"{len(shared)} token counts hold both conditions, need {control['min_shared_strata']}")
    spec = EffectSpec.of(ctx.claim, "length_strata")
    try:
        stated, fit_detail = strata_effect(spec, base.r_v, base.tokens, rec.r_v, rec.tokens)
    except ValueError as err:
        return _inconclusive(ctx, "length_strata", rec, base, f"condition and token count not separable ({err})")
    extra = {"shared_strata": len(shared), "prompts_in_shared_strata": fit_detail["informative"],
             "corr_tokens_r_v": float(np.corrcoef(rec.tokens + base.tokens, rec.r_v + base.r_v)[0, 1])}
    data = {"r_v": rec.r_v + base.r_v, "tokens": [float(t) for t in rec.tokens + base.tokens],
            "recursive": [1.0] * len(rec.r_v) + [0.0] * len(base.r_v)}
    return _stated_result(ctx, "length_strata", stated, rec, base, extra, {"ols_token_count_factor": fit_detail},
                          data)


def strata_effect(spec: EffectSpec, base: list[float], base_tokens: list[int], rec: list[float],
                  rec_tokens: list[int]) -> tuple[Stated, dict[str, Any]]:
    """baseline - recursive within equal token counts: minus the condition coefficient of an OLS with one
    indicator per token count (only strata holding both conditions inform it), with its t interval."""
    tokens = list(rec_tokens) + list(base_tokens)
    strata = sorted(set(tokens))
    columns: dict[str, list[float]] = {"recursive": [1.0] * len(rec) + [0.0] * len(base)}
    for t in strata[1:]:  # the first count is the reference level
        columns[f"T={t}"] = [float(x == t) for x in tokens]
    fit = stats.ols(list(rec) + list(base), columns)
    term = fit.interval("recursive", spec.confidence)
    interval = stats.Interval(-term.estimate, -term.high, -term.low, term.se, term.df, term.confidence)
    counts = Counter((t, i < len(rec)) for i, t in enumerate(tokens))
    informative = sum(n for (t, _), n in counts.items() if counts[(t, True)] and counts[(t, False)])
    detail = {"coef_recursive": term.estimate, "se": term.se, "df": fit.df, "p_two_sided": fit.term("recursive")["p"],
              "strata": len(strata), "informative": informative}
    return interval_effect(spec, interval, fit.resid_sd), detail


def bos_excluded(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("bos_excluded")
    window = ctx.window(control["window"], exclude_bos=True)
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), window, min_tokens=window.size + 1)
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), window, min_tokens=window.size + 1)
    too_few = _too_few(ctx, "bos_excluded", rec, base, control["min_per_condition"],
                       f"prompts need at least {window.size + 1} tokens")
    return too_few or _two_sample_control(ctx, "bos_excluded", rec, base, {"window": window.size,
                                                                             **pr_means(rec, base)})


def chat_template(ctx: Context) -> dict[str, Any]:
    """Both conditions in the model's chat template (one user turn with the generation prompt)."""
    control = ctx.claim.control("chat_template")
    fmt = PromptFormat(chat_template=True, bos=ctx.fmt.bos)
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), ctx.window(), fmt=fmt)
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), ctx.window(), fmt=fmt)
    too_few = _too_few(ctx, "chat_template", rec, base, control["min_per_condition"], "each group needs prompts")
    note = (f"format: {fmt.describe(ctx.lm.tokenizer)}",)
    return too_few or _two_sample_control(ctx, "chat_template", rec, base, pr_means(rec, base), note)


def permutation(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("permutation")
    p = ctx.claim.protocol
    rec = ctx.run(ctx.bank.category(p["recursive_category"]), ctx.window())
    base = ctx.run(ctx.bank.category(p["baseline_category"]), ctx.window())
    too_few = _too_few(ctx, "permutation", rec, base, 2, "each group needs two values")
    if too_few:
        return too_few
    res = stats.permutation_test(base.r_v, rec.r_v, n_resamples=control["n_resamples"], seed=ctx.seed)
    observed = {"p_value": res.p_value, "mean_diff": res.statistic, "n_resamples": control["n_resamples"]}
    return protocol_result(ctx.claim, protocol_of(ctx.claim, "permutation"), _kind(ctx, "permutation"),
                           control["criterion"], observed, lm=ctx.lm, banks=(ctx.bank,),
                           n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), tests={"permutation": res.as_dict()})


def n30(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("n30")
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), ctx.window())
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), ctx.window())
    too_few = _too_few(ctx, "n30", rec, base, control["min_per_condition"], "the check asks for n >= 30")
    return too_few or _two_groups(ctx, protocol_of(ctx.claim, "n30"), _kind(ctx, "n30"), control["criterion"],
                                  rec, base)


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "as_published_as_stated": lambda ctx: as_published(ctx, "as_stated"),
    "control:token_matched": token_matched,
    "control:length_strata": length_strata,
    "control:bos_excluded": bos_excluded,
    "control:chat_template": chat_template,
    "robustness:permutation": permutation,
    "robustness:n30": n30,
}
