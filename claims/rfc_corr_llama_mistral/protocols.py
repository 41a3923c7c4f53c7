"""The Llama-Mistral correlation of per-layer dRFC (claims-spec B.2 (c), B.3, W-B6), judged on the published tables.

Every protocol reads the two `detailed_comparison` tables the source committed (and its results files), through
`api.verified_table`, so a missing or altered table is an error. The source's test treats the 32 layers as
independent; neighbouring layers are alike, so its p is too small. The control states r with an interval from a
circular block bootstrap (pairs of layers resampled in runs), against the published r; the robustness checks give
the layer-aware p-values, the iid test's false-positive rate on misaligned copies of the same profiles, the
interval at other block lengths, and where the README body's stale figure came from.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness import api

SCHEMA = api.Schema(
    protocol={"column": str, "pair": str, "families": list[str], "alpha": float, "threshold": float,
              "control_alpha": float, "block_length": int, "block_lengths": list[int], "n_resamples": int,
              "n_permutations": int, "seed": int, "power": float},
    controls={"layer_autocorrelation": {"review_decision": Literal["pass", "fail", "underpowered"]},
              "autocorrelation_nulls": {}, "block_length_sweep": {}, "readme_body_figure": {}},
)


@dataclass(frozen=True)
class Tables:
    """The claim and the two published per-layer profiles, (layer,) each, in the families' order."""

    claim: api.Claim
    folder: Path
    first: np.ndarray
    second: np.ndarray

    @classmethod
    def of(cls, claim: api.Claim, folder: Path) -> Tables:
        column = str(claim.protocol["column"])
        return cls(claim, folder, profile(folder, str(claim.published["data_file"]), column),
                   profile(folder, str(claim.published["other_data_file"]), column))

    def results_file(self, key: str) -> dict[str, Any]:
        """A results file the source wrote (JSON), named by [published].<key>."""
        path = api.verified_table(self.folder, str(self.claim.published[key]))
        return dict(json.loads(path.read_text(encoding="utf-8")))

    @property
    def p(self) -> Mapping[str, Any]:
        return self.claim.protocol


def profile(folder: Path, name: str, column: str) -> np.ndarray:
    """One column of a published per-layer table, in layer order."""
    path = api.verified_table(folder, name)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or column not in rows[0]:
        raise api.PublishedDataError(f"{path}: no column {column!r} ([protocol].column); columns: "
                                     f"{', '.join(rows[0]) if rows else 'none (empty table)'}")
    return np.array([float(row[column]) for row in rows])


def _result(t: Tables, protocol: str, kind: str, criterion: Mapping[str, Any], observed: Mapping[str, Any],
            **extra: Any) -> dict[str, Any]:
    published = {k: v for k, v in t.claim.published.items() if isinstance(v, int | float)}
    return api.protocol_result(t.claim, protocol, kind, dict(criterion), observed, published=published,
                               n={"layers": int(t.first.size)}, **extra)


def as_published(t: Tables) -> dict[str, Any]:
    """The source's test: scipy's Pearson r over the layers with its iid p (and Spearman beside it)."""
    corr = api.correlate_profiles(t.first, t.second, t.p["block_length"], t.p["n_permutations"], t.p["seed"])
    observed = {"pearson_r": corr.pearson_r, "pearson_p_iid": corr.pearson_p, "spearman_rho": corr.spearman_rho,
                "spearman_p_iid": corr.spearman_p}
    return _result(t, "as_published", "as_published", t.claim.criteria["as_published"], observed,
                   tests={"pearson": "scipy.stats.pearsonr (two-sided, iid layers)"},
                   notes=("the source's test on its published tables: no model runs",))


def summary(values: np.ndarray, threshold: float) -> dict[str, float]:
    """The source's per-family summary of a dRFC profile (np.std with ddof 0; counts are thresholds, W-B5)."""
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "positive_count": int((values > 0).sum()),
            "negative_count": int((values < 0).sum()), "significant_positive": int((values > threshold).sum()),
            "significant_negative": int((values < -threshold).sum()),
            "near_zero": int((np.abs(values) <= threshold).sum()), "total_layers": int(values.size)}


def _results_file_error(t: Tables, corr: api.ProfileCorrelation) -> tuple[float, list[str]]:
    """The largest gap between the source's results file and the same figures from the tables, and its keys."""
    saved = t.results_file("results_file")
    ours = {"pearson_r": corr.pearson_r, "pearson_p": corr.pearson_p, "spearman_r": corr.spearman_rho,
            "spearman_p": corr.spearman_p, "layers_compared": corr.n_layers}
    gaps = {f"correlations.{t.p['pair']}.{k}": abs(v - saved["correlations"][t.p["pair"]][k])
            for k, v in ours.items()}
    for family, values in zip(t.p["families"], (t.first, t.second), strict=True):
        gaps |= {f"summary_stats.{family}.{k}": abs(v - saved["summary_stats"][family][k])
                 for k, v in summary(values, t.p["threshold"]).items()}
    return max(gaps.values()), sorted(gaps)


def rederive(t: Tables) -> dict[str, Any]:
    """The published r, p and Spearman rho from the tables, and the source's results file figure by figure."""
    pub = t.claim.published
    corr = api.correlate_profiles(t.first, t.second, t.p["block_length"], t.p["n_permutations"], t.p["seed"])
    worst, keys = _results_file_error(t, corr)
    observed = {"pearson_r": corr.pearson_r, "pearson_p": corr.pearson_p, "spearman_rho": corr.spearman_rho,
                "pearson_r_abs_error": abs(corr.pearson_r - pub["pearson_r"]),
                "pearson_p_abs_error": abs(corr.pearson_p - pub["pearson_p"]),
                "spearman_rho_abs_error": abs(corr.spearman_rho - pub["spearman_rho"]),
                "results_file_max_abs_error": worst, "results_file_figures_compared": len(keys)}
    return _result(t, "rederive", "rederive", t.claim.criteria["rederive"], observed,
                   notes=(f"{pub['results_file']} compared figure by figure: {', '.join(keys)}",))


def _bootstrap(t: Tables, block: int) -> api.BootstrapR:
    return api.block_bootstrap_r(t.first, t.second, block, 1 - 2 * t.p["control_alpha"], t.p["n_resamples"],
                                 t.p["seed"])


def layer_autocorrelation(t: Tables) -> dict[str, Any]:
    """r with its circular block-bootstrap CI against the published r; n_needed in layers of this dependence."""
    name = "layer_autocorrelation"
    spec = api.EffectSpec.of(t.claim, name)
    block, iid = _bootstrap(t, t.p["block_length"]), _bootstrap(t, 1)
    design_effect = (block.interval.se / iid.interval.se) ** 2
    stated = api.interval_effect(spec, block.interval, sd=math.nan)
    independent = api.fisher_n_for_power(spec.published, t.p["control_alpha"], t.p["power"])
    n_needed = math.ceil(independent * design_effect) if independent is not None else None
    observed = {**stated.observed, "design_effect": design_effect, "pearson_r_ci_low_iid": iid.interval.low,
                "degenerate_draws": block.degenerate}
    notes = (f"circular block bootstrap, blocks of {block.block_length} layers, {block.n_resamples} draws "
             f"(seed {t.p['seed']}); the iid pairs bootstrap gives [{iid.interval.low:.3f}, "
             f"{iid.interval.high:.3f}]",
             f"n_needed counts layers with this autocorrelation: {independent} independent layers for a one-sided "
             f"test at r = {spec.published:g}, times the design effect {design_effect:.2f}; one model has "
             f"{t.first.size}, so more layers cannot decide it",
             "split-half reliability of each profile (W-B6) is not derivable here: the published tables hold "
             "per-layer, head-level statistics only")
    return _result(t, api.protocol_of(t.claim, name), "control", t.claim.control(name)["criterion"], observed,
                   effect=stated.effect, n_needed=n_needed,
                   tests={"block_bootstrap": block.interval.as_dict(), "iid_bootstrap": iid.interval.as_dict()},
                   notes=notes)


def autocorrelation_nulls(t: Tables) -> dict[str, Any]:
    """The layer-aware p-values of r, and the iid test's false-positive rate on misaligned profiles."""
    name = "autocorrelation_nulls"
    corr = api.correlate_profiles(t.first, t.second, t.p["block_length"], t.p["n_permutations"], t.p["seed"])
    rejected, arrangements = api.misaligned_iid_rejections(t.first, t.second, t.p["block_length"], t.p["alpha"])
    observed = {"pearson_r": corr.pearson_r, "pearson_p_iid": corr.pearson_p,
                "pearson_p_circular_shift": corr.shift_p, "pearson_p_block_permutation": corr.block_p,
                "iid_false_positive_rate_misaligned": rejected / arrangements, "misaligned_arrangements": arrangements}
    notes = (f"scipy's iid p < {t.p['alpha']:g} for {rejected} of {arrangements} rotations of the second profile "
             f"by {t.p['block_length']} to {t.first.size - t.p['block_length']} layers (misaligned on purpose); "
             f"with independent layers about {t.p['alpha']:g} of them would be",)
    return _result(t, api.protocol_of(t.claim, name), "robustness", t.claim.control(name)["criterion"], observed,
                   tests={"circular_shift": {"arrangements": corr.n_layers},
                          "block_permutation": {"block_length": corr.block_length,
                                                "n_permutations": corr.n_permutations, "seed": t.p["seed"]}},
                   notes=notes)


def block_length_sweep(t: Tables) -> dict[str, Any]:
    """The control's interval at each block length of [protocol].block_lengths."""
    name = "block_length_sweep"
    runs = {b: _bootstrap(t, b).interval for b in t.p["block_lengths"]}
    observed: dict[str, Any] = {"min_ci_low": min(i.low for i in runs.values())}
    for b, interval in runs.items():
        observed |= {f"ci_low_block_{b}": interval.low, f"ci_high_block_{b}": interval.high}
    return _result(t, api.protocol_of(t.claim, name), "robustness", t.claim.control(name)["criterion"], observed,
                   data={"intervals": [{"block_length": b, **i.as_dict()} for b, i in runs.items()]})


def readme_body_figure(t: Tables) -> dict[str, Any]:
    """The README body's stale r and p against the source's earlier results file, and why it differs."""
    name = "readme_body_figure"
    pub, stale = t.claim.published, t.results_file("stale_results_file")
    corr = stale["correlations"][t.p["pair"]]
    first, second = t.p["families"]
    ours = {f: summary(v, t.p["threshold"])["mean"] for f, v in zip((first, second), (t.first, t.second),
                                                                        strict=True)}
    observed = {"stale_pearson_r": corr["pearson_r"], "stale_pearson_p": corr["pearson_p"],
                "stale_pearson_r_abs_error": abs(corr["pearson_r"] - pub["readme_body_pearson_r"]),
                "stale_pearson_p_abs_error": abs(corr["pearson_p"] - pub["readme_body_pearson_p"]),
                **{f"mean_{f}_stale_file": stale["summary_stats"][f]["mean"] for f in (first, second)},
                **{f"mean_{f}_committed_table": ours[f] for f in (first, second)}}
    changed = [f for f in (first, second) if not math.isclose(stale["summary_stats"][f]["mean"], ours[f],
                                                              rel_tol=1e-9)]
    notes = (f"{pub['stale_results_file']} holds the README body's figure; its summaries differ from the committed "
             f"tables for {', '.join(changed) or 'no family'}: computed from a table that is not committed",)
    return _result(t, api.protocol_of(t.claim, name), "robustness", t.claim.control(name)["criterion"], observed,
                   notes=notes)


PROTOCOLS: dict[str, Callable[[Tables], dict[str, Any]]] = {
    "as_published": as_published,
    "rederive": rederive,
    "control:layer_autocorrelation": layer_autocorrelation,
    "robustness:autocorrelation_nulls": autocorrelation_nulls,
    "robustness:block_length_sweep": block_length_sweep,
    "robustness:readme_body_figure": readme_body_figure,
}
