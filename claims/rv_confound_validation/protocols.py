"""The confound validation of R_V (claims-spec A.7.5): champions against length-matched and pseudo-recursive
prompts with the source's Welch tests and pass criteria as coded; token-matched and token-count controls; the
source's length correlation beside; the published summary checked against itself.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

from scipy import stats as sps

from harness import api

SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer": int, "site": str, "window": int,
              "window_rule": Literal["min", "full", "no_bos"], "min_tokens": int, "chat_template": bool,
              "bos": bool | None, "dtype": api.DType, "champions_category": str, "length_category": str,
              "pseudo_category": str, "passage_category": str, "test": Literal["welch_t"],
              "alternative": Literal["two-sided"], "control_alpha": float},
    controls={"token_matched": {"min_pairs": int}, "token_count_covariate": {}, "token_correlation": {}},
)
GROUPS = ("champions", "length", "pseudo")  # [protocol].<group>_category names each one's bank category
MEANS = {"champions": "champions_mean", "length": "length_matched_mean", "pseudo": "pseudo_recursive_mean"}
MISMATCH = ("the source's run config names {config} but its summary.json records {summary}: this run is {ran} "
            "({weights} weights)")


def measure(ctx: api.TableContext, prompts: list[str]) -> api.RVRun:
    """R_V over the source's window; prompts under [protocol].min_tokens skipped and counted."""
    p = ctx.claim.protocol
    run = ctx.rows(prompts, p["window"]).at(p["window"], p["window_rule"])
    long = [q for q, t in zip(run.prompts, run.tokens, strict=True) if t >= p["min_tokens"]]
    kept = api.select_prompts(run, long)
    counts = Counter(run.excluded)
    counts[f"under_{p['min_tokens']}_tokens"] = len(run.prompts) - len(long)
    return api.RVRun(kept.prompts, kept.r_v, kept.pr_early, kept.pr_late, kept.tokens, counts)


def groups(ctx: api.TableContext) -> dict[str, api.RVRun]:
    p = ctx.claim.protocol
    return {g: measure(ctx, ctx.bank.category(p[f"{g}_category"])) for g in GROUPS}


def _mismatch(ctx: api.TableContext) -> str:
    pub = ctx.claim.published
    return MISMATCH.format(config=pub["model_in_config"], summary=pub["model_in_summary"], ran=ctx.lm.spec.hf_id,
                           weights=ctx.lm.weights)


def _welch(a: api.RVRun, b: api.RVRun) -> api.stats.TestResult | None:
    return api.stats.welch_t(a.r_v, b.r_v, "two-sided") if min(len(a.r_v), len(b.r_v)) >= 2 else None


def as_published(ctx: api.TableContext) -> dict[str, Any]:
    runs = groups(ctx)
    tests = {"champions_vs_length": _welch(runs["champions"], runs["length"]),
             "champions_vs_pseudo": _welch(runs["champions"], runs["pseudo"]),
             "length_vs_pseudo": _welch(runs["length"], runs["pseudo"])}
    observed: dict[str, Any] = {MEANS[g]: api.stats.nan_mean(runs[g].r_v) for g in GROUPS}
    for name, test in tests.items():
        observed[f"t_{name}"] = test.statistic if test else float("nan")
        observed[f"p_{name}"] = test.p_value if test else float("nan")
    observed |= _correlation(runs) | {f"mean_tokens_{g}": api.stats.nan_mean([float(t) for t in runs[g].tokens])
                                      for g in GROUPS}
    published = {k: v for k, v in ctx.claim.published.items() if isinstance(v, int | float)}
    return api.protocol_result(ctx.claim, "as_published", "as_published", ctx.claim.criteria["as_published"],
                               observed, lm=ctx.lm, banks=(ctx.bank,), n={g: len(runs[g].r_v) for g in GROUPS},
                               exclusions=api.exclusions(*runs.values()), published=published,
                               tests={k: v.as_dict() for k, v in tests.items() if v is not None},
                               notes=(_mismatch(ctx),), data={g: _rows(runs[g]) for g in GROUPS})


def _rows(run: api.RVRun) -> list[dict[str, Any]]:
    return [{"prompt": q, "r_v": v, "tokens": t} for q, v, t in zip(run.prompts, run.r_v, run.tokens, strict=True)]


def _correlation(runs: dict[str, api.RVRun]) -> dict[str, float]:
    """The source's pooled Pearson corr(token_count, R_V), Spearman beside."""
    tokens = [float(t) for g in GROUPS for t in runs[g].tokens]
    values = [v for g in GROUPS for v in runs[g].r_v]
    if len(values) < 3 or len(set(tokens)) < 2:
        return {"corr_tokens_r_v": float("nan"), "p_corr_tokens_r_v": float("nan"), "n_corr": len(values)}
    pearson, spearman = sps.pearsonr(tokens, values), sps.spearmanr(tokens, values)
    return {"corr_tokens_r_v": float(pearson.statistic), "p_corr_tokens_r_v": float(pearson.pvalue),
            "spearman_tokens_r_v": float(spearman.statistic), "n_corr": len(values)}


def _control(ctx: api.TableContext, name: str, stated: api.Stated | None, n: dict[str, int],
             excluded: dict[str, int], extra: dict[str, Any], tests: dict[str, Any], why: str = "") -> dict[str, Any]:
    control = ctx.claim.control(name)
    if stated is None:
        return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"],
                                   {m: float("nan") for m in control["criterion"]} | n, lm=ctx.lm,
                                   banks=(ctx.bank,), n=n, exclusions=excluded, notes=(f"inconclusive: {why}",))
    return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"],
                               {**stated.observed, **extra}, lm=ctx.lm, banks=(ctx.bank,), n=n,
                               exclusions=excluded, tests=tests, effect=stated.effect, n_needed=stated.n_needed,
                               notes=(_mismatch(ctx),))


def token_matched(ctx: api.TableContext) -> dict[str, Any]:
    p, control = ctx.claim.protocol, ctx.claim.control("token_matched")
    champions = ctx.bank.category(p["champions_category"])
    matched = ctx.matched(champions, p["passage_category"])
    rec, base = measure(ctx, [t for t, _ in matched.pairs]), measure(ctx, [b for _, b in matched.pairs])
    rec_at, base_at = dict(zip(rec.prompts, rec.r_v, strict=True)), dict(zip(base.prompts, base.r_v, strict=True))
    kept = [(t, b) for t, b in matched.pairs if t in rec_at and b in base_at]
    excluded = {**api.exclusions(rec, base), "no_token_matched_partner": matched.unmatched}
    n = {"pairs": len(kept)}
    if len(kept) < control["min_pairs"]:
        return _control(ctx, "token_matched", None, n, excluded, {}, {},
                        f"{len(kept)} token-matched pairs valid, need {control['min_pairs']}")
    a, b = [base_at[x] for _, x in kept], [rec_at[t] for t, _ in kept]
    stated = api.paired_effect(api.EffectSpec.of(ctx.claim, "token_matched"), a, b)
    return _control(ctx, "token_matched", stated, n, excluded,
                    {"pairs": len(kept), "champions_mean": api.stats.nan_mean(b),
                     "partner_mean": api.stats.nan_mean(a)},
                    {"paired_t": api.stats.paired_t(a, b).as_dict()})


def token_count_covariate(ctx: api.TableContext) -> dict[str, Any]:
    runs = groups(ctx)
    n = {g: len(runs[g].r_v) for g in GROUPS}
    excluded = api.exclusions(*runs.values())
    values = [v for g in GROUPS for v in runs[g].r_v]
    columns = {"champion": [float(g == "champions") for g in GROUPS for _ in runs[g].r_v],
               "pseudo": [float(g == "pseudo") for g in GROUPS for _ in runs[g].r_v],
               "tokens": [float(t) for g in GROUPS for t in runs[g].tokens]}
    try:
        fit = api.stats.ols(values, columns)
    except ValueError as err:
        return _control(ctx, "token_count_covariate", None, n, excluded, {}, {}, f"OLS not identifiable ({err})")
    spec = api.EffectSpec.of(ctx.claim, "token_count_covariate")
    term = fit.interval("champion", spec.confidence)
    interval = api.stats.Interval(-term.estimate, -term.high, -term.low, term.se, term.df, term.confidence)
    stated = api.interval_effect(spec, interval, fit.resid_sd)
    tokens = fit.term("tokens")
    return _control(ctx, "token_count_covariate", stated, n, excluded,
                    {"tokens_coef": tokens["coef"], "tokens_p": tokens["p"], "df": fit.df},
                    {"ols": {"names": fit.names, "coef": fit.coef, "se": fit.se, "p": fit.p}})


def token_correlation(ctx: api.TableContext) -> dict[str, Any]:
    runs = groups(ctx)
    control = ctx.claim.control("token_correlation")
    observed: dict[str, Any] = dict(_correlation(runs))
    for g in GROUPS:
        ts, vs = [float(t) for t in runs[g].tokens], runs[g].r_v
        observed[f"corr_within_{g}"] = (float(sps.pearsonr(ts, vs).statistic)
                                        if len(vs) >= 3 and len(set(ts)) > 1 and len(set(vs)) > 1 else float("nan"))
    return api.protocol_result(ctx.claim, "robustness:token_correlation", "robustness", control["criterion"],
                               observed, lm=ctx.lm, banks=(ctx.bank,), n={g: len(runs[g].r_v) for g in GROUPS},
                               exclusions=api.exclusions(*runs.values()))


PROTOCOLS: dict[str, Any] = {
    "as_published": as_published,
    "control:token_matched": token_matched,
    "control:token_count_covariate": token_count_covariate,
    "robustness:token_correlation": token_correlation,
}


def _implied_df(t: float, p: float) -> float:
    """The df at which a two-sided t test gives p for t (scipy's t distribution, root found)."""
    from scipy import optimize

    return float(optimize.brentq(lambda df: 2 * sps.t.sf(abs(t), df) - p, 1.0, 1e4))


def rederive(claim: api.Claim) -> dict[str, Any]:
    """The published summary against itself (no raw data was committed beyond it)."""
    pub = claim.published
    n = {"champions": pub["n_champions"], "length": pub["n_length_matched"], "pseudo": pub["n_pseudo_recursive"]}
    comparisons = {"champions_vs_length": ("champions", "length"), "champions_vs_pseudo": ("champions", "pseudo"),
                   "length_vs_pseudo": ("length", "pseudo")}
    dfs, outside = {}, 0
    for name, (a, b) in comparisons.items():
        df = _implied_df(pub[f"t_{name}"], pub[f"p_{name}"])
        low, high = min(n[a], n[b]) - 1, n[a] + n[b] - 2  # Welch's df lies between these
        dfs[name] = {"implied_df": df, "welch_bounds": [low, high]}
        outside += not low <= df <= high
    r, m = pub["corr_tokens_r_v"], pub["n_corr"]
    corr_p = float(2 * sps.t.sf(abs(r) * math.sqrt(m - 2) / math.sqrt(1 - r * r), m - 2))
    own = claim.criteria["as_published"]
    figures = {"champions_mean": pub["champions_mean"], **{f"p_{k}": pub[f"p_{k}"] for k in comparisons}}
    failed = [k for k, rule in own.items() if api.evaluate({k: rule}, figures)[0] is not True]
    observed = {"welch_df_out_of_bounds": outside, "corr_p": corr_p,
                "corr_p_abs_error": abs(corr_p - pub["p_corr_tokens_r_v"]),
                "n_corr_error": abs(m - sum(n.values())), "published_criteria_failed": len(failed)}
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               data={"welch": dfs, "criteria_failed": failed}, n=n,
                               notes=("only the summary was committed; the per-prompt R_V are not re-derivable",))


REDERIVATIONS = {"rederive": rederive}
