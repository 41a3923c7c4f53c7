"""The cross-architecture R_V table (claims-spec A.7.2): as published on each model, two token-matched controls,
PHASE1's own arithmetic beside, and re-derivations of what the two published reports say (W-A9).

Every protocol reads one capture per model (`api.TableContext` caches it for the test module): the last 16
rows of the v projection at layer 5 and at num_layers - 4.
"""

from __future__ import annotations

from typing import Any, Literal

from harness import api

SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer_from_end": int, "site": str, "window": int,
              "window_rule": Literal["min", "full", "no_bos"], "chat_template": bool, "bos": bool | None,
              "dtype": api.DType, "recursive_categories": list[str], "baseline_categories": list[str],
              "passage_category": str, "test": Literal["welch_t"], "alternative": Literal["greater"],
              "control_alpha": float},
    controls={
        "token_matched": {"min_pairs": int},
        "no_bos": {"min_per_condition": int, "window_rule": Literal["min", "full", "no_bos"]},
        "phase1_rule": {"recursive_category": str, "baseline_category": str},
        "reports_agree": {},
    },
)


def published_row(claim: api.Claim, model_id: str) -> dict[str, Any]:
    """The model's published figures (README and PHASE1), or the reference model's for a model outside the
    table, with the row they come from."""
    pub = claim.published
    row = model_id if model_id in pub["readme_separation_pct"] else pub["reference_model"]
    return {"published_row": row, "readme_recursive": pub["readme_recursive"][row],
            "readme_baseline": pub["readme_baseline"][row],
            "readme_separation_pct": pub["readme_separation_pct"][row],
            "phase1_separation_pct": pub["phase1_separation_pct"][row]}


def _effect_spec(ctx: api.TableContext, control: str) -> api.EffectSpec:
    """The control's effect against this model's README separation (baseline - recursive R_V)."""
    row = published_row(ctx.claim, ctx.lm.id)
    table = ctx.claim.control(control)
    return api.EffectSpec("separation", row["readme_baseline"] - row["readme_recursive"],
                          float(table["min_fraction"]), float(ctx.claim.protocol["control_alpha"]))


def _window(ctx: api.TableContext, prompts: list[str], rule: api.WindowRule) -> api.RVRun:
    size = ctx.claim.protocol["window"]
    return ctx.rows(prompts, size).at(size, rule)


def _pct(rec: float, base: float) -> float:
    """Separation as the source states it: 1 - recursive / baseline, in percent."""
    return 100 * (1 - rec / base)


def _two_groups(rec: api.RVRun, base: api.RVRun) -> tuple[dict[str, Any], dict[str, Any]]:
    if min(len(rec.r_v), len(base.r_v)) < 2:
        return {"separation_pct": float("nan"), "p_value": float("nan"), "cohens_d": float("nan")}, {}
    welch = api.stats.welch_t(base.r_v, rec.r_v, "greater")
    m_rec, m_base = api.stats.nan_mean(rec.r_v), api.stats.nan_mean(base.r_v)
    observed = {"recursive_mean": m_rec, "baseline_mean": m_base, "separation": m_base - m_rec,
                "separation_pct": _pct(m_rec, m_base), "t": welch.statistic, "p_value": welch.p_value,
                "cohens_d": api.stats.cohens_d(base.r_v, rec.r_v)}
    tests = {"welch_t": welch.as_dict(), "student_t": api.stats.student_t(base.r_v, rec.r_v).as_dict(),
             "mann_whitney": api.stats.mann_whitney(base.r_v, rec.r_v).as_dict()}
    return observed, tests


def _groups(ctx: api.TableContext, rule: api.WindowRule) -> dict[str, api.RVRun]:
    p = ctx.claim.protocol
    names = [*p["recursive_categories"], *p["baseline_categories"]]
    everything = _window(ctx, ctx.prompts(names), rule)
    at = {prompt: i for i, prompt in enumerate(everything.prompts)}
    return {name: api.select_prompts(everything, [q for q in ctx.bank.category(name) if q in at])
            for name in names} | {"_all": everything}


def _per_prompt(run: api.RVRun) -> list[dict[str, Any]]:
    return [{"prompt": q, "r_v": v, "pr_early": e, "pr_late": late, "tokens": t}
            for q, v, e, late, t in zip(run.prompts, run.r_v, run.pr_early, run.pr_late, run.tokens, strict=True)]


def _layers(ctx: api.TableContext) -> dict[str, int]:
    early, late = ctx.layers
    return {"early_layer": early, "late_layer": late, "n_layers": ctx.lm.dims.n_layers}


def as_published(ctx: api.TableContext) -> dict[str, Any]:
    p = ctx.claim.protocol
    groups = _groups(ctx, p["window_rule"])
    rec = api.merge_runs([groups[name] for name in p["recursive_categories"]])
    base = api.merge_runs([groups[name] for name in p["baseline_categories"]])
    observed, tests = _two_groups(rec, base)
    tokens = rec.tokens + base.tokens
    observed |= {"n_prompts": len(tokens), "n_recursive": len(rec.r_v), "n_baseline": len(base.r_v),
                 "window_is_whole_prompt_fraction": api.stats.nan_mean([float(t <= p["window"]) for t in tokens]),
                 **{f"{name}_mean": api.stats.nan_mean(groups[name].r_v) for name in groups if name != "_all"},
                 **{f"{name}_mean_tokens": api.stats.nan_mean([float(t) for t in groups[name].tokens])
                    for name in groups if name != "_all"},
                 **_layers(ctx)}
    return api.protocol_result(ctx.claim, "as_published", "as_published", ctx.claim.criteria["as_published"],
                               observed, lm=ctx.lm, banks=(ctx.bank,),
                               n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                               exclusions=api.exclusions(groups["_all"]), tests=tests,
                               published=published_row(ctx.claim, ctx.lm.id),
                               data={"recursive": _per_prompt(rec), "baseline": _per_prompt(base)})


def _inconclusive(ctx: api.TableContext, name: str, n: dict[str, int], excluded: dict[str, int],
                  why: str) -> dict[str, Any]:
    control = ctx.claim.control(name)
    observed = {m: float("nan") for m in control["criterion"]} | n
    return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed, lm=ctx.lm,
                               banks=(ctx.bank,), n=n, exclusions=excluded, notes=(f"inconclusive: {why}",))


def token_matched(ctx: api.TableContext) -> dict[str, Any]:
    """Recursive prompts against token-matched passage spans, under the published window rule."""
    name, rule = "token_matched", ctx.claim.protocol["window_rule"]
    p, control = ctx.claim.protocol, ctx.claim.control(name)
    targets = ctx.prompts(p["recursive_categories"])
    matched = ctx.matched(targets, p["passage_category"])
    pairs = matched.pairs
    rec = _window(ctx, [t for t, _ in pairs], rule)
    base = _window(ctx, [b for _, b in pairs], rule)
    rec_at, base_at = dict(zip(rec.prompts, rec.r_v, strict=True)), dict(zip(base.prompts, base.r_v, strict=True))
    kept = [(t, b) for t, b in pairs if t in rec_at and b in base_at]
    excluded = {**api.exclusions(rec, base), "no_token_matched_partner": matched.unmatched,
                "pair_partner_excluded": len(pairs) - len(kept)}
    n = {"pairs": len(kept)}
    if len(kept) < control["min_pairs"]:
        return _inconclusive(ctx, name, n, excluded,
                             f"{len(kept)} token-matched pairs valid, need {control['min_pairs']}")
    stated = api.paired_effect(_effect_spec(ctx, name), [base_at[b] for _, b in kept], [rec_at[t] for t, _ in kept])
    observed = {**stated.observed, "pairs": len(kept), "reused_passages": matched.reused,
                "recursive_mean": api.stats.nan_mean([rec_at[t] for t, _ in kept]),
                "partner_mean": api.stats.nan_mean([base_at[b] for _, b in kept]), **_layers(ctx)}
    tests = {"paired_t": api.stats.paired_t([base_at[b] for _, b in kept], [rec_at[t] for t, _ in kept]).as_dict()}
    data = {"pairs": [{"recursive": t, "partner": b, "r_v_recursive": rec_at[t], "r_v_partner": base_at[b]}
                      for t, b in kept]}
    return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed,
                               lm=ctx.lm, banks=(ctx.bank,), n=n, exclusions=excluded, tests=tests, data=data,
                               published=published_row(ctx.claim, ctx.lm.id), effect=stated.effect,
                               n_needed=stated.n_needed)


def no_bos(ctx: api.TableContext) -> dict[str, Any]:
    """The published groups over windows without position 0 (shorter prompts counted and excluded)."""
    p, control = ctx.claim.protocol, ctx.claim.control("no_bos")
    groups = _groups(ctx, control["window_rule"])
    rec = api.merge_runs([groups[name] for name in p["recursive_categories"]])
    base = api.merge_runs([groups[name] for name in p["baseline_categories"]])
    n = {"recursive": len(rec.r_v), "baseline": len(base.r_v)}
    excluded = api.exclusions(groups["_all"])
    if min(n.values()) < control["min_per_condition"]:
        return _inconclusive(ctx, "no_bos", n, excluded, f"{n['recursive']} recursive and {n['baseline']} "
                             f"baseline prompts long enough, need {control['min_per_condition']} each")
    stated = api.two_sample_effect(_effect_spec(ctx, "no_bos"), base.r_v, rec.r_v)
    observed, tests = _two_groups(rec, base)
    observed = {**stated.observed, **{k: v for k, v in observed.items() if k != "separation"}, **n, **_layers(ctx)}
    return api.protocol_result(ctx.claim, "control:no_bos", "control", control["criterion"], observed, lm=ctx.lm,
                               banks=(ctx.bank,), n=n, exclusions=excluded, tests=tests,
                               published=published_row(ctx.claim, ctx.lm.id), effect=stated.effect,
                               n_needed=stated.n_needed,
                               data={"recursive": _per_prompt(rec), "baseline": _per_prompt(base)})


def phase1_rule(ctx: api.TableContext) -> dict[str, Any]:
    control = ctx.claim.control("phase1_rule")
    groups = _groups(ctx, ctx.claim.protocol["window_rule"])
    rec, base = groups[control["recursive_category"]], groups[control["baseline_category"]]
    observed, tests = _two_groups(rec, base)
    return api.protocol_result(ctx.claim, "robustness:phase1_rule", "robustness", control["criterion"], observed,
                               lm=ctx.lm, banks=(ctx.bank,), n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                               exclusions=api.exclusions(rec, base), tests=tests,
                               published=published_row(ctx.claim, ctx.lm.id))


PROTOCOLS: dict[str, Any] = {
    "as_published": as_published,
    "control:token_matched": token_matched,
    "control:no_bos": no_bos,
    "robustness:phase1_rule": phase1_rule,
}


# --- re-derivations from the published figures (no model) -------------------------------------------------


def rederive(claim: api.Claim) -> dict[str, Any]:
    """README: each separation from its own R_V columns, and "MoE 59% stronger" from its two percentages."""
    pub = claim.published
    derived = {m: _pct(pub["readme_recursive"][m], pub["readme_baseline"][m]) for m in pub["readme_separation_pct"]}
    errors = {m: abs(derived[m] - pub["readme_separation_pct"][m]) for m in derived}
    moe, dense = pub["readme_moe_compared_pct"]
    observed = {"readme_separation_max_error_pct": max(errors.values()),
                "moe_stronger_pct": 100 * (moe / dense - 1),
                "moe_stronger_error_pct": abs(100 * (moe / dense - 1) - pub["readme_moe_stronger_pct"])}
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               data={"derived_separation_pct": derived, "error_pct": errors},
                               notes=(f"{pub['raw_data']}; only the arithmetic inside the table can be checked",))


def rederive_phase1(claim: api.Claim) -> dict[str, Any]:
    """PHASE1: its separations from the group means it gives (deep recursive over factual)."""
    pub = claim.published
    derived = {m: _pct(g["deep_recursive"], g["factual"]) for m, g in pub["phase1_group_mean"].items()}
    pooled = {m: _pct((g["deep_recursive"] + g["mid_recursive"]) / 2, (g["factual"] + g["creative"]) / 2)
              for m, g in pub["phase1_group_mean"].items()}
    errors = {m: abs(derived[m] - pub["phase1_separation_pct"][m]) for m in derived}
    observed = {"phase1_separation_max_error_pct": max(errors.values()),
                **{f"pooled_groups_separation_pct[{m}]": v for m, v in pooled.items()}}
    return api.protocol_result(claim, "rederive_phase1", "rederive", claim.criteria["rederive_phase1"], observed,
                               data={"derived_separation_pct": derived, "pooled_groups_separation_pct": pooled},
                               notes=("PHASE1's figures follow one recursive group over the factual baseline "
                                      "only; the pooled groups of its own 80-prompt design give the figures "
                                      "under pooled_groups_separation_pct",))


def rederive_agreement(claim: api.Claim) -> dict[str, Any]:
    """W-A9: the README and PHASE1 separations of the same models, side by side."""
    pub = claim.published
    gaps = {m: pub["readme_separation_pct"][m] - pub["phase1_separation_pct"][m] for m in pub["readme_separation_pct"]}
    worst = max(gaps, key=lambda m: abs(gaps[m]))
    observed = {"readme_phase1_max_disagreement_pct": abs(gaps[worst]), "most_disagreeing_model": worst,
                "models_disagreeing_by_1pct_or_more": sum(abs(g) >= 1 for g in gaps.values())}
    return api.protocol_result(claim, "robustness:reports_agree", "robustness",
                               claim.control("reports_agree")["criterion"], observed,
                               data={"readme_minus_phase1_pct": gaps},
                               notes=("the two reports of one source give different separations for the same "
                                      "models; neither can be re-derived (no raw data); reported beside the "
                                      "re-derivations, never counted",))


REDERIVATIONS = {"rederive": rederive, "rederive_phase1": rederive_phase1,
                 "robustness:reports_agree": rederive_agreement}
