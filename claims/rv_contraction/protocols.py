"""Controls for the R_V claim (claims-spec W-A1): each asks whether the published effect survives one artefact."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from harness.analysis import stats
from harness.claimkit.params import DType, Schema
from harness.claimkit.results import protocol_result
from harness.claimkit.rv import (
    Context,
    Protocol,
    RVRun,
    _exclusions,
    _prompts,
    _two_groups,
    as_published,
    match_by_tokens,
    pr_means,
)
from harness.engine.runner import token_counts

SCHEMA = Schema(
    protocol={"early_layer": int, "late_layer": int, "site": str, "window": int, "exclude_bos": bool,
              "centred": bool, "chat_template": bool, "dtype": DType, "test": Literal["student_t"],
              "alternative": Literal["greater", "less", "two-sided"], "recursive_category": str,
              "baseline_category": str},
    controls={
        "token_matched": {"recursive_categories": list[str], "pool_categories": list[str], "min_pairs": int},
        "bos_excluded": {"window": int, "recursive_categories": list[str], "baseline_categories": list[str],
                         "min_per_condition": int},
        "length_covariate": {"recursive_categories": list[str], "baseline_categories": list[str]},
        "permutation": {"n_resamples": int},
        "n30": {"recursive_categories": list[str], "baseline_categories": list[str], "min_per_condition": int},
    },
)


def _too_few(ctx: Context, name: str, rec: RVRun, base: RVRun, needed: int, why: str) -> dict[str, Any] | None:
    """An inconclusive result when either condition has fewer than `needed` valid prompts."""
    if min(len(rec.r_v), len(base.r_v)) >= needed:
        return None
    control = ctx.claim.control(name)
    observed = {m: float("nan") for m in control["criterion"]}
    observed.update(n_recursive=len(rec.r_v), n_baseline=len(base.r_v))
    note = f"inconclusive: {len(rec.r_v)} recursive and {len(base.r_v)} baseline prompts valid, need {needed} ({why})"
    return protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed, lm=ctx.lm,
                           banks=(ctx.bank,), n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), notes=(note,))


def token_matched(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("token_matched")
    targets = _prompts(ctx.bank, control["recursive_categories"])
    pool = [p for p in dict.fromkeys(_prompts(ctx.bank, control["pool_categories"])) if p not in set(targets)]
    pairs = match_by_tokens(token_counts(ctx.lm, targets), token_counts(ctx.lm, pool))
    rec = ctx.run([targets[i] for i, _ in pairs], ctx.window())
    base = ctx.run([pool[j] for _, j in pairs], ctx.window())
    rec.excluded["no_token_matched_partner"] = len(targets) - len(pairs)
    too_few = _too_few(ctx, "token_matched", rec, base, control["min_pairs"], "too few token-matched pairs")
    extra = {"pairs": len(pairs), "unmatched_recursive": len(targets) - len(pairs)}
    return too_few or _two_groups(ctx, "control:token_matched", "control", control["criterion"], rec, base, extra)


def bos_excluded(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("bos_excluded")
    window = ctx.window(control["window"], exclude_bos=True)
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), window, min_tokens=window.size + 1)
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), window, min_tokens=window.size + 1)
    too_few = _too_few(ctx, "bos_excluded", rec, base, control["min_per_condition"],
                       f"prompts need at least {window.size + 1} tokens")
    extra = {"window": window.size, **pr_means(rec, base)}
    return too_few or _two_groups(ctx, "control:bos_excluded", "control", control["criterion"], rec, base, extra)


def length_covariate(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("length_covariate")
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), ctx.window())
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), ctx.window())
    too_few = _too_few(ctx, "length_covariate", rec, base, 4, "regression needs residual degrees of freedom")
    if too_few:
        return too_few
    y = rec.r_v + base.r_v
    tokens = [float(t) for t in rec.tokens + base.tokens]
    condition = [1.0] * len(rec.r_v) + [0.0] * len(base.r_v)
    notes: tuple[str, ...] = ()
    try:
        fit = stats.ols(y, {"tokens": tokens, "recursive": condition})
        term = fit.term("recursive")
        observed: dict[str, Any] = {"condition_coef": term["coef"], "condition_t": term["t"],
                                    "condition_p": term["p"], "tokens_coef": fit.term("tokens")["coef"],
                                    "tokens_p": fit.term("tokens")["p"]}
    except ValueError as err:
        observed = {"condition_coef": float("nan"), "condition_p": float("nan")}
        notes = (f"inconclusive: token count and condition cannot be separated ({err})",)
    observed["corr_tokens_r_v"] = float(np.corrcoef(tokens, y)[0, 1])
    observed.update(n_recursive=len(rec.r_v), n_baseline=len(base.r_v))
    return protocol_result(ctx.claim, "control:length_covariate", "control", control["criterion"], observed,
                           lm=ctx.lm, banks=(ctx.bank,), n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), notes=notes,
                           data={"r_v": y, "tokens": tokens, "recursive": condition})


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
    return protocol_result(ctx.claim, "control:permutation", "control", control["criterion"], observed, lm=ctx.lm,
                           banks=(ctx.bank,), n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), tests={"permutation": res.as_dict()})


def n30(ctx: Context) -> dict[str, Any]:
    control = ctx.claim.control("n30")
    rec = ctx.run(_prompts(ctx.bank, control["recursive_categories"]), ctx.window())
    base = ctx.run(_prompts(ctx.bank, control["baseline_categories"]), ctx.window())
    too_few = _too_few(ctx, "n30", rec, base, control["min_per_condition"], "the control asks for n >= 30")
    return too_few or _two_groups(ctx, "control:n30", "control", control["criterion"], rec, base)


PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "as_published_as_stated": lambda ctx: as_published(ctx, "as_stated"),
    "control:token_matched": token_matched,
    "control:bos_excluded": bos_excluded,
    "control:length_covariate": length_covariate,
    "control:permutation": permutation,
    "control:n30": n30,
}
