"""R_V separation across window sizes (claims-spec A.7.3): the sweep as published, two controls on prompts long
enough for every window (token-matched pairs; a fixed prompt set without BOS), the source's min(W, T) rule and
the published table's midpoints beside, and the published ranges against the claim.

One capture of the last max(W) rows per model serves every window (`api.TableContext`).
"""

from __future__ import annotations

from typing import Any, Literal

from harness import api

_RULE = Literal["min", "full", "no_bos"]
SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer_from_end": int, "site": str, "windows": list[int],
              "extra_windows": list[int], "window_rule": _RULE, "min_per_window": int, "chat_template": bool,
              "bos": bool | None, "dtype": api.DType, "recursive_categories": list[str],
              "baseline_categories": list[str], "passage_category": str, "control_alpha": float},
    controls={
        "token_matched": {"min_pairs": int},
        "fixed_set_no_bos": {"min_per_condition": int, "recursive_categories": list[str],
                             "baseline_categories": list[str]},
        "source_rule": {"window_rule": _RULE},
        "published_midpoints": {},
    },
)


def _pct(rec: float, base: float) -> float:
    return 100 * (1 - rec / base)


def _size(ctx: api.TableContext) -> int:
    p = ctx.claim.protocol
    return max([*p["windows"], *p["extra_windows"]])


def _groups(ctx: api.TableContext) -> tuple[list[str], list[str]]:
    p = ctx.claim.protocol
    return ctx.prompts(p["recursive_categories"]), ctx.prompts(p["baseline_categories"])


def sweep(ctx: api.TableContext, rule: api.WindowRule) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, int]]:
    """(observed over the published grid, one row per window, exclusions by window) under `rule`."""
    p = ctx.claim.protocol
    rec_prompts, base_prompts = _groups(ctx)
    rows = ctx.rows([*rec_prompts, *base_prompts], _size(ctx))
    table, excluded = [], {}
    for window in [*p["windows"], *p["extra_windows"]]:
        run = rows.at(window, rule)
        rec, base = api.select_prompts(run, rec_prompts), api.select_prompts(run, base_prompts)
        excluded.update({f"W{window}:{k}": v for k, v in api.exclusions(run).items()})
        row: dict[str, Any] = {"window": window, "n_recursive": len(rec.r_v), "n_baseline": len(base.r_v),
                               "published_grid": window in p["windows"]}
        if min(len(rec.r_v), len(base.r_v)) >= p["min_per_window"]:
            m_rec, m_base = api.stats.nan_mean(rec.r_v), api.stats.nan_mean(base.r_v)
            row |= {"recursive_mean": m_rec, "baseline_mean": m_base, "separation_pct": _pct(m_rec, m_base),
                    "welch_p": api.stats.welch_t(base.r_v, rec.r_v).p_value}
        table.append(row)
    grid = [r for r in table if r["published_grid"]]
    evaluated = [r["separation_pct"] for r in grid if "separation_pct" in r]
    complete = len(evaluated) == len(grid)
    observed = {"min_separation_pct": min(evaluated) if complete else float("nan"),
                "max_separation_pct": max(evaluated) if complete else float("nan"),
                "windows_not_evaluated": sum("separation_pct" not in r for r in table),
                **{f"separation_pct_W{r['window']}": r.get("separation_pct", float("nan")) for r in table},
                **{f"n_W{r['window']}": r["n_recursive"] + r["n_baseline"] for r in table}}
    return observed, table, excluded


def _layers(ctx: api.TableContext) -> dict[str, int]:
    early, late = ctx.layers
    return {"early_layer": early, "late_layer": late}


def as_published(ctx: api.TableContext) -> dict[str, Any]:
    observed, table, excluded = sweep(ctx, ctx.claim.protocol["window_rule"])
    notes = () if observed["min_separation_pct"] == observed["min_separation_pct"] else (
        "inconclusive: a window of the published grid has too few prompts long enough for it",)
    return api.protocol_result(ctx.claim, "as_published", "as_published", ctx.claim.criteria["as_published"],
                               {**observed, **_layers(ctx)}, lm=ctx.lm, banks=(ctx.bank,),
                               n={f"W{r['window']}": r["n_recursive"] + r["n_baseline"] for r in table},
                               exclusions=excluded, data={"windows": table}, notes=notes,
                               published=_published(ctx.claim))


def source_rule(ctx: api.TableContext) -> dict[str, Any]:
    control = ctx.claim.control("source_rule")
    observed, table, excluded = sweep(ctx, control["window_rule"])
    return api.protocol_result(ctx.claim, "robustness:source_rule", "robustness", control["criterion"], observed,
                               lm=ctx.lm, banks=(ctx.bank,),
                               n={f"W{r['window']}": r["n_recursive"] + r["n_baseline"] for r in table},
                               exclusions=excluded, data={"windows": table})


def _window_means(ctx: api.TableContext, prompts: list[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Each prompt's R_V averaged over the published grid, for prompts long enough for every window of it with
    position 0 outside (rule no_bos at the widest), and the exclusions."""
    rows = ctx.rows(prompts, _size(ctx))
    windows = ctx.claim.protocol["windows"]
    runs = [rows.at(w, "no_bos") for w in windows]
    widest = runs[windows.index(max(windows))]
    kept = [q for q in widest.prompts if all(q in run.prompts for run in runs)]
    means = {q: api.stats.nan_mean([run.r_v[run.prompts.index(q)] for run in runs]) for q in kept}
    excluded = {**api.exclusions(widest), "not_finite_at_every_window": len(widest.prompts) - len(kept)}
    return means, excluded


def _control_result(ctx: api.TableContext, name: str, stated: api.Stated | None, n: dict[str, int],
                    excluded: dict[str, int], extra: dict[str, Any], data: dict[str, Any],
                    why: str | None = None) -> dict[str, Any]:
    control = ctx.claim.control(name)
    if stated is None:
        observed = {m: float("nan") for m in control["criterion"]} | n
        return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed,
                                   lm=ctx.lm, banks=(ctx.bank,), n=n, exclusions=excluded,
                                   notes=(f"inconclusive: {why}",))
    return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"],
                               {**stated.observed, **extra, **n, **_layers(ctx)}, lm=ctx.lm, banks=(ctx.bank,),
                               n=n, exclusions=excluded, data=data, effect=stated.effect, n_needed=stated.n_needed)


def token_matched(ctx: api.TableContext) -> dict[str, Any]:
    control = ctx.claim.control("token_matched")
    rec_prompts, _ = _groups(ctx)
    matched = ctx.matched(rec_prompts, ctx.claim.protocol["passage_category"])
    rec, rec_out = _window_means(ctx, [t for t, _ in matched.pairs])
    base, base_out = _window_means(ctx, [b for _, b in matched.pairs])
    kept = [(t, b) for t, b in matched.pairs if t in rec and b in base]
    excluded = {**{f"recursive:{k}": v for k, v in rec_out.items()},
                **{f"partner:{k}": v for k, v in base_out.items()}, "no_token_matched_partner": matched.unmatched}
    n = {"pairs": len(kept)}
    if len(kept) < control["min_pairs"]:
        return _control_result(ctx, "token_matched", None, n, excluded, {}, {},
                               f"{len(kept)} token-matched pairs long enough, need {control['min_pairs']}")
    spec = api.EffectSpec.of(ctx.claim, "token_matched")
    stated = api.paired_effect(spec, [base[b] for _, b in kept], [rec[t] for t, _ in kept])
    data = {"pairs": [{"recursive": t, "partner": b, "r_v_recursive": rec[t], "r_v_partner": base[b]}
                      for t, b in kept]}
    return _control_result(ctx, "token_matched", stated, n, excluded, {"reused_passages": matched.reused}, data)


def fixed_set_no_bos(ctx: api.TableContext) -> dict[str, Any]:
    control = ctx.claim.control("fixed_set_no_bos")
    rec_prompts = ctx.prompts(control["recursive_categories"])
    base_prompts = ctx.prompts(control["baseline_categories"])
    rec, rec_out = _window_means(ctx, rec_prompts)
    base, base_out = _window_means(ctx, base_prompts)
    excluded = {**{f"recursive:{k}": v for k, v in rec_out.items()},
                **{f"baseline:{k}": v for k, v in base_out.items()}}
    n = {"recursive": len(rec), "baseline": len(base)}
    if min(n.values()) < control["min_per_condition"]:
        return _control_result(ctx, "fixed_set_no_bos", None, n, excluded, {}, {},
                               f"{n['recursive']} recursive and {n['baseline']} baseline prompts long enough for "
                               f"every window, need {control['min_per_condition']} each")
    spec = api.EffectSpec.of(ctx.claim, "fixed_set_no_bos")
    stated = api.two_sample_effect(spec, list(base.values()), list(rec.values()))
    extra = {"separation_pct": _pct(api.stats.nan_mean(list(rec.values())), api.stats.nan_mean(list(base.values())))}
    return _control_result(ctx, "fixed_set_no_bos", stated, n, excluded, extra,
                           {"recursive": rec, "baseline": base})


PROTOCOLS: dict[str, Any] = {
    "as_published": as_published,
    "control:token_matched": token_matched,
    "control:fixed_set_no_bos": fixed_set_no_bos,
    "robustness:source_rule": source_rule,
}


# --- the published table alone ----------------------------------------------------------------------------


def _published(claim: api.Claim) -> dict[str, Any]:
    keep = ("windows", "recursive_low", "recursive_high", "baseline_low", "baseline_high", "claimed_separation_pct")
    return {k: claim.published[k] for k in keep}


def _ranges(claim: api.Claim) -> list[dict[str, float]]:
    """Per published window: the separation at the midpoints and the lowest and highest the ranges allow."""
    pub = claim.published
    out = []
    for i, window in enumerate(pub["windows"]):
        rec = (pub["recursive_low"][i], pub["recursive_high"][i])
        base = (pub["baseline_low"][i], pub["baseline_high"][i])
        out.append({"window": window, "midpoint_pct": _pct(sum(rec) / 2, sum(base) / 2),
                    "lowest_pct": _pct(rec[1], base[0]), "highest_pct": _pct(rec[0], base[1])})
    return out


def rederive(claim: api.Claim) -> dict[str, Any]:
    """Can the published ranges hold a separation of 20-27% at every window? (They can; the midpoints do not:
    see `published_midpoints`.)"""
    low, high = claim.published["claimed_separation_pct"]
    ranges = _ranges(claim)
    inconsistent = [r["window"] for r in ranges if r["highest_pct"] < low or r["lowest_pct"] > high]
    observed = {"windows_inconsistent_with_claim": len(inconsistent),
                "lowest_possible_pct": min(r["lowest_pct"] for r in ranges),
                "highest_possible_pct": max(r["highest_pct"] for r in ranges)}
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               published=_published(claim), data={"windows": ranges},
                               notes=("no CSV was committed: only the ranges of the PHASE1 table can be checked",))


def published_midpoints(claim: api.Claim) -> dict[str, Any]:
    ranges = _ranges(claim)
    observed = {"max_midpoint_separation_pct": max(r["midpoint_pct"] for r in ranges),
                "min_midpoint_separation_pct": min(r["midpoint_pct"] for r in ranges),
                **{f"midpoint_separation_pct_W{r['window']}": r["midpoint_pct"] for r in ranges}}
    return api.protocol_result(claim, "robustness:published_midpoints", "robustness",
                               claim.control("published_midpoints")["criterion"], observed,
                               published=_published(claim), data={"windows": ranges})


REDERIVATIONS = {"rederive": rederive, "robustness:published_midpoints": published_midpoints}
