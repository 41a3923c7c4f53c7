"""The matplotlib drawings of the claims page, one builder per data layout (harness.report.figures says which).

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, Agg canvas) and saved as
256-colour PNGs. Every panel has a title and axis labels with units; metrics without known units say so.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator
from PIL import Image

DPI = 80
PERMUTATIONS = 10_000
COLOURS = ("#3b6fb6", "#d9822b", "#3a9d5d", "#b03a48", "#7d5ba6", "#8c6d31")
LABELS = {
    "r_v": "R_V = PR(late) / PR(early) (ratio, unitless)",
    "tokens": "prompt length (tokens)",
    "pr_early": "PR at the early layer (effective dimensions)",
    "pr_late": "PR at the late layer (effective dimensions)",
    "distinct_1": "distinct-1 (unique / all unigrams)",
    "distinct_2": "distinct-2 (unique / all bigrams)",
    "repeated_3gram_rate": "repeated 3-gram rate (fraction)",
    "longest_run": "longest run of one unit (units)",
    "n_units": "length (units: tokens or words)",
}
NAMES = {"r_v": "R_V", "pr_early": "PR early", "pr_late": "PR late", "tokens": "token count",
         "distinct_1": "distinct-1", "distinct_2": "distinct-2", "repeated_3gram_rate": "repeated 3-grams",
         "longest_run": "longest run"}


@dataclass(frozen=True)
class Figure:
    """One PNG figure of the page."""

    title: str
    caption: str
    png: bytes


def label(metric: str) -> str:
    """Axis label with units for a known metric; unknown metrics say their units are as the claim recorded."""
    return LABELS.get(metric, f"{metric} (as recorded)")


def name(metric: str) -> str:
    return NAMES.get(metric, metric)


def _png(fig: MplFigure) -> bytes:
    """The figure as a 256-colour PNG (a third of the RGBA size, no visible loss on line art)."""
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=DPI)
    palette = io.BytesIO()
    Image.open(rgba).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(palette, "PNG")
    return palette.getvalue()


# Tick labels stay short whatever the scale: an offset ("+0.958") once it saves two digits, and an exponent
# outside 1e-3 .. 1e4. Read by each axis's formatter when the axes are made.
COMPACT_TICKS: dict[Any, Any] = {"axes.formatter.offset_threshold": 2, "axes.formatter.limits": (-3, 4)}


def _canvas(panels: int, height: float = 3.4, width: float = 4.6) -> tuple[MplFigure, list[Axes]]:
    """A row of panels with fixed margins in inches (constrained layout costs more than the drawing). The
    right margin holds half of the last x tick label and the axis's exponent."""
    total = width * panels
    fig = MplFigure(figsize=(total, height))
    fig.subplots_adjust(left=1.0 / total, right=1 - 0.45 / total, bottom=0.8 / height, top=1 - 0.4 / height,
                        wspace=1.45 / (width - 1.45))
    with rc_context(COMPACT_TICKS):
        return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def as_numbers(values: Any, name: str) -> np.ndarray:
    """A 1-d float array (None, a NaN the report wrote as null, is NaN), or ValueError naming the field."""
    arr = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat list of numbers, got shape {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------- layout 1 --

def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def primary_metric(records: Mapping[str, list[dict[str, Any]]]) -> str:
    """"r_v" when every record has it, else the first numeric field shared by all records (not "tokens")."""
    rows = [r for rs in records.values() for r in rs]
    shared = [k for k, v in rows[0].items() if is_number(v) and k != "tokens" and all(k in r for r in rows)]
    if not shared:
        raise ValueError(f"conditions {list(records)} share no numeric field to plot")
    return "r_v" if "r_v" in shared else shared[0]


def _column(records: list[dict[str, Any]], key: str, condition: str) -> np.ndarray:
    return as_numbers([r.get(key) for r in records], f"data.{condition}[*].{key}")


Records = Mapping[str, list[dict[str, Any]]]


def _strip(ax: Axes, groups: Mapping[str, np.ndarray], metric: str, rng: np.random.Generator) -> None:
    for i, y in enumerate(groups.values()):
        x = i + rng.uniform(-0.15, 0.15, size=y.size)
        ax.scatter(x, y, s=18, color=COLOURS[i % len(COLOURS)], alpha=0.8)
        ax.hlines(np.nanmean(y), i - 0.3, i + 0.3, color="black", linewidth=1.5)
    ax.set_xticks(range(len(groups)), [f"{c}\n(n={y.size})" for c, y in groups.items()])
    ax.set(title=f"{name(metric)} by condition", ylabel=label(metric))


def _against_tokens(ax: Axes, groups: Mapping[str, tuple[np.ndarray, np.ndarray]], metric: str) -> None:
    for i, (condition, (x, y)) in enumerate(groups.items()):
        ax.scatter(x, y, s=18, color=COLOURS[i % len(COLOURS)], alpha=0.8, label=condition)
    ax.set(title=f"{name(metric)} against prompt length", xlabel=label("tokens"), ylabel=label(metric))
    ax.legend(fontsize=8)


def permutation_null(a: np.ndarray, b: np.ndarray, seed: int, n: int = PERMUTATIONS) -> np.ndarray:
    """Null draws of mean(b) - mean(a) under random relabelling of the pooled values (seeded)."""
    pooled = np.concatenate([a, b])
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(pooled, (n, 1)), axis=1)  # (draw, item)
    return np.asarray(shuffled[:, a.size:].mean(axis=1) - shuffled[:, :a.size].mean(axis=1))


def two_sided_p(null: np.ndarray, observed: float) -> float:
    return float((1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (null.size + 1))


def _null_panel(ax: Axes, null: np.ndarray, observed: float, statistic: str, units: str) -> None:
    ax.hist(null, bins=40, color="#9aa7b8")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # signed decimals are wide: fewer ticks, none overlapping
    ax.axvline(observed, color="#b03a48", linewidth=2, label=f"observed = {observed:.4g}")
    ax.set(title="permutation null", xlabel=f"{statistic} ({units})", ylabel="relabellings (count)")
    ax.legend(fontsize=8)


def _recomputed_null(ax: Axes, values: Mapping[str, np.ndarray], metric: str, seed: int) -> str:
    (first, a), (second, b) = ((c, v[np.isfinite(v)]) for c, v in values.items())
    null, observed = permutation_null(a, b, seed), float(b.mean() - a.mean())
    _null_panel(ax, null, observed, f"mean({second}) - mean({first})", f"{name(metric)}")
    return (f"Permutation null recomputed for this page from the per-prompt {name(metric)} in this result's "
            f"data ({PERMUTATIONS:,} relabellings, numpy seed {seed}, the run's seed): two-sided "
            f"p = {two_sided_p(null, observed):.4g}; the harness's own tests are in the tables above.")


def records_figures(records: Records, result: Mapping[str, Any], seed: int) -> list[Figure]:
    metric = primary_metric(records)
    values = {c: _column(rs, metric, c) for c, rs in records.items()}
    with_tokens = all("tokens" in r for rs in records.values() for r in rs)
    recorded = any(isinstance(v, dict) and v.get("kind") == "permutation_null"
                   for v in result["data"].values())
    two = len(values) == 2 and min(np.isfinite(v).sum() for v in values.values()) >= 2 and not recorded
    fig, axes = _canvas(1 + with_tokens + two)
    _strip(axes[0], values, metric, np.random.default_rng(seed))
    caption = [f"{name(metric)} of each prompt by condition (bar: the mean)"
               f"{', and against its token count' * with_tokens}."]
    if with_tokens:
        tokens = {c: (_column(rs, "tokens", c), values[c]) for c, rs in records.items()}
        _against_tokens(axes[1], tokens, metric)
    if two:
        caption.append(_recomputed_null(axes[-1], values, metric, seed))
    figures = [Figure(f"{name(metric)} per prompt", " ".join(caption), _png(fig))]
    if all({"pr_early", "pr_late"} <= r.keys() for rs in records.values() for r in rs):
        figures.append(pr_figure(records, result))
    return figures


def pr_figure(records: Records, result: Mapping[str, Any]) -> Figure:
    params = result.get("protocol_params") or {}
    ticks = [f"{which}\n(layer {params.get(f'{which}_layer', '?')})" for which in ("early", "late")]
    fig, axes = _canvas(len(records))
    columns = {c: (_column(rs, "pr_early", c), _column(rs, "pr_late", c)) for c, rs in records.items()}
    top = max(float(np.nanmax(np.concatenate(pair))) for pair in columns.values())
    for i, (ax, (condition, (early, late))) in enumerate(zip(axes, columns.items(), strict=True)):
        colour = COLOURS[i % len(COLOURS)]
        ax.add_collection(LineCollection([[(0, e), (1, lt)] for e, lt in zip(early, late, strict=True)],
                                         colors=colour, alpha=0.35, linewidths=1))
        ax.plot([0, 1], [early.mean(), late.mean()], color="black", linewidth=2.5, marker="o", label="mean")
        ax.set_xticks([0, 1], ticks)
        ax.set_xlim(-0.5, 1.5)  # room for the two-line layer labels inside the panel
        ax.set_ylim(0, top * 1.08)
        ax.set(title=f"PR by layer: {condition} (n={early.size})", xlabel="layer (published indexing)",
               ylabel="participation ratio (effective dimensions)")
        ax.legend(fontsize=8)
    caption = (f"Participation ratio at site {params.get('site', '?')} over the token window, at the early "
               "and the late layer, one line per prompt. Layers are the claim's published indices, mapped to "
               "this model by relative depth.")
    return Figure("PR by layer", caption, _png(fig))


def metric_fields(rows: list[dict[str, Any]]) -> list[str]:
    """Fields that hold an object of numbers in every row (e.g. metrics_normal, metrics_ablated)."""
    return [f for f, v in rows[0].items() if isinstance(v, dict) and v and all(
        isinstance(r.get(f), dict) and all(is_number(x) for x in r[f].values()) for r in rows)]


def text_metrics_figure(key: str, rows: list[dict[str, Any]], seed: int) -> Figure:
    """Layout 6: each metric shared by the metric fields, per generated text, by field (condition)."""
    fields = metric_fields(rows)
    shared = [m for m in rows[0][fields[0]] if all(m in r[f] for r in rows for f in fields)]
    metrics = [m for m in shared if m != "n_units"][:4]
    if not metrics:
        raise ValueError(f"data.{key}: the fields {fields} share no metric to draw")
    fig, axes = _canvas(len(metrics), width=3.8)
    head = fields[0].split("_")[0] + "_"
    short = {f: f.removeprefix(head) if all(g.startswith(head) for g in fields) else f for f in fields}
    for ax, metric in zip(axes, metrics, strict=True):
        groups = {short[f]: as_numbers([r[f][metric] for r in rows], f"data.{key}[*].{f}.{metric}")
                  for f in fields}
        _strip(ax, groups, metric, np.random.default_rng(seed))
    caption = (f"Repetition metrics of each generated text in {key!r}, by condition ({', '.join(fields)}); "
               "bar: mean. The texts themselves are in the table below.")
    return Figure("repetition metrics by condition", caption, _png(fig))


# ---------------------------------------------------------------------------------------------- layout 2 --

def _fit_line(ax: Axes, x: np.ndarray, y: np.ndarray, colour: str) -> None:
    if x.size < 2 or np.ptp(x) == 0:
        return
    slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
    grid = np.array([x.min(), x.max()])
    ax.plot(grid, y.mean() + slope * (grid - x.mean()), color=colour, linewidth=1.5)


def columns_figure(cols: Mapping[str, np.ndarray]) -> Figure:
    groups = [k for k, v in cols.items() if k != "tokens" and set(np.unique(v)) <= {0.0, 1.0}]
    group = groups[0] if groups else None
    ys = [k for k in cols if k not in ("tokens", group)]
    fig, axes = _canvas(len(ys))
    x = cols["tokens"]
    masks = {f"{group} = 1": cols[group] == 1, f"{group} = 0": cols[group] == 0} if group else {"all": x == x}
    for ax, y_name in zip(axes, ys, strict=True):
        for i, (group_label, mask) in enumerate(masks.items()):
            colour = COLOURS[i % len(COLOURS)]
            ax.scatter(x[mask], cols[y_name][mask], s=18, color=colour, alpha=0.8,
                       label=f"{group_label} (n={mask.sum()})")
            _fit_line(ax, x[mask], cols[y_name][mask], colour)
        ax.set(title=f"{y_name} against prompt length", xlabel=label("tokens"), ylabel=label(y_name))
        ax.legend(fontsize=8)
    caption = (f"{', '.join(ys)} of each prompt against its token count"
               + (f", coloured by {group}, with a least-squares line per group." if group else "."))
    return Figure(f"{', '.join(ys)} against token count", caption, _png(fig))


# ------------------------------------------------------------------------------------------ layouts 3-5 --

Series = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # mean, ci_low, ci_high; each (layer,)


def _series(spec: Mapping[str, Any], where: str, n: int) -> Series:
    mean = as_numbers(spec["mean"], f"{where}.mean")
    bounds = [as_numbers(spec[k], f"{where}.{k}") if k in spec else None for k in ("ci_low", "ci_high")]
    for arr, what in ((mean, "mean"), *zip(bounds, ("ci_low", "ci_high"), strict=True)):
        if arr is not None and arr.size != n:
            raise ValueError(f"{where}.{what} has {arr.size} values for {n} layers")
    return mean, bounds[0], bounds[1]


def layer_profile_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    layers = as_numbers(spec["layers"], f"data.{key}.layers")
    metric, units = str(spec.get("metric", key)), str(spec.get("units", "as recorded"))
    diff = spec.get("diff")
    fig, axes = _canvas(2 if diff else 1, height=3.6)
    for i, (name, series) in enumerate(dict(spec["series"]).items()):
        mean, low, high = _series(series, f"data.{key}.series.{name}", layers.size)
        colour = COLOURS[i % len(COLOURS)]
        axes[0].plot(layers, mean, color=colour, marker="o", markersize=3, label=name)
        if low is not None and high is not None:
            axes[0].fill_between(layers, low, high, color=colour, alpha=0.2)
    axes[0].set(title=f"{metric} per layer (band: CI)", xlabel="layer", ylabel=f"{metric} ({units})")
    axes[0].legend(fontsize=8)
    caption = f"{metric} per layer for {', '.join(spec['series'])}, with confidence bands where recorded"
    if diff:
        caption += "; " + _diff_bars(axes[1], layers, diff, f"data.{key}.diff", units)
    return Figure(f"{metric} per layer", caption + ".", _png(fig))


def _diff_bars(ax: Axes, layers: np.ndarray, diff: Mapping[str, Any], name: str, units: str) -> str:
    mean, low, high = _series(diff, name, layers.size)
    what = str(diff.get("label", "difference"))
    if low is not None and high is not None:
        significant = (low > 0) | (high < 0)
        ax.bar(layers, mean, color=np.where(significant, "#b03a48", "#c9c9c9"),
               yerr=np.vstack([mean - low, high - mean]), error_kw={"linewidth": 0.8})
        note = (f"{what} as bars, dark where the CI excludes 0 ({int(significant.sum())} of {layers.size} "
                "layers)")
    else:
        ax.bar(layers, mean, color="#3b6fb6")
        note = f"{what} as bars (no CI recorded)"
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title=f"{what} per layer (error bars: CI)", xlabel="layer", ylabel=f"{what} ({units})")
    return note


def layer_head_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    values = np.asarray([[math.nan if v is None else v for v in row] for row in spec["values"]], dtype=float)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"data.{key}.values must be a non-empty (layer, head) list of lists; "
                         f"got shape {values.shape}")
    metric, units = str(spec.get("metric", key)), str(spec.get("units", "as recorded"))
    layers = as_numbers(spec.get("layers", range(values.shape[0])), f"data.{key}.layers")
    limit = float(np.nanmax(np.abs(values))) or 1.0
    width, height = min(3.5 + 0.3 * values.shape[1], 12), min(2.2 + 0.16 * values.shape[0], 8)
    fig = MplFigure(figsize=(width, height))
    # the right margin holds the colour bar's ticks and label
    fig.subplots_adjust(left=0.8 / width, right=1 - 1.0 / width, bottom=0.6 / height, top=1 - 0.4 / height)
    with rc_context(COMPACT_TICKS):
        ax = fig.subplots()
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="lower",
                          extent=(-0.5, values.shape[1] - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
        fig.colorbar(image, ax=ax, label=f"{metric} ({units})")
    ax.set(title=f"{metric} per layer and head", xlabel="head", ylabel="layer")
    caption = (f"{metric} for each of {values.shape[0]} layers x {values.shape[1]} heads; colour scale "
               f"symmetric about 0 (|max| = {limit:.4g} {units}).")
    return Figure(f"{metric} per layer and head", caption, _png(fig))


def permutation_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    null = as_numbers(spec["null"], f"data.{key}.null")
    observed = float(spec["observed"])
    statistic, units = str(spec.get("statistic", "statistic")), str(spec.get("units", "as recorded"))
    fig, axes = _canvas(1)
    _null_panel(axes[0], null, observed, statistic, units)
    p = spec.get("p_value")
    caption = (f"{null.size:,} null draws recorded by the claim, with the observed {statistic}"
               + (f"; recorded p = {float(p):.4g}." if p is not None else "."))
    return Figure("permutation null", caption, _png(fig))
