"""Figures of the claims page, drawn from a result's `data` by its layout, never by claim id.

`figures_for(result)` looks at one protocol result's `data`, recognises the layouts below, and returns PNG
figures (matplotlib, Agg, no pyplot state) with a title, axis labels and units, plus the data keys it drew.
A new claim gets figures without touching this module by emitting one of these layouts; any other key is
listed on the page as "not drawn". Malformed data never stops the page: the builder's error is shown instead.

Expected `data` layouts
-----------------------
1. Per-item records by condition (emitted by rv_contraction). Every key whose value is a list of objects is
   a condition; numeric fields common to all its records are metrics::

       {"recursive": [{"prompt": "...", "r_v": 0.93, "pr_early": 4.1, "pr_late": 3.8, "tokens": 17}, ...],
        "baseline":  [...]}

   Draws the metric ("r_v" when present, else the first numeric field other than "tokens") per item by
   condition, the metric against "tokens" when present, PR at the early and late layer per item when the
   records hold "pr_early" and "pr_late" (layer numbers from protocol_params early_layer/late_layer), and,
   with exactly two conditions, the permutation null of mean(second) - mean(first), recomputed here from
   the per-item values with the run's seed (the caption says so) unless the data holds layout 5.
2. Parallel columns (emitted by rv_contraction's length covariate): equal-length numeric lists, one of them
   "tokens" (the x axis) and optionally one holding only 0/1 (the group)::

       {"r_v": [0.91, 1.02, ...], "tokens": [17, 23, ...], "recursive": [1.0, 0.0, ...]}

3. Per-layer profile with CIs (role conditioning: RFC base vs instruct; also PR by layer). Any key::

       "rfc_by_layer": {"kind": "layer_profile", "metric": "RFC", "units": "nats",
                        "layers": [0, 1, ..., 31],
                        "series": {"base": {"mean": [...], "ci_low": [...], "ci_high": [...]},
                                   "instruct": {"mean": [...], "ci_low": [...], "ci_high": [...]}},
                        "diff": {"label": "dRFC = instruct - base", "mean": [...],
                                 "ci_low": [...], "ci_high": [...]}}

   ci_low/ci_high and diff are optional. Draws one line per series with its CI band, and the diff as bars
   with CI error bars, dark where the CI excludes 0.
4. Layer x head heatmap (entropy difference). Any key; `values` is (layer, head)::

       "entropy_diff": {"kind": "layer_head", "metric": "H(instruct) - H(base)", "units": "nats",
                        "values": [[...n_heads...], ...n_layers...], "layers": [0, 1, ...]}

5. Permutation null with its observed statistic::

       "permutation": {"kind": "permutation_null", "statistic": "mean(baseline) - mean(recursive)",
                       "units": "R_V ratio", "null": [...draws...], "observed": 0.19, "p_value": 0.003}

6. Generated texts side by side (l31_ablation_repetition, residual_patch_collapse), rendered as an HTML
   table by harness.htmlreport, not as a figure::

       "generations": [{"prompt": "...", "texts": {"normal": "...", "ablated": "...", "patched": "..."},
                        "metrics": {"normal": {"distinct_1": 0.8, "repeated_3gram_rate": 0.1}, ...}}, ...]
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure as MplFigure

DPI = 80
PERMUTATIONS = 10_000
COLOURS = ("#3b6fb6", "#d9822b", "#3a9d5d", "#b03a48", "#7d5ba6", "#8c6d31")
LABELS = {
    "r_v": "R_V = PR(late) / PR(early) (ratio, unitless)",
    "tokens": "prompt length (tokens)",
    "pr_early": "PR at the early layer (effective dimensions)",
    "pr_late": "PR at the late layer (effective dimensions)",
}
DrawError = (ValueError, TypeError, KeyError, IndexError)  # malformed data: shown on the page, never hidden


@dataclass(frozen=True)
class Figure:
    """One PNG figure of the page."""

    title: str
    caption: str
    png: bytes


@dataclass
class Drawn:
    """What `figures_for` made of one result: its figures, the data keys they used, and builder errors."""

    figures: list[Figure] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def label(metric: str) -> str:
    return LABELS.get(metric, f"{metric} (as recorded)")


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _canvas(panels: int, height: float = 3.4, width: float = 4.6) -> tuple[MplFigure, list[Axes]]:
    """A row of panels with fixed margins in inches (constrained layout costs more than the drawing)."""
    total = width * panels
    fig = MplFigure(figsize=(total, height))
    fig.subplots_adjust(left=0.8 / total, right=1 - 0.15 / total, bottom=0.8 / height, top=1 - 0.35 / height,
                        wspace=0.95 / (width - 0.95))
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _numbers(values: Any, name: str) -> np.ndarray:
    """A finite 1-d float array, or ValueError naming the field."""
    arr = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat list of numbers, got shape {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------- layout 1 --

def is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def primary_metric(records: Mapping[str, list[dict[str, Any]]]) -> str:
    """"r_v" when every record has it, else the first numeric field shared by all records (not "tokens")."""
    rows = [r for rs in records.values() for r in rs]
    shared = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
              and k != "tokens" and all(k in r for r in rows)]
    if not shared:
        raise ValueError(f"conditions {list(records)} share no numeric field to plot")
    return "r_v" if "r_v" in shared else shared[0]


def _column(records: list[dict[str, Any]], key: str, condition: str) -> np.ndarray:
    return _numbers([r.get(key) for r in records], f"data.{condition}[*].{key}")


def _strip(ax: Axes, groups: Mapping[str, np.ndarray], metric: str, rng: np.random.Generator) -> None:
    for i, (name, y) in enumerate(groups.items()):
        x = i + rng.uniform(-0.15, 0.15, size=y.size)
        ax.scatter(x, y, s=18, color=COLOURS[i % len(COLOURS)], alpha=0.8, label=f"{name} (n={y.size})")
        ax.hlines(np.nanmean(y), i - 0.3, i + 0.3, color="black", linewidth=1.5)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set(title=f"{metric} per prompt by condition (bar: mean)", xlabel="condition", ylabel=label(metric))


def _against_tokens(ax: Axes, groups: Mapping[str, tuple[np.ndarray, np.ndarray]], metric: str) -> None:
    for i, (name, (x, y)) in enumerate(groups.items()):
        ax.scatter(x, y, s=18, color=COLOURS[i % len(COLOURS)], alpha=0.8, label=name)
    ax.set(title=f"{metric} against prompt length", xlabel=label("tokens"), ylabel=label(metric))
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
    ax.axvline(observed, color="#b03a48", linewidth=2, label=f"observed = {observed:.4g}")
    ax.set(title="permutation null", xlabel=f"{statistic} ({units})", ylabel="relabellings (count)")
    ax.legend(fontsize=8)


def records_figures(records: Mapping[str, list[dict[str, Any]]], result: Mapping[str, Any], seed: int) -> list[Figure]:
    metric = primary_metric(records)
    values = {c: _column(rs, metric, c) for c, rs in records.items()}
    with_tokens = all("tokens" in r for rs in records.values() for r in rs)
    recorded = any(isinstance(v, dict) and v.get("kind") == "permutation_null" for v in result["data"].values())
    two = len(values) == 2 and min(v.size for v in values.values()) >= 2 and not recorded
    fig, axes = _canvas(1 + with_tokens + two)
    _strip(axes[0], values, metric, np.random.default_rng(seed))
    caption = f"{metric} of each prompt, by condition; " + ", ".join(f"{c}: n = {v.size}" for c, v in values.items())
    if with_tokens:
        _against_tokens(axes[1], {c: (_column(rs, "tokens", c), values[c]) for c, rs in records.items()}, metric)
    if two:
        (first, a), (second, b) = values.items()
        null, observed = permutation_null(a, b, seed), float(b.mean() - a.mean())
        _null_panel(axes[-1], null, observed, f"mean({second}) - mean({first})", metric)
        caption += (f". Permutation null recomputed for this page from the per-prompt {metric} in this result's "
                    f"data ({PERMUTATIONS:,} relabellings, numpy seed {seed}, the run's seed): two-sided "
                    f"p = {two_sided_p(null, observed):.4g}; the harness's own test is in the tables above")
    figures = [Figure(f"{metric} per prompt", caption + ".", _png(fig))]
    if all({"pr_early", "pr_late"} <= r.keys() for rs in records.values() for r in rs):
        figures.append(pr_figure(records, result))
    return figures


def pr_figure(records: Mapping[str, list[dict[str, Any]]], result: Mapping[str, Any]) -> Figure:
    params = result.get("protocol_params") or {}
    ticks = [f"early\n(layer {params.get('early_layer', '?')})", f"late\n(layer {params.get('late_layer', '?')})"]
    fig, axes = _canvas(len(records))
    top = max(max(_column(rs, "pr_early", c).max(), _column(rs, "pr_late", c).max()) for c, rs in records.items())
    for i, (ax, (condition, rs)) in enumerate(zip(axes, records.items(), strict=True)):
        early, late = _column(rs, "pr_early", condition), _column(rs, "pr_late", condition)
        colour = COLOURS[i % len(COLOURS)]
        ax.add_collection(LineCollection([[(0, e), (1, lt)] for e, lt in zip(early, late, strict=True)],
                                         colors=colour, alpha=0.35, linewidths=1))
        ax.plot([0, 1], [early.mean(), late.mean()], color="black", linewidth=2.5, marker="o", label="mean")
        ax.set_xticks([0, 1], ticks)
        ax.set_ylim(0, top * 1.08)
        ax.set(title=f"PR by layer: {condition} (n={early.size})", xlabel="layer (published indexing)",
               ylabel="participation ratio (effective dimensions)")
        ax.legend(fontsize=8)
    caption = ("Participation ratio of the value vectors over the token window, at the early and the late layer, "
               "one line per prompt. Layers are the claim's published indices, mapped to this model by "
               "relative depth.")
    return Figure("PR by layer", caption, _png(fig))


# ---------------------------------------------------------------------------------------------- layout 2 --

def numeric_columns(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Equal-length numeric lists including "tokens", or {} when the data is not in layout 2."""
    cols = {k: v for k, v in data.items() if isinstance(v, list) and len(v) >= 3
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)}
    if "tokens" not in cols or len(cols) < 2 or len({len(v) for v in cols.values()}) != 1:
        return {}
    return {k: _numbers(v, f"data.{k}") for k, v in cols.items()}


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
        for i, (name, mask) in enumerate(masks.items()):
            colour = COLOURS[i % len(COLOURS)]
            ax.scatter(x[mask], cols[y_name][mask], s=18, color=colour, alpha=0.8, label=f"{name} (n={mask.sum()})")
            _fit_line(ax, x[mask], cols[y_name][mask], colour)
        ax.set(title=f"{y_name} against prompt length", xlabel=label("tokens"), ylabel=label(y_name))
        ax.legend(fontsize=8)
    caption = (f"{', '.join(ys)} of each prompt against its token count"
               + (f", coloured by {group}, with a least-squares line per group." if group else "."))
    return Figure(f"{', '.join(ys)} against token count", caption, _png(fig))


# ------------------------------------------------------------------------------------------ layouts 3-5 --

def _series(spec: Mapping[str, Any], name: str, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    mean = _numbers(spec["mean"], f"{name}.mean")
    bounds = [_numbers(spec[k], f"{name}.{k}") if k in spec else None for k in ("ci_low", "ci_high")]
    for arr, what in ((mean, "mean"), *zip(bounds, ("ci_low", "ci_high"), strict=True)):
        if arr is not None and arr.size != n:
            raise ValueError(f"{name}.{what} has {arr.size} values for {n} layers")
    return mean, bounds[0], bounds[1]


def layer_profile_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    layers = _numbers(spec["layers"], f"data.{key}.layers")
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
        note = f"{what} as bars, dark where the CI excludes 0 ({int(significant.sum())} of {layers.size} layers)"
    else:
        ax.bar(layers, mean, color="#3b6fb6")
        note = f"{what} as bars (no CI recorded)"
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title=f"{what} per layer (error bars: CI)", xlabel="layer", ylabel=f"{what} ({units})")
    return note


def layer_head_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    values = np.asarray([[math.nan if v is None else v for v in row] for row in spec["values"]], dtype=float)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"data.{key}.values must be a non-empty (layer, head) list of lists; got {values.shape}")
    metric, units = str(spec.get("metric", key)), str(spec.get("units", "as recorded"))
    layers = _numbers(spec.get("layers", range(values.shape[0])), f"data.{key}.layers")
    limit = float(np.nanmax(np.abs(values))) or 1.0
    fig = MplFigure(figsize=(min(3 + 0.3 * values.shape[1], 12), min(2 + 0.16 * values.shape[0], 8)),
                    layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="lower",
                      extent=(-0.5, values.shape[1] - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
    fig.colorbar(image, ax=ax, label=f"{metric} ({units})")
    ax.set(title=f"{metric} per layer and head", xlabel="head", ylabel="layer")
    caption = (f"{metric} for each of {values.shape[0]} layers x {values.shape[1]} heads; colour scale symmetric "
               f"about 0 (|max| = {limit:.4g} {units}).")
    return Figure(f"{metric} per layer and head", caption, _png(fig))


def permutation_figure(key: str, spec: Mapping[str, Any]) -> Figure:
    null = _numbers(spec["null"], f"data.{key}.null")
    observed = float(spec["observed"])
    statistic, units = str(spec.get("statistic", "statistic")), str(spec.get("units", "as recorded"))
    fig, axes = _canvas(1)
    _null_panel(axes[0], null, observed, statistic, units)
    p = spec.get("p_value")
    caption = (f"{null.size:,} null draws recorded by the claim, with the observed {statistic}"
               + (f"; recorded p = {float(p):.4g}." if p is not None else "."))
    return Figure("permutation null", caption, _png(fig))


KINDS: dict[str, Callable[[str, Mapping[str, Any]], Figure]] = {
    "layer_profile": layer_profile_figure,
    "layer_head": layer_head_figure,
    "permutation_null": permutation_figure,
}


# ------------------------------------------------------------------------------------------- dispatcher --

def _attempt(drawn: Drawn, keys: Sequence[str], build: Callable[[], list[Figure]]) -> None:
    """Run one builder; data it cannot draw becomes a visible problem naming the keys, never a silent gap."""
    try:
        drawn.figures.extend(build())
    except DrawError as err:
        drawn.problems.append(f"data keys {', '.join(keys)}: {type(err).__name__}: {err}")
    drawn.used.update(keys)


def _one(build: Callable[[str, Mapping[str, Any]], Figure], key: str, value: Mapping[str, Any]) -> list[Figure]:
    return [build(key, value)]


def figures_for(result: Mapping[str, Any], seed: int = 0) -> Drawn:
    """Every figure the layouts above find in `result["data"]`."""
    data: Mapping[str, Any] = result.get("data") or {}
    drawn = Drawn()
    records = {k: v for k, v in data.items() if is_records(v) and k != "generations"}
    if records:
        _attempt(drawn, list(records), lambda: records_figures(records, result, seed))
    cols = numeric_columns(data)
    if cols:
        _attempt(drawn, list(cols), lambda: [columns_figure(cols)])
    for key, value in data.items():
        if isinstance(value, dict) and value.get("kind") in KINDS:
            _attempt(drawn, [key], partial(_one, KINDS[value["kind"]], key, value))
    return drawn
