"""The role-conditioning source's linear probes (claims-spec B.3 `linear_probes`, W-B11), from its committed tables.

The probes read MLP features that were never committed, so nothing here refits a probe. The re-derivations
check that the tables give the figures cited from them (4-way accuracy ranges by position; binary post-INLP
AUCs; Qwen's nuisance, OOD and projector checks). The robustness checks read the tables against what their own
design implies: at the BOS position the input is the same for every prompt, so the accuracy must be exactly
chance and the AUC exactly 0.5; the summary must be table1 rounded; a "retention" must divide by the version's
own AUC.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from harness import api

SCHEMA = api.Schema(
    protocol={"positions": list[str], "groups": dict[str, list[str]], "binary_models": list[str],
              "binary_positions": list[str], "bos_models": list[str], "classes": int, "per_class": int,
              "folds": int, "decimals": int, "summary_decimals": int},
    controls={"constant_input": {}, "derived_tables": {}},
)
VERSIONS = ("base", "instruct")


@dataclass(frozen=True)
class Tables:
    claim: api.Claim
    folder: Path

    @classmethod
    def of(cls, claim: api.Claim, folder: Path) -> Tables:
        return cls(claim, folder)

    @property
    def p(self) -> Mapping[str, Any]:
        return self.claim.protocol

    def rows(self, name: str) -> list[dict[str, str]]:
        """A published table (a file name of [published]) as rows of strings, manifest-verified."""
        path = api.verified_table(self.folder, name)
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise api.PublishedDataError(f"{path}: the table has no rows; restore it from the source")
        return rows

    def multiclass(self, model: str) -> list[dict[str, str]]:
        return self.rows(str(self.claim.published["multiclass_files"][model]))

    def binary(self) -> dict[tuple[str, str, str], dict[str, str]]:
        """table1 by (model, version, position), lower-cased."""
        return {(r["model"].lower(), r["version"].lower(), r["token_position"]): r
                for r in self.rows(str(self.claim.published["binary_file"]))}

    def gap(self, a: float, b: float) -> float:
        """|a - b| after rounding to [protocol].decimals (the tables' float noise is not a discrepancy)."""
        return round(abs(a - b), int(self.p["decimals"]))


def _result(t: Tables, protocol: str, kind: str, criterion: Mapping[str, Any], observed: Mapping[str, Any],
            n: Mapping[str, int], published: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A result whose published figures carry the observed figures' keys, so the report sets them side by side."""
    return api.protocol_result(t.claim, protocol, kind, dict(criterion), observed, n=n,
                               published=dict(published or {}), **extra)


def accuracy_range(t: Tables, models: Iterable[str], position: str) -> tuple[float, float]:
    """Lowest and highest 4-way accuracy at `position` over the models' layers and versions."""
    values = [float(r["baseline_acc"]) for m in models for r in t.multiclass(m) if r["token_pos"] == position]
    if not values:
        raise api.PublishedDataError(f"no 4-way accuracy at position {position!r} for {list(models)}; positions "
                                     f"are [protocol].positions")
    return min(values), max(values)


def rederive_multiclass(t: Tables) -> dict[str, Any]:
    """The published accuracy ranges by position hold every accuracy of the three 4-way tables (to their last
    printed digit); how much wider than the tables a published range is, is reported beside (slack)."""
    ranges = t.claim.published["multiclass_ranges"]
    observed: dict[str, Any] = {}
    published: dict[str, float] = {}
    outside, slack = [], {}
    for group, models in t.p["groups"].items():
        for position in t.p["positions"]:
            low, high = accuracy_range(t, models, position)
            published_low, published_high = ranges[group][position]
            outside += [t.gap(low, published_low) if low < published_low else 0.0,
                        t.gap(high, published_high) if high > published_high else 0.0]
            slack[f"{group}_{position}"] = max(low - published_low, published_high - high)
            observed |= {f"{group}_{position}_min": low, f"{group}_{position}_max": high}
            published |= {f"{group}_{position}_min": published_low, f"{group}_{position}_max": published_high}
    loosest = max(slack, key=lambda k: slack[k])
    observed |= {"multiclass_range_max_abs_error": max(outside), "range_slack_max": slack[loosest]}
    return _result(t, "rederive_multiclass", "rederive", t.claim.criteria["rederive_multiclass"], observed,
                   n={"cells": len(outside) // 2}, published=published,
                   notes=("ranges over layers 10/15/20/25 and base/instruct",
                          f"the loosest published range is {loosest}'s: {slack[loosest]:.3f} beyond the tables"))


def _qwen_checks(t: Tables) -> dict[str, list[float]]:
    """Qwen's checks from tables 2a-2c, in [published.qwen_checks]'s order."""
    pub = t.claim.published
    nuisance = {(r["version"].lower(), r["token_position"]): float(r["auc_mean"]) for r in t.rows(pub["nuisance_file"])}
    ood = {r["version"].lower(): r for r in t.rows(pub["ood_file"])}
    transfer = [float(r["auc"]) for r in t.rows(pub["projector_file"])]
    return {"expanded_nuisance_last": [nuisance[(v, "last")] for v in VERSIONS],
            "lexical_ood_auc": [float(ood[v]["ood_auc"]) for v in VERSIONS],
            "lexical_ood_retention": [float(ood[v]["retention"]) for v in VERSIONS],
            "projector_transfer": transfer}


def rederive_binary(t: Tables) -> dict[str, Any]:
    """table1's post-INLP AUCs by model, position and version, and Qwen's checks (tables 2a-2c)."""
    table, pub = t.binary(), t.claim.published
    cells = {f"{m}_{pos}_{v}": (float(table[(m, v, pos)]["auc_mean"]), pub["post_inlp_auc"][m][pos][i])
             for m in t.p["binary_models"] for pos in t.p["binary_positions"] for i, v in enumerate(VERSIONS)}
    checks = {f"qwen_{key}_{i}": (x, y) for key, values in _qwen_checks(t).items()
              for i, (x, y) in enumerate(zip(values, pub["qwen_checks"][key], strict=True))}
    observed = {"post_inlp_auc_max_abs_error": max(t.gap(x, y) for x, y in cells.values()),
                "qwen_checks_max_abs_error": max(t.gap(x, y) for x, y in checks.values()),
                **{k: x for k, (x, _) in (cells | checks).items()}}
    return _result(t, "rederive_binary", "rederive", t.claim.criteria["rederive_binary"], observed,
                   n={"auc_cells": len(cells), "qwen_checks": len(checks)},
                   published={k: y for k, (_, y) in (cells | checks).items()})


def constant_input_accuracy(classes: int, per_class: int, folds: int) -> float:
    """Accuracy of one predicted class per fold under a stratified CV of balanced classes: 1 / classes, exactly,
    when every fold gets the same number of each class (per_class divisible by folds)."""
    if per_class % folds:
        raise ValueError(f"per_class={per_class} is not divisible by folds={folds}: folds are unequal, and a "
                         "constant input's accuracy then depends on the split")
    return 1 / classes


def constant_input(t: Tables) -> dict[str, Any]:
    """The BOS position of the families with a BOS token: accuracy against exactly chance, AUC against 0.5."""
    name, p = "constant_input", t.p
    chance = constant_input_accuracy(p["classes"], p["per_class"], p["folds"])
    bos = [float(r["baseline_acc"]) for m in p["bos_models"] for r in t.multiclass(m) if r["token_pos"] == "bos"]
    table = t.binary()
    aucs = [table[(m, v, "bos")] for m in p["bos_models"] for v in VERSIONS]
    n = p["classes"] * p["per_class"]
    correct = round(max(bos, key=lambda a: abs(a - chance)) * n)
    observed = {"constant_input_accuracy": chance, "bos_accuracy_min": min(bos), "bos_accuracy_max": max(bos),
                "bos_accuracy_max_gap_to_constant": max(abs(a - chance) for a in bos),
                "bos_accuracy_binomial_p": float(stats.binomtest(correct, n, chance).pvalue),
                "bos_auc_max": max(float(r["auc_mean"]) for r in aucs),
                "bos_auc_rows_ci_excluding_half": sum(float(r["auc_upper"]) < 0.5 or float(r["auc_lower"]) > 0.5
                                                      for r in aucs)}
    notes = (f"{len(bos)} accuracies at the BOS position ({', '.join(p['bos_models'])}, layers x versions) lie "
             f"in [{min(bos):.3f}, {max(bos):.3f}]; a constant input scores exactly {chance:g} here",
             "the binomial p treats the predictions as independent draws at chance: a constant input makes them "
             "anything but, so it only says how far from chance the figure is")
    return _result(t, api.protocol_of(t.claim, name), "robustness", t.claim.control(name)["criterion"], observed,
                   n={"accuracies": len(bos), "auc_rows": len(aucs)}, notes=notes)


def derived_tables(t: Tables) -> dict[str, Any]:
    """summary_statistics.csv against table1 at 2 decimals; table 2b's retention against its own AUC."""
    name, table = "derived_tables", t.binary()
    columns = {"last": "Post_INLP_Last_Token", "mid": "Post_INLP_Mid_Token"}
    gaps = {f"{r['Model'].lower()}_{r['Version'].lower()}_{pos}":
            float(r[col]) - float(table[(r["Model"].lower(), r["Version"].lower(), pos)]["auc_mean"])
            for r in t.rows(t.claim.published["summary_file"]) for pos, col in columns.items()}
    worst = max(gaps, key=lambda k: abs(gaps[k]))
    ood = {r["version"].lower(): r for r in t.rows(t.claim.published["ood_file"])}
    denominators = {v: float(ood[v]["ood_auc"]) / float(ood[v]["retention"]) for v in VERSIONS}
    own = {v: float(table[("qwen", v, "last")]["auc_mean"]) for v in VERSIONS}
    rounding = 0.5 * 10 ** -t.p["summary_decimals"] + 10 ** -t.p["decimals"]  # half the last digit, plus noise
    observed = {"summary_rounding_mismatches": sum(abs(g) > rounding for g in gaps.values()),
                "summary_cells": len(gaps), "summary_max_gap": gaps[worst],
                "retention_denominator_max_gap": max(t.gap(denominators[v], own[v]) for v in VERSIONS),
                **{f"retention_denominator_{v}": d for v, d in denominators.items()},
                **{f"qwen_{v}_last_auc": a for v, a in own.items()}}
    notes = (f"largest summary gap: {worst} ({gaps[worst]:+.4f} against table1)",
             "retention = ood_auc / denominator: " + "; ".join(
                 f"{v} {denominators[v]:.4f} against its own last-token AUC {own[v]:.4f}" for v in VERSIONS))
    return _result(t, api.protocol_of(t.claim, name), "robustness", t.claim.control(name)["criterion"], observed,
                   n={"summary_cells": len(gaps)}, notes=notes)


PROTOCOLS: dict[str, Callable[[Tables], dict[str, Any]]] = {
    "rederive_multiclass": rederive_multiclass,
    "rederive_binary": rederive_binary,
    "robustness:constant_input": constant_input,
    "robustness:derived_tables": derived_tables,
}
