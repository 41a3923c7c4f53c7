"""`python -m harness replay rfc TABLE.csv [--against OTHER.csv] [--json OUT|-]`.

Re-derives the published role-conditioning figures (claims-spec B.3) from a source's `detailed_comparison`
table: per-layer RFC/RSI of base and instruct with head-level CIs, and their instruct - base differences.
`replay_rfc(path)` returns the figures as a `RfcReplay` for tests and claims; `main` is the command line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.profiles import ProfileCorrelation, correlate_profiles
from harness.analysis.rfc import (
    Array,
    LayerStats,
    ThresholdCounts,
    UnstableRule,
    bonferroni_significant,
    compare_layers,
    t_interval,
    threshold_counts,
    unstable_denominator,
)

METRICS = ("rfc", "rsi")
MODELS = ("base", "instruct")
STAT_COLUMNS = ("mean", "std", "ci_low", "ci_high")
REQUIRED_COLUMNS = (  # in the order the source writes them
    "layer",
    *(c for model in MODELS for c in (*(f"{m}_{s}_{model}" for m in METRICS for s in STAT_COLUMNS),
                                      f"n_heads_{model}")),
    "rfc_diff", "rsi_diff", "rfc_diff_ci_low", "rfc_diff_ci_high", "rsi_diff_ci_low", "rsi_diff_ci_high",
)


class ReplayError(ValueError):
    """A table cannot be replayed; the message names the file, the row or column, and the fix."""


@dataclass(frozen=True)
class ComparisonTable:
    """A detailed_comparison table: one row per layer, every column as a float array (layer,)."""

    path: Path
    columns: dict[str, Array]

    @property
    def n_layers(self) -> int:
        return int(self.columns["layer"].size)

    def n_heads(self, model: str) -> int:
        return int(self.columns[f"n_heads_{model}"][0])

    def stats(self, metric: str, model: str) -> LayerStats:
        """The table's head-level statistics of `metric` ('rfc'/'rsi') for `model` ('base'/'instruct')."""
        c = self.columns
        mean, std, low, high = (c[f"{metric}_{s}_{model}"] for s in STAT_COLUMNS)
        return LayerStats(mean, std, low, high, self.n_heads(model))


def _number(path: Path, row: int, column: str, text: str | None) -> float:
    if text is None or text.strip() == "":
        raise ReplayError(f"{path}: row {row} (file line {row + 1}), column {column!r} is empty; "
                          "fill in that cell or re-export the table")
    try:
        value = float(text)
    except ValueError:
        raise ReplayError(f"{path}: row {row}, column {column!r} holds {text!r}, not a number; "
                          "fix that cell or re-export the table") from None
    if not math.isfinite(value):
        raise ReplayError(f"{path}: row {row}, column {column!r} is {text!r}; every cell must be finite")
    return value


def _rows(path: Path) -> tuple[list[str], list[dict[str | Any, str | None]]]:
    if not path.is_file():
        raise ReplayError(f"{path}: no such file; pass the path of a detailed_comparison CSV "
                          "(the harness ships the sources' tables in fixtures/published/, e.g. "
                          "fixtures/published/role-conditioning_mistral_detailed_comparison.csv)")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ReplayError(f"{path}: missing column(s) {missing}; a detailed_comparison table needs "
                          f"{list(REQUIRED_COLUMNS)}, as the vendored "
                          "fixtures/published/role-conditioning_*_detailed_comparison.csv tables do")
    if not rows:
        raise ReplayError(f"{path}: the table has a header but no rows; pass a table with one row per layer")
    return header, rows


def read_table(path: str | Path) -> ComparisonTable:
    """Read and validate a detailed_comparison CSV (csv module only), or raise ReplayError."""
    path = Path(path)
    _, rows = _rows(path)
    for i, row in enumerate(rows, start=1):
        if None in row:
            raise ReplayError(f"{path}: row {i} (file line {i + 1}) has {len(row[None] or [])} cell(s) more "
                              "than the header; fix the stray commas in that row")
        absent = [c for c, v in row.items() if v is None]
        if absent:
            raise ReplayError(f"{path}: row {i} (file line {i + 1}) ends before column(s) {absent}; the row "
                              "looks truncated: re-export the complete table")
    columns = {c: np.array([_number(path, i, c, row[c]) for i, row in enumerate(rows, start=1)])
               for c in REQUIRED_COLUMNS}
    layers = columns["layer"]
    if not np.array_equal(layers, np.arange(layers.size)):
        raise ReplayError(f"{path}: column 'layer' reads {layers.tolist()}; expected 0..{layers.size - 1} "
                          "in order, one row per layer")
    for model in MODELS:
        heads = columns[f"n_heads_{model}"]
        if np.unique(heads).size != 1 or heads[0] < 2 or heads[0] != int(heads[0]):
            raise ReplayError(f"{path}: column 'n_heads_{model}' reads {sorted(set(heads.tolist()))}; "
                              "the replay needs one integer head count >= 2 per model")
    return ComparisonTable(path, columns)


@dataclass(frozen=True)
class MetricReplay:
    """Figures of one per-layer difference profile (rfc_diff or rsi_diff); layers are 0-based indices."""

    mean: float
    median: float
    std_ddof0: float
    min: float
    min_layer: int
    max: float
    max_layer: int
    thresholds: ThresholdCounts
    ci_negative_layers: list[int]
    ci_positive_layers: list[int]
    bonferroni_layers: list[int]
    mean_without_unstable: float
    ci_max_abs_error: float

    @property
    def significant(self) -> int:
        """Layers whose published head-level CI excludes 0."""
        return len(self.ci_negative_layers) + len(self.ci_positive_layers)


@dataclass(frozen=True)
class ModelReplay:
    """Layer statistics of one model's rfc_mean column."""

    mean: float
    median: float
    ci_above_zero: int


@dataclass(frozen=True)
class UnstableLayer:
    """A layer flagged by the UnstableRule, with the RFC values that flagged it."""

    layer: int
    rfc_base: float
    rfc_instruct: float
    rfc_diff: float


@dataclass(frozen=True)
class RfcReplay:
    """Everything `replay rfc` reports for one table (and, with `against`, its correlation with another)."""

    table: str
    n_layers: int
    n_heads: dict[str, int]
    unstable_rule: UnstableRule
    unstable_layers: list[UnstableLayer]
    rfc: MetricReplay
    rsi: MetricReplay
    models: dict[str, ModelReplay]
    against: str | None = None
    correlation: ProfileCorrelation | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; each metric also carries its `significant` and `bonferroni` counts."""
        out = asdict(self)
        for metric in METRICS:
            figures = getattr(self, metric)
            out[metric].update(significant=figures.significant, bonferroni=len(figures.bonferroni_layers))
        return out


def _layers(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


def _ci_error(table: ComparisonTable, metric: str) -> float:
    """Largest |recomputed - published| CI bound of the per-model and difference intervals."""
    errors = []
    for model in MODELS:
        s = table.stats(metric, model)
        low, high = t_interval(s.mean, s.std / np.sqrt(s.n_heads), s.n_heads - 1)
        errors += [np.abs(low - s.ci_low).max(), np.abs(high - s.ci_high).max()]
    cmp = compare_layers(table.stats(metric, "base"), table.stats(metric, "instruct"))
    c = table.columns
    errors += [np.abs(cmp.ci_low - c[f"{metric}_diff_ci_low"]).max(),
               np.abs(cmp.ci_high - c[f"{metric}_diff_ci_high"]).max(),
               np.abs(cmp.diff - c[f"{metric}_diff"]).max()]
    return float(max(errors))


def _metric(table: ComparisonTable, metric: str, unstable: np.ndarray, threshold: float) -> MetricReplay:
    c = table.columns
    diff, low, high = (c[f"{metric}_diff{s}"] for s in ("", "_ci_low", "_ci_high"))
    cmp = compare_layers(table.stats(metric, "base"), table.stats(metric, "instruct"))
    stable = diff[~unstable]
    return MetricReplay(
        mean=float(diff.mean()), median=float(np.median(diff)), std_ddof0=float(diff.std()),
        min=float(diff.min()), min_layer=int(diff.argmin()),
        max=float(diff.max()), max_layer=int(diff.argmax()),
        thresholds=threshold_counts(diff, threshold),
        ci_negative_layers=_layers(high < 0), ci_positive_layers=_layers(low > 0),
        bonferroni_layers=_layers(bonferroni_significant(diff, cmp.se, cmp.df)),
        mean_without_unstable=float(stable.mean()) if stable.size else float("nan"),
        ci_max_abs_error=_ci_error(table, metric),
    )


def replay_rfc(path: str | Path, against: str | Path | None = None,
               rule: UnstableRule | None = None, block: int = 4, seed: int = 0,
               threshold: float = 0.01) -> RfcReplay:
    """Re-derive the B.3 figures of one detailed_comparison table; `against` adds the dRFC correlation
    (with its circular-shift and `block`-layer block-permutation p beside the iid one).

    A layer is unstable when `rule` flags the base or the instruct RFC (default: |RFC| > 1); `threshold` is
    the source's cut for its "% layers" counts (a claim passes its [protocol].threshold).
    """
    rule = rule or UnstableRule()
    table = read_table(path)
    c = table.columns
    unstable = unstable_denominator(c["rfc_mean_base"], rule=rule) | unstable_denominator(
        c["rfc_mean_instruct"], rule=rule)
    models = {m: ModelReplay(float(c[f"rfc_mean_{m}"].mean()), float(np.median(c[f"rfc_mean_{m}"])),
                             int((c[f"rfc_ci_low_{m}"] > 0).sum())) for m in MODELS}
    flagged = [UnstableLayer(i, float(c["rfc_mean_base"][i]), float(c["rfc_mean_instruct"][i]),
                             float(c["rfc_diff"][i])) for i in _layers(unstable)]
    correlation = None
    if against is not None:
        other = read_table(against)
        if other.n_layers != table.n_layers:
            raise ReplayError(f"{path} has {table.n_layers} layers but {against} has {other.n_layers}; "
                              "correlate tables of models with the same depth")
        correlation = correlate_profiles(c["rfc_diff"], other.columns["rfc_diff"], block=block, seed=seed)
    return RfcReplay(str(path), table.n_layers, {m: table.n_heads(m) for m in MODELS}, rule, flagged,
                     _metric(table, "rfc", unstable, threshold), _metric(table, "rsi", unstable, threshold), models,
                     None if against is None else str(against), correlation)


def _metric_lines(name: str, r: MetricReplay, n: int) -> list[str]:
    t = r.thresholds
    return [
        f"{name}: mean {r.mean:+.4f}  median {r.median:+.4f}  sd(ddof=0) {r.std_ddof0:.4f}  "
        f"min {r.min:+.4f} (L{r.min_layer})  max {r.max:+.4f} (L{r.max_layer})",
        f"  threshold counts (not tests): {t.below}/{n} < -{t.threshold}, {t.above}/{n} > +{t.threshold}, "
        f"{t.near_zero}/{n} near zero",
        f"  head-level CI excludes 0: {r.significant}/{n} ({len(r.ci_negative_layers)} negative "
        f"{r.ci_negative_layers}, {len(r.ci_positive_layers)} positive {r.ci_positive_layers})",
        f"  Bonferroni over {n} layers: {len(r.bonferroni_layers)}/{n} {r.bonferroni_layers}",
        f"  mean without unstable layers: {r.mean_without_unstable:+.4f}; "
        f"CI columns re-derived to {r.ci_max_abs_error:.1e}",
    ]


def format_summary(r: RfcReplay) -> str:
    """The human-readable report of `replay rfc`."""
    lines = [f"replay rfc {r.table}", f"layers {r.n_layers}; heads counted by the source (n_heads column): "
             f"base {r.n_heads['base']}, instruct {r.n_heads['instruct']}"]
    lines += _metric_lines("dRFC (instruct - base)", r.rfc, r.n_layers)
    lines += _metric_lines("dRSI (instruct - base)", r.rsi, r.n_layers)
    rule = f"unstable RFC denominator (|RFC| > {r.unstable_rule.max_abs_rfc} in base or instruct)"
    lines += [f"{rule}: none"] if not r.unstable_layers else [
        f"{rule}: L{u.layer} (base RFC {u.rfc_base:+.3f}, instruct {u.rfc_instruct:+.3f}, "
        f"diff {u.rfc_diff:+.3f})" for u in r.unstable_layers]
    lines += [f"{m} rfc_mean over layers: mean {s.mean:+.4f}, median {s.median:+.4f}, CI > 0 in "
              f"{s.ci_above_zero}/{r.n_layers}" for m, s in r.models.items()]
    if r.correlation is not None:
        k = r.correlation
        lines.append(f"dRFC vs {r.against}: Pearson r {k.pearson_r:.4f} (p {k.pearson_p:.4g}), Spearman "
                     f"{k.spearman_rho:.4f} (p {k.spearman_p:.4g}); p iid {k.pearson_p:.4g}, circular-shift "
                     f"{k.shift_p:.4g}, {k.block_length}-layer block permutation {k.block_p:.4g}")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness replay rfc",
                                     description="Re-derive RFC/RSI figures from a detailed_comparison CSV.")
    parser.add_argument("table", help="detailed_comparison CSV")
    parser.add_argument("--against", help="a second table: correlate the two dRFC profiles")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT ('-' = stdout)")
    parser.add_argument("--block", type=int, default=4,
                        help="layers per block of the block-permutation null of the correlation (default %(default)s)")
    parser.add_argument("--max-abs-rfc", type=float, default=UnstableRule().max_abs_rfc,
                        help="flag a layer unstable when |RFC| exceeds this (default %(default)s)")
    return parser


def _write_json(result: RfcReplay, target: str) -> None:
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    out = Path(target)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


SUBJECTS = {"rfc": "RFC/RSI figures from a role-conditioning detailed_comparison CSV"}


def usage() -> str:
    lines = ["usage: python -m harness replay <subject> [args]   (python -m harness replay <subject> --help)", "",
             "Re-derive a source's published summary figures from its data table.", "", "subjects:"]
    return "\n".join([*lines, *(f"  {name:<8} {what}" for name, what in SUBJECTS.items())]) + "\n"


def main(argv: list[str]) -> int:
    """Entry point of `python -m harness replay`; argv starts with the subject ('rfc')."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    if argv[0] not in SUBJECTS:
        sys.stderr.write(f"replay: unknown subject {argv[0]!r}; available: {', '.join(SUBJECTS)}\n{usage()}")
        return 2
    args = _parser().parse_args(argv[1:])
    try:
        result = replay_rfc(args.table, args.against, UnstableRule(max_abs_rfc=args.max_abs_rfc), args.block)
    except ReplayError as error:
        sys.stderr.write(f"replay rfc: {error}\n")
        return 2
    if args.json is not None:
        _write_json(result, args.json)
    if args.json != "-":
        sys.stdout.write(format_summary(result))
    return 0
