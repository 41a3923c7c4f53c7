"""The n300 behaviour transfer (claims-spec A.7.6, W-A6): the four published arms and their tests as coded; the
controls that take the transfer apart (layer, V patch, KV transplant, source content, calibrated score), each a
seed-matched paired difference; the patch's fire count; the published summary checked against itself.

All arms of one model are rows of one seed-matched sampled generation (`api.TransferContext` caches it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from harness import api

_ARM = Literal["baseline", "transfer", "random", "wrong_layer", "kv_only", "v_fires", "kv_nonrecursive"]
_DIFF = {"arm": _ARM, "reference": _ARM, "score": Literal["published", "novel_words"]}
SCHEMA = api.Schema(
    protocol={"late_layer": int, "early_layer": int, "window": int, "temperature": float, "max_new_tokens": int,
              "n_pairs": int, "pair_seed": int, "row_seed": int, "baseline_top_k": int, "batch_rows": int,
              "chat_template": bool, "bos": bool | None, "dtype": api.DType, "source_categories": list[str],
              "baseline_categories": list[str], "passage_category": str, "markers": list[str],
              "repetition_bonus": int, "repetition_min_words": int, "repetition_unique_ratio": float,
              "delta_ci_level": float, "score_at_least": list[int], "control_alpha": float,
              "sizes": dict[str, dict[str, int]]},
    controls={"layer_specific": _DIFF, "v_patch_contribution": _DIFF, "v_patch_fires": _DIFF,
              "recursive_source": _DIFF, "calibrated_score": _DIFF, "patch_fires": {}, "source_overlap": {},
              "layer_specificity_published": {}},
)
DELTA_ARMS = ("transfer", "random", "wrong_layer")  # each minus baseline, as published


def scores(ctx: api.TransferContext, runs: dict[str, api.SampledRun], kind: str) -> dict[str, list[float]]:
    """Per arm, one score per pair: `published` (substring markers + repetition bonus), `novel_words` (word
    markers absent from the pair's source prompt) or `overlap` (share of words found in the source prompt)."""
    p, sources = ctx.params, [s for s, _ in ctx.pairs()]

    def score(text: str, source: str) -> float:
        if kind == "published":
            return float(api.markers.substring_score(text, p["markers"], p["repetition_bonus"],
                                                     p["repetition_min_words"], p["repetition_unique_ratio"]))
        if kind == "novel_words":
            return float(api.markers.novel_markers(text, source, p["markers"]))
        return api.markers.source_overlap(text, source)

    return {arm: [score(g.source_completion, s) for g, s in zip(run.run.generations, sources, strict=True)]
            for arm, run in runs.items()}


def _one_sample(deltas: Sequence[float], level: float) -> dict[str, float]:
    """The source's delta statistics: mean, SD (ddof 1), ttest_1samp two-sided, d = mean / SD (ddof 0), and
    its t interval at `level`."""
    d = np.asarray(deltas, float)
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else float("nan")
    if d.size < 2 or not sd > 0:
        return {"mean": mean, "sd": sd, "t": float("nan"), "p": float("nan"), "d": 0.0,
                "ci_low": float("nan"), "ci_high": float("nan")}
    test = sps.ttest_1samp(d, 0.0)
    ci = test.confidence_interval(level)
    return {"mean": mean, "sd": sd, "t": float(test.statistic), "p": float(test.pvalue),
            "d": mean / float(d.std()), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def _student(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The source's comparison of two delta lists: ttest_ind (Student, two-sided); NaN without spread."""
    if min(len(a), len(b)) < 2 or not (np.std(a) > 0 or np.std(b) > 0):
        return float("nan"), float("nan")
    res = api.stats.student_t(a, b, "two-sided")
    return res.statistic, res.p_value


def _paths(runs: dict[str, api.SampledRun]) -> dict[str, Any]:
    return api.generation_paths([path for run in runs.values() for path in run.run.paths])


def _fires(runs: dict[str, api.SampledRun]) -> dict[str, Any]:
    """The persistent patch's hook calls and writes over the arms that carry it (W-A6)."""
    calls = {arm: api.patch_calls(runs[arm]) for arm in api.PERSISTENT_ARMS if arm in runs}
    by_len: dict[str, int] = {}
    for log in calls.values():
        for length, count in log["by_seq_len"].items():
            by_len[length] = by_len.get(length, 0) + count
    return {"persistent_patch_calls": sum(by_len.values()),
            "persistent_patch_writes": sum(log["edited"] for log in calls.values()),
            "persistent_patch_calls_longer_than_1": sum(c for k, c in by_len.items() if int(k) > 1),
            "calls_by_arm": calls}


def as_published(ctx: api.TransferContext, arms: Sequence[str] = api.TRANSFER_ARMS) -> dict[str, Any]:
    runs = ctx.run(arms)
    table = scores(ctx, runs, "published")
    deltas = {arm: [x - y for x, y in zip(table[arm], table["baseline"], strict=True)] for arm in DELTA_ARMS}
    tests = {arm: _one_sample(deltas[arm], ctx.params["delta_ci_level"]) for arm in DELTA_ARMS}
    observed: dict[str, Any] = {f"{arm}_mean": float(np.mean(table[arm])) for arm in table}
    for arm, name in (("transfer", "transfer"), ("random", "random"), ("wrong_layer", "wrong")):
        observed |= {f"delta_{name}": tests[arm]["mean"], f"t_{name}": tests[arm]["t"], f"p_{name}": tests[arm]["p"],
                     f"d_{name}": tests[arm]["d"]}
    observed["t_transfer_vs_random"], observed["p_transfer_vs_random"] = _student(deltas["transfer"], deltas["random"])
    observed["t_transfer_vs_wrong"], observed["p_transfer_vs_wrong"] = _student(deltas["transfer"],
                                                                                deltas["wrong_layer"])
    transfer = table["transfer"]
    observed |= {f"transfer_score_at_least_{k}": sum(s >= k for s in transfer) for k in ctx.params["score_at_least"]}
    observed |= {"transfer_score_zero": sum(s == 0 for s in transfer), "n_pairs": len(transfer)}
    fires = _fires(runs)
    observed |= {k: v for k, v in fires.items() if k != "calls_by_arm"}
    published = {k: v for k, v in ctx.claim.published.items() if isinstance(v, int | float)}
    data = {"pairs": _rows(ctx, runs, table), "patch_calls": fires["calls_by_arm"], "generation_paths": _paths(runs),
            "kv_transplant": _transplant(runs)}
    return api.protocol_result(ctx.claim, "as_published", "as_published", ctx.claim.criteria["as_published"],
                               observed, lm=ctx.lm, banks=(ctx.bank,), n={"pairs": len(transfer)},
                               tests={f"delta_{arm}": t for arm, t in tests.items()}, published=published,
                               data=data, notes=_size_note(ctx))


def _size_note(ctx: api.TransferContext) -> tuple[str, ...]:
    p, q = ctx.claim.protocol, ctx.params
    if (q["n_pairs"], q["max_new_tokens"]) == (p["n_pairs"], p["max_new_tokens"]):
        return ()
    return (f"sized for a protocol check on this model: {q['n_pairs']} pairs of {q['max_new_tokens']} tokens "
            f"(published: {p['n_pairs']} of {p['max_new_tokens']}; [protocol].sizes)",)


def _transplant(runs: dict[str, api.SampledRun]) -> dict[str, Any]:
    """Per arm with a KV transplant: positions written and the copied keys' RoPE offsets (T_b - T_s)."""
    out = {}
    for arm, run in runs.items():
        done = [r["cache"] for r in run.records if "cache" in r]
        if done:
            offsets = [o for d in done for o in d["rope_offset"]]
            out[arm] = {"mean_positions_written": float(np.mean([m for d in done for m in d["positions_written"]])),
                        "mean_abs_rope_offset": float(np.mean(np.abs(offsets))),
                        "pairs_with_rope_offset": sum(o != 0 for o in offsets),
                        "pairs_whole_prompt_replaced": sum(w for d in done for w in d["whole_prompt_replaced"])}
    return out


def _rows(ctx: api.TransferContext, runs: dict[str, api.SampledRun], table: dict[str, list[float]],
          ) -> list[dict[str, Any]]:
    """One row per pair: the prompts, and each arm's completion and published score."""
    return [{"source": s, "baseline": b,
             **{f"{arm}_text": runs[arm].run.generations[i].source_completion for arm in runs},
             **{f"{arm}_score": table[arm][i] for arm in runs}} for i, (s, b) in enumerate(ctx.pairs())]


def difference(ctx: api.TransferContext, name: str) -> dict[str, Any]:
    """A control: per pair, arm minus reference in the control's score, with its paired t interval."""
    control = ctx.claim.control(name)
    runs = ctx.run(api.TRANSFER_ARMS)
    table = scores(ctx, runs, control["score"])
    arm, ref = table[control["arm"]], table[control["reference"]]
    n = {"pairs": len(arm)}
    if len(arm) < 2:
        observed = {m: float("nan") for m in control["criterion"]} | n
        return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed,
                                   lm=ctx.lm, banks=(ctx.bank,), n=n, notes=("inconclusive: fewer than 2 pairs",))
    stated = api.paired_effect(api.EffectSpec.of(ctx.claim, name), arm, ref)
    same = sum(a.generated_ids == b.generated_ids for a, b in
               zip(runs[control["arm"]].run.generations, runs[control["reference"]].run.generations, strict=True))
    observed = {**stated.observed, "arm_mean": float(np.mean(arm)), "reference_mean": float(np.mean(ref)),
                "identical_generations": same, **n}
    return api.protocol_result(ctx.claim, f"control:{name}", "control", control["criterion"], observed, lm=ctx.lm,
                               banks=(ctx.bank,), n=n, effect=stated.effect, n_needed=stated.n_needed,
                               data={"generation_paths": _paths(runs)}, notes=_size_note(ctx))


def patch_fires(ctx: api.TransferContext) -> dict[str, Any]:
    runs = ctx.run(api.TRANSFER_ARMS)
    fires = _fires(runs)
    prefill = api.patch_calls(runs["v_fires"], phase="prefill")
    observed = {**{k: v for k, v in fires.items() if k != "calls_by_arm"},
                "v_fires_prefill_writes": prefill["edited"]}
    return api.protocol_result(ctx.claim, "robustness:patch_fires", "robustness",
                               ctx.claim.control("patch_fires")["criterion"], observed, lm=ctx.lm, banks=(ctx.bank,),
                               n={"pairs": ctx.params["n_pairs"]}, data={"calls_by_arm": fires["calls_by_arm"]})


def source_overlap(ctx: api.TransferContext) -> dict[str, Any]:
    runs = ctx.run(api.TRANSFER_ARMS)
    table = scores(ctx, runs, "overlap")
    diffs = [a - b for a, b in zip(table["transfer"], table["random"], strict=True)]
    interval = api.stats.mean_ci(diffs, 1 - 2 * ctx.params["control_alpha"]) if len(diffs) >= 2 else None
    observed = {"overlap_increase": float(np.mean(diffs)),
                "overlap_increase_ci_low": interval.low if interval else float("nan"),
                "overlap_increase_ci_high": interval.high if interval else float("nan"),
                **{f"overlap_{arm}": float(np.mean(v)) for arm, v in table.items()}}
    return api.protocol_result(ctx.claim, "robustness:source_overlap", "robustness",
                               ctx.claim.control("source_overlap")["criterion"], observed, lm=ctx.lm,
                               banks=(ctx.bank,), n={"pairs": len(diffs)})


PROTOCOLS: dict[str, Any] = {
    "as_published": as_published,
    **{f"control:{name}": (lambda ctx, name=name: difference(ctx, name))
       for name in ("layer_specific", "v_patch_contribution", "v_patch_fires", "recursive_source", "calibrated_score")},
    "robustness:patch_fires": patch_fires,
    "robustness:source_overlap": source_overlap,
}


# --- the published summary alone ---------------------------------------------------------------------------


def rederive(claim: api.Claim) -> dict[str, Any]:
    """t, CI and d from the published means and SDs (n pairs), p from the published t, deltas from the means."""
    pub = claim.published
    n = pub["n_pairs"]
    root = math.sqrt(n)
    t_from = {"transfer": pub["delta_transfer"] / (pub["delta_transfer_sd"] / root),
              "random": pub["delta_random"] / (pub["delta_random_sd"] / root),
              "wrong": pub["delta_wrong"] / (pub["delta_wrong_sd"] / root),
              "transfer_vs_random": _student_from(pub, "random"), "transfer_vs_wrong": _student_from(pub, "wrong")}
    half = sps.t.ppf((1 + claim.protocol["delta_ci_level"]) / 2, n - 1) * pub["delta_transfer_sd"] / root
    ci = (pub["delta_transfer"] - half, pub["delta_transfer"] + half)
    d_from = {k: pub[f"delta_{k}"] / pub[f"delta_{k}_sd"] for k in ("transfer", "random", "wrong")}
    p_from = {k: 2 * sps.t.sf(abs(pub[f"t_{k}"]), n - 1) for k in ("transfer", "random", "wrong")}
    means = {"transfer": pub["transfer_mean"], "random": pub["random_mean"], "wrong": pub["wrong_layer_mean"]}
    observed = {
        "t_max_abs_error": max(abs(t_from[k] - pub[f"t_{k}"]) for k in t_from),
        "ci_max_abs_error": max(abs(a - b) for a, b in zip(ci, pub["delta_transfer_ci"], strict=True)),
        "d_max_abs_error": max(abs(d_from[k] - pub[f"d_{k}"]) for k in d_from),
        "log10_p_max_abs_error": max(abs(math.log10(p_from[k]) - math.log10(pub[f"p_{k}"])) for k in p_from),
        "delta_from_means_max_abs_error": max(abs(means[k] - pub["baseline_mean"] - pub[f"delta_{k}"]) for k in means),
    }
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               data={"t": t_from, "ci": ci, "d": d_from, "p": p_from}, n={"pairs": n},
                               notes=("the per-pair CSV was not committed: the summary is checked against itself",))


def _student_from(pub: dict[str, Any], other: str) -> float:
    """The source's ttest_ind of transfer deltas against another arm's, from their published means and SDs."""
    res = sps.ttest_ind_from_stats(pub["delta_transfer"], pub["delta_transfer_sd"], pub["n_pairs"],
                                   pub[f"delta_{other}"], pub[f"delta_{other}_sd"], pub["n_pairs"])
    return float(res.statistic)


def layer_specificity_published(claim: api.Claim) -> dict[str, Any]:
    """The published transfer vs wrong-layer comparison as an effect: their delta difference with its 90%
    interval from the published SDs, beside the transfer effect it would have to match."""
    pub = claim.published
    n = pub["n_pairs"]
    diff = pub["delta_transfer"] - pub["delta_wrong"]
    se = math.sqrt((pub["delta_transfer_sd"] ** 2 + pub["delta_wrong_sd"] ** 2) / n)
    half = sps.t.ppf(1 - claim.protocol["control_alpha"], 2 * n - 2) * se
    observed = {"p_transfer_vs_wrong": pub["p_transfer_vs_wrong"], "transfer_minus_wrong": diff,
                "transfer_minus_wrong_ci_low": diff - half, "transfer_minus_wrong_ci_high": diff + half,
                "transfer_effect": pub["delta_transfer"],
                "share_of_transfer_effect_at_ci_high": (diff + half) / pub["delta_transfer"]}
    return api.protocol_result(claim, "robustness:layer_specificity_published", "robustness",
                               claim.control("layer_specificity_published")["criterion"], observed,
                               n={"pairs": n}, notes=("the effect is not specific to layer 27 in the source's own "
                                                      "figures: see control:layer_specific for the run",))


REDERIVATIONS = {"rederive": rederive, "robustness:layer_specificity_published": layer_specificity_published}
