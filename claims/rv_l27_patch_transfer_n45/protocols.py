"""The L27 "causal transfer" (claims-spec A.7.1) as coded, its circularity (W-A4) and the controls that expose it.

As coded: on each baseline prompt's forward, the L27 v_proj output's last W = min(16, T_base, T_src) rows are
replaced by the paired recursive prompt's last rows, and PR27 is read from that patched output. The source's
own controls run beside it, as coded: a norm-matched Gaussian source (Frobenius norm of all source rows), the
source rows permuted before the last W are taken, and the L21 rows patched AND measured at L21. Pairs are built
as the source built them (recursive group x baseline group, by index; baselines under 16 tokens dropped; seeded
shuffle; the first 45), and every exclusion and the reuse of baselines is counted.

Controls: the same patch measured downstream (v_proj at L28-31, which the patch never writes): the transfer in
the units of the published 117.8%; and the shuffle done within the window, whose effect on PR is exactly zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import t as stats_t

from harness import api

SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer": int, "wrong_layer": int, "downstream_layers": list[int],
              "site": str, "window": int, "min_baseline_tokens": int, "max_pairs": int, "pair_seed": int,
              "recursive_groups": list[str], "baseline_groups": list[str], "chat_template": bool, "bos": bool,
              "dtype": Literal["float16", "bfloat16", "float32"], "control_alpha": float, "n_resamples": int},
    controls={"downstream": {}, "shuffle_within_window": {}},
)


@dataclass(frozen=True)
class Pair:
    recursive: str
    baseline: str
    recursive_group: str
    baseline_group: str


class Context(api.ModelContext):
    def site(self, published: int) -> str:
        return f"blocks.{self.layer(published)}.{self.claim.protocol['site']}"



def candidate_pairs(ctx: Context) -> tuple[list[Pair], Counter[str]]:
    """The source's candidates, in its order: (recursive group x baseline group) by index up to the shorter
    group, a pair kept only when its baseline has at least min_baseline_tokens tokens (BOS included)."""
    p = ctx.claim.protocol
    candidates: list[Pair] = []
    excluded: Counter[str] = Counter()
    for rec_group in p["recursive_groups"]:
        recursive = ctx.bank.category(rec_group)
        for base_group in p["baseline_groups"]:
            baselines = ctx.bank.category(base_group)
            n = min(len(recursive), len(baselines))
            counts = api.token_counts(ctx.lm, baselines[:n], ctx.fmt)
            for i in range(n):
                if counts[i] >= p["min_baseline_tokens"]:
                    candidates.append(Pair(recursive[i], baselines[i], rec_group, base_group))
                else:
                    excluded["baseline_shorter_than_min_tokens"] += 1
    return candidates, excluded


def build_pairs(ctx: Context) -> tuple[list[Pair], Counter[str], int]:
    """The candidates shuffled as the source did (np.random.seed(pair_seed); np.random.shuffle: the legacy
    generator, here a RandomState of its own), then the first max_pairs. Returns the pairs, the exclusions by
    reason and the number of candidates."""
    p = ctx.claim.protocol
    candidates, excluded = candidate_pairs(ctx)
    np.random.RandomState(p["pair_seed"]).shuffle(candidates)  # type: ignore[arg-type]
    excluded["beyond_max_pairs"] = max(len(candidates) - p["max_pairs"], 0)
    return candidates[: p["max_pairs"]], excluded, len(candidates)


def _random_like(rows: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The source's random control: Gaussian rows scaled to the Frobenius norm of the whole source (seeded)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for src in rows:
        noise = torch.randn(src.shape, generator=gen, dtype=torch.float32)
        out.append((noise * (src.float().norm().cpu() / noise.norm())).to(src.device, src.dtype))
    return out


def _permuted(rows: list[torch.Tensor], seed: int, last: list[int] | None = None) -> list[torch.Tensor]:
    """Rows permuted (seeded): all of each source as the source did, or only its `last[i]` rows (within the
    window the patch writes)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i, src in enumerate(rows):
        kept = src if last is None else src[src.shape[0] - last[i] :]
        out.append(kept[torch.randperm(kept.shape[0], generator=gen).to(src.device)])
    return out


@dataclass(frozen=True)
class Runs:
    """Every measurement of the 45 pairs, per pair (tensors of (n_pairs,) on the CPU)."""

    pairs: list[Pair]
    excluded: dict[str, int]
    candidates: int
    rec: api.PRRun  # recursive prompt of each pair, unpatched
    base: api.PRRun  # baseline of each pair, unpatched
    patched: dict[str, api.PRRun]  # main, random, shuffled_source, shuffled_within, wrong_layer
    written: list[int]  # rows the patch wrote per pair: min(W, T_base, T_src)


def measure(ctx: Context) -> Runs:
    return ctx.cached("runs", lambda: _measure(ctx))


def _measure(ctx: Context) -> Runs:
    p = ctx.claim.protocol
    pairs, excluded, candidates = build_pairs(ctx)
    early, late, wrong = ctx.site(p["early_layer"]), ctx.site(p["late_layer"]), ctx.site(p["wrong_layer"])
    down = downstream_sites(ctx)
    window = api.Window(p["window"])
    sites = list(dict.fromkeys([early, wrong, late, *down]))
    rec_prompts, base_prompts = [x.recursive for x in pairs], [x.baseline for x in pairs]
    run = {"batch_size": ctx.batch_size, "fmt": ctx.fmt}
    rec = api.measure_pr(ctx.lm, rec_prompts, sites, window, **run)
    base = api.measure_pr(ctx.lm, base_prompts, sites, window, **run)
    rows = api.full_rows(ctx.lm, list(dict.fromkeys(rec_prompts)), list(dict.fromkeys([late, wrong])), **run)
    index = {prompt: i for i, prompt in enumerate(dict.fromkeys(rec_prompts))}
    src = {s: [rows[s][index[x]] for x in rec_prompts] for s in rows}
    written = [min(p["window"], tb, ts.shape[0]) for tb, ts in zip(base.lengths, src[late], strict=True)]
    arms = {"main": (late, src[late]), "random": (late, _random_like(src[late], ctx.seed)),
            "shuffled_source": (late, _permuted(src[late], ctx.seed)),
            "shuffled_within": (late, _permuted(src[late], ctx.seed, written)),
            "wrong_layer": (wrong, src[wrong])}
    patched = {name: api.measure_pr(ctx.lm, base_prompts,
                                    list(dict.fromkeys([early, at, *(down if name == "main" else [])])), window,
                                    api.rows_patched(ctx.lm, at, sources, p["window"]), **run)
               for name, (at, sources) in arms.items()}
    return Runs(pairs, dict(excluded), candidates, rec, base, patched, written)


def downstream_sites(ctx: Context) -> list[str]:
    """v_proj sites after the patched layer (published 28-31 by relative depth; none on a model too shallow)."""
    late = ctx.layer(ctx.claim.protocol["late_layer"])
    layers = sorted({ctx.layer(x) for x in ctx.claim.protocol["downstream_layers"]} - set(range(late + 1)))
    return [f"blocks.{layer}.{ctx.claim.protocol['site']}" for layer in layers]


@dataclass(frozen=True)
class Deltas:
    """R_V per pair for every arm, as the source defined them, and the deltas against the unpatched baseline."""

    rv_rec: np.ndarray
    rv_base: np.ndarray
    rv: dict[str, np.ndarray]  # arm -> R_V of the patched run (wrong_layer: PR21 / PR5, as coded)
    delta: dict[str, np.ndarray]
    keep: np.ndarray  # pairs with every value finite


def deltas(ctx: Context, runs: Runs) -> Deltas:
    p = ctx.claim.protocol
    early, late, wrong = ctx.site(p["early_layer"]), ctx.site(p["late_layer"]), ctx.site(p["wrong_layer"])
    rv_rec, rv_base = runs.rec.ratio([late], early).numpy(), runs.base.ratio([late], early).numpy()
    rv = {name: run.ratio([wrong if name == "wrong_layer" else late], early).numpy()
          for name, run in runs.patched.items()}
    stacked = np.stack([rv_rec, rv_base, *rv.values()])
    keep = np.isfinite(stacked).all(0)
    return Deltas(rv_rec[keep], rv_base[keep], {k: v[keep] for k, v in rv.items()},
                  {k: v[keep] - rv_base[keep] for k, v in rv.items()}, keep)


def _reuse(pairs: list[Pair]) -> dict[str, Any]:
    uses = Counter(x.baseline for x in pairs)
    return {"distinct_baselines": len(uses), "max_baseline_uses": max(uses.values(), default=0),
            "distinct_recursive": len({x.recursive for x in pairs}),
            "pairs_by_baseline_group": dict(Counter(x.baseline_group for x in pairs))}


def _main_tests(d: Deltas) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source's statistics: one-sample t (less), d = mean / sd, paired t of main against each control."""
    main = d.delta["main"]
    one = api.stats.paired_t(d.rv["main"], d.rv_base, "less")
    sd = float(np.std(main, ddof=1))
    observed = {"delta_main": float(main.mean()), "delta_main_sd": sd, "t": one.statistic, "p_value": one.p_value,
                "cohens_d": float(main.mean() / sd) if sd > 0 else float("nan"),
                "rv_recursive_mean": float(d.rv_rec.mean()), "rv_baseline_mean": float(d.rv_base.mean()),
                "rv_patched_mean": float(d.rv["main"].mean()),
                "natural_gap": float(d.rv_rec.mean() - d.rv_base.mean())}
    observed["transfer_efficiency"] = observed["delta_main"] / observed["natural_gap"]
    tests: dict[str, Any] = {"ttest_1samp_less": one.as_dict()}
    for name in ("random", "shuffled_source", "wrong_layer"):
        observed[f"delta_{name}"] = float(d.delta[name].mean())
        rel = api.stats.paired_t(main, d.delta[name], "two-sided")
        observed[f"t_main_vs_{name}"] = rel.statistic
        tests[f"ttest_rel_main_vs_{name}"] = rel.as_dict()
    return observed, tests


def as_published(ctx: Context) -> dict[str, Any]:
    runs = measure(ctx)
    d = deltas(ctx, runs)
    if d.keep.sum() < 2:
        return _inconclusive(ctx, "as_published", ctx.claim.criteria["as_published"], runs, d,
                             f"{int(d.keep.sum())} pairs with finite R_V; the t-test needs 2")
    observed, tests = _main_tests(d)
    observed.update(_circularity(ctx, runs, d))
    kept = [x for x, k in zip(runs.pairs, d.keep, strict=True) if k]
    by_baseline = [float(np.mean([v for x, v in zip(kept, d.delta["main"], strict=True) if x.baseline == b]))
                   for b in dict.fromkeys(x.baseline for x in kept)]
    if len(by_baseline) >= 2:  # the pairs share baselines: the same test with one mean delta per baseline
        clustered = api.stats.paired_t(by_baseline, [0.0] * len(by_baseline), "less")
        observed.update(t_by_baseline=clustered.statistic, p_value_by_baseline=clustered.p_value)
        tests["ttest_1samp_less_by_baseline"] = clustered.as_dict()
    for group in ctx.claim.protocol["recursive_groups"]:
        rows = [i for i, x in enumerate(kept) if x.recursive_group == group]
        observed[f"delta_main_{group}"] = float(d.delta["main"][rows].mean()) if rows else float("nan")
    return _result(ctx, "as_published", "as_published", ctx.claim.criteria["as_published"], observed, runs, d,
                   tests=tests, data={"pairs": _rows(runs, d)})


def _circularity(ctx: Context, runs: Runs, d: Deltas) -> dict[str, Any]:
    """W-A4 made visible: where the patch wrote the whole measured window, PR27_patched equals PR27 of the
    source, and R_V_patched equals PR27_rec / PR5_base."""
    p = ctx.claim.protocol
    late, early = ctx.site(p["late_layer"]), ctx.site(p["early_layer"])
    whole = np.array([w >= min(p["window"], t) for w, t in zip(runs.written, runs.base.lengths, strict=True)])
    whole = whole & d.keep
    pr_patched, pr_rec = runs.patched["main"].pr[late].numpy(), runs.rec.pr[late].numpy()
    predicted = pr_rec / runs.base.pr[early].numpy()
    gap = np.abs(pr_patched - pr_rec)[whole]
    return {"pairs_window_fully_patched": int(whole.sum()),
            "circular_pr_max_abs_diff": float(gap.max()) if gap.size else float("nan"),
            "circular_rv_max_abs_diff": float(np.abs(runs.patched["main"].ratio([late], early).numpy()
                                                     - predicted)[whole].max()) if gap.size else float("nan"),
            "pr5_patch_run_max_abs_diff": float((runs.patched["main"].pr[early] - runs.base.pr[early])
                                                .abs().max())}


def _rows(runs: Runs, d: Deltas) -> list[dict[str, Any]]:
    kept = [(x, t, w) for x, t, w, k in zip(runs.pairs, runs.base.lengths, runs.written, d.keep, strict=True) if k]
    return [{"prompt": x.baseline, "source": x.recursive, "recursive_group": x.recursive_group,
             "baseline_group": x.baseline_group, "tokens": t, "rows_patched": w, "r_v": float(d.rv_base[i]),
             "r_v_recursive": float(d.rv_rec[i]), **{f"delta_{k}": float(v[i]) for k, v in d.delta.items()}}
            for i, (x, t, w) in enumerate(kept)]


def _result(ctx: Context, protocol: str, kind: str, criterion: dict[str, Any], observed: dict[str, Any],
            runs: Runs, d: Deltas, **extra: Any) -> dict[str, Any]:
    published = {k: v for k, v in ctx.claim.published.items() if isinstance(v, int | float)}
    exclusions = {**runs.excluded, "non_finite_r_v": int((~d.keep).sum())}
    notes = (*extra.pop("notes", ()),
             f"{runs.candidates} candidate pairs, {len(runs.pairs)} kept; baselines reused: "
             f"{_reuse(runs.pairs)}")
    return api.protocol_result(ctx.claim, protocol, kind, criterion, {**observed, **_reuse(runs.pairs)},
                               lm=ctx.lm, banks=(ctx.bank,), n={"pairs": int(d.keep.sum())},
                               exclusions={k: v for k, v in exclusions.items() if v}, published=published,
                               notes=notes, **extra)


def _inconclusive(ctx: Context, protocol: str, criterion: dict[str, Any], runs: Runs, d: Deltas,
                  why: str) -> dict[str, Any]:
    observed = {m: float("nan") for m in criterion}
    kind = "as_published" if protocol == "as_published" else protocol.partition(":")[0]
    return _result(ctx, protocol, kind, criterion, observed, runs, d, notes=(f"inconclusive: {why}",))


def downstream(ctx: Context) -> dict[str, Any]:
    """The patch measured where it writes nothing: transfer at v_proj L28-31 against the natural gap there."""
    name, criterion = "control:downstream", ctx.claim.control("downstream")["criterion"]
    runs, sites = measure(ctx), downstream_sites(ctx)
    d = deltas(ctx, runs)
    if not sites or d.keep.sum() < 2:
        return _inconclusive(ctx, name, criterion, runs, d, "no layer after the patched one on this model"
                             if not sites else f"{int(d.keep.sum())} pairs with finite R_V, need 2")
    early = ctx.site(ctx.claim.protocol["early_layer"])
    rvd = {key: run.ratio(sites, early).numpy()[d.keep] for key, run in
           (("rec", runs.rec), ("base", runs.base), ("patched", runs.patched["main"]))}
    delta, gap = rvd["patched"] - rvd["base"], rvd["rec"] - rvd["base"]
    spec = api.EffectSpec.of(ctx.claim, "downstream")
    clusters = [x.baseline for x, k in zip(runs.pairs, d.keep, strict=True) if k]
    interval = api.stats.ratio_of_means_ci(delta, gap, spec.confidence, ctx.claim.protocol["n_resamples"],
                                           ctx.seed, clusters)
    stated = api.interval_effect(spec, interval, interval.se * np.sqrt(len(set(clusters))), paired=True)
    observed = {**stated.observed, "delta_downstream": float(delta.mean()), "gap_downstream": float(gap.mean()),
                "transfer_efficiency_circular": float(d.delta["main"].mean() / (d.rv_rec - d.rv_base).mean()),
                "downstream_sites": len(sites)}
    notes = (f"measured at {', '.join(sites)} (published layers {ctx.claim.protocol['downstream_layers']} by "
             "relative depth)",)
    if not np.isfinite(interval.low):
        notes = (*notes, "inconclusive: the natural gap downstream (recursive - baseline) is not distinguishable "
                 "from 0, so the transfer it divides is unbounded")
    return _result(ctx, name, "control", criterion, observed, runs, d, effect=stated.effect,
                   n_needed=stated.n_needed, tests={"cluster_bootstrap_ratio": interval.as_dict()}, notes=notes)


def shuffle_within_window(ctx: Context) -> dict[str, Any]:
    """The patched rows permuted within the window: PR cannot see the order, so the effect is exactly zero."""
    name, criterion = "control:shuffle_within_window", ctx.claim.control("shuffle_within_window")["criterion"]
    runs = measure(ctx)
    d = deltas(ctx, runs)
    if d.keep.sum() < 2:
        return _inconclusive(ctx, name, criterion, runs, d, f"{int(d.keep.sum())} pairs with finite R_V, need 2")
    stated = api.paired_effect(api.EffectSpec.of(ctx.claim, "shuffle_within_window"), d.delta["main"],
                               d.delta["shuffled_within"])
    source_order = d.delta["main"] - d.delta["shuffled_source"]
    observed = {**stated.observed, "delta_main": float(d.delta["main"].mean()),
                "delta_shuffled_within": float(d.delta["shuffled_within"].mean()),
                "max_abs_main_minus_shuffled_within": float(np.abs(d.delta["main"] - d.delta["shuffled_within"])
                                                            .max()),
                "order_effect_source_shuffle": float(source_order.mean())}
    tests = {"ttest_rel_main_vs_shuffled_within": api.stats.paired_t(d.delta["main"], d.delta["shuffled_within"],
                                                                    "two-sided").as_dict()}
    return _result(ctx, name, "control", criterion, observed, runs, d, effect=stated.effect,
                   n_needed=stated.n_needed, tests=tests)


def _half_unit(value: float) -> float:
    """Half a unit of the last decimal the figure was published with (0.066 -> 0.0005)."""
    exponent = int(Decimal(repr(value)).as_tuple().exponent)
    return float(Decimal(1).scaleb(exponent) / 2)


def _rounding_range(f: Callable[[float, float], float], a: float, b: float) -> tuple[float, float]:
    """The range of f over the box of values that round to the published a and b (f monotone in each)."""
    corners = [f(a + i * _half_unit(a), b + j * _half_unit(b)) for i in (-1, 1) for j in (-1, 1)]
    return min(corners), max(corners)


def _within(value: float, bounds: tuple[float, float]) -> float:
    return float(bounds[0] <= value <= bounds[1])


def rederive(claim: api.Claim) -> dict[str, Any]:
    """t = mean / sd * sqrt(n) and d = mean / sd from the published summary, against the published t and d,
    the transfer against the gap, and the canonical rerun's t; p from each t at df = n - 1."""
    pub = claim.published
    n = pub["n_pairs"]
    root = float(np.sqrt(n))
    t_range = _rounding_range(lambda m, s: m / s * root, pub["delta_main"], pub["delta_main_sd"])
    d_range = _rounding_range(lambda m, s: m / s, pub["delta_main"], pub["delta_main_sd"])
    transfer = _rounding_range(lambda m, g: m / g, pub["delta_main"], pub["natural_gap"])
    canonical = _rounding_range(lambda m, s: m / s * root, pub["canonical_delta_main"],
                                pub["canonical_delta_main_sd"])
    wrong_p = float(2 * stats_t.sf(abs(pub["t_wrong_layer"]), n - 1))
    observed = {
        "t": pub["delta_main"] / pub["delta_main_sd"] * root, "t_range_low": t_range[0], "t_range_high": t_range[1],
        "t_within_rounding": _within(pub["t"], t_range), "cohens_d": pub["delta_main"] / pub["delta_main_sd"],
        "d_within_rounding": _within(pub["cohens_d"], d_range),
        "transfer_efficiency": pub["delta_main"] / pub["natural_gap"],
        "transfer_within_rounding": _within(pub["transfer_efficiency"], transfer),
        "canonical_t": pub["canonical_delta_main"] / pub["canonical_delta_main_sd"] * root,
        "canonical_t_within_rounding": _within(pub["canonical_t"], canonical),
        "p_from_published_t": float(stats_t.cdf(pub["t"], n - 1)),
        "canonical_p_from_t": float(stats_t.cdf(pub["canonical_t"], n - 1)),
        "canonical_transfer": pub["canonical_delta_main"] / (pub["canonical_rv_recursive_mean"]
                                                             - pub["canonical_rv_baseline_mean"]),
        "wrong_layer_p_from_t_two_sided": wrong_p,
        "wrong_layer_t_from_p_two_sided": float(stats_t.isf(pub["p_wrong_layer"] / 2, n - 1)),
        "shuffled_reduction": 1 - pub["delta_shuffled"] / pub["delta_main"],
    }
    notes = (f"wrong layer: t = {pub['t_wrong_layer']} at df = {n - 1} gives two-sided p = {wrong_p:.2g}, not "
             f"{pub['p_wrong_layer']}; p = {pub['p_wrong_layer']} needs |t| = "
             f"{observed['wrong_layer_t_from_p_two_sided']:.2f}: the two published figures disagree",
             f"shuffled: 1 - {pub['delta_shuffled']} / {pub['delta_main']} = {observed['shuffled_reduction']:.3f}, "
             f"published as a {pub['shuffled_reduction']:.0%} reduction",
             "the canonical rerun's n is taken as 45: its t and p agree at df = 44")
    published = {k: pub[k] for k in ("t", "cohens_d", "transfer_efficiency", "canonical_t", "canonical_p_value",
                                     "canonical_transfer", "p_wrong_layer", "shuffled_reduction")}
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               published=published, n={"pairs": n}, notes=notes)


Protocol = Callable[[Context], dict[str, Any]]
PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:downstream": downstream,
    "control:shuffle_within_window": shuffle_within_window,
}
