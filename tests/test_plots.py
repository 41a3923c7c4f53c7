"""harness/report/plots.py: every figure of the claims page is legible at any data scale.

Each layout of harness.report.figures is drawn from data over seven orders of magnitude, then the drawn
matplotlib figure is inspected: no tick label overlaps another on the same axis, and no text (title, axis
label, tick label, exponent, legend) reaches outside the saved canvas, where it would be cut off.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.text import Text

from harness.report import plots
from harness.report.figures import figures_for

SCALES = (1e-5, 3e-4, 0.02, 1234.5)  # data spreads from fp16 noise to raw counts
LAYERS = (4, 32)  # a tiny model and a published 7-8B model


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MplFigure]]:
    """The matplotlib figures the builders save, in order."""
    kept: list[MplFigure] = []
    real = plots._png

    def keep(fig: MplFigure) -> bytes:
        kept.append(fig)
        return real(fig)

    monkeypatch.setattr(plots, "_png", keep)
    yield kept


def shown_tick_labels(axis: Axis) -> list[Text]:
    """Tick labels inside the axis's view (matplotlib keeps spare ticks beyond it, never drawn)."""
    low, high = sorted(axis.get_view_interval())
    slack = (high - low) * 1e-9
    return [label for label, loc in zip(axis.get_majorticklabels(), axis.get_majorticklocs(), strict=True)
            if low - slack <= loc <= high + slack and label.get_visible() and label.get_text().strip()]


def layout_problems(fig: MplFigure) -> list[str]:
    """Texts cut off at the canvas edge and tick labels that overlap, as readable lines."""
    FigureCanvasAgg(fig)
    fig.set_dpi(plots.DPI)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)]
    ticks = {id(t) for axis in axes for t in (*axis.get_majorticklabels(), *axis.get_minorticklabels())}
    shown = {id(t) for axis in axes for t in shown_tick_labels(axis)}
    problems = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip() or (id(text) in ticks and id(text) not in shown):
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > fig.bbox.x1 + 1 or box.y1 > fig.bbox.y1 + 1:
            problems.append(f"cut off: {text.get_text()!r} at {tuple(round(v) for v in box.extents)} "
                            f"on a {fig.bbox.width:.0f}x{fig.bbox.height:.0f} canvas")
    for axis in axes:
        labels = shown_tick_labels(axis)
        for a, b in itertools.combinations(labels, 2):
            if a.get_window_extent(renderer).overlaps(b.get_window_extent(renderer)):
                problems.append(f"tick labels overlap: {a.get_text()!r} and {b.get_text()!r}")
    return problems


def records(rng: np.random.Generator, scale: float) -> dict[str, Any]:
    """Layout 1 with PR per layer: two conditions, R_V near 0.96 apart by `scale`."""
    def rows(shift: float) -> list[dict[str, Any]]:
        return [{"prompt": f"p{i}", "r_v": 0.96 + shift + float(rng.normal(0, scale)), "tokens": 9 + i,
                 "pr_early": 3 + float(rng.random()), "pr_late": 2 + float(rng.random())} for i in range(8)]
    return {"protocol": "as_published", "kind": "as_published", "data": {"recursive": rows(0), "baseline": rows(scale)},
            "protocol_params": {"early_layer": 5, "late_layer": 27, "site": "attn.v"}}


def permutation(rng: np.random.Generator, scale: float) -> dict[str, Any]:
    null = rng.normal(0.3 * scale, scale, 2_000)
    return {"protocol": "control:permutation", "kind": "control",
            "data": {"permutation": {"kind": "permutation_null", "statistic": "mean(baseline) - mean(recursive)",
                                     "units": "R_V ratio", "null": null.tolist(), "observed": 2.7 * scale,
                                     "p_value": 0.003}}}


def columns(rng: np.random.Generator, scale: float) -> dict[str, Any]:
    n = 12
    return {"protocol": "control:length_covariate", "kind": "control",
            "data": {"r_v": (1 + rng.normal(0, scale, n)).tolist(), "tokens": list(range(10, 10 + n)),
                     "recursive": [float(i % 2) for i in range(n)]}}


def profile(rng: np.random.Generator, scale: float, n_layers: int) -> dict[str, Any]:
    def series() -> dict[str, list[float]]:
        mean = rng.normal(0, scale, n_layers)
        return {"mean": mean.tolist(), "ci_low": (mean - scale).tolist(), "ci_high": (mean + scale).tolist()}
    return {"protocol": "as_published", "kind": "as_published",
            "data": {"rfc": {"kind": "layer_profile", "metric": "RFC", "units": "nats", "layers": list(range(n_layers)),
                             "series": {"base": series(), "instruct": series()},
                             "diff": {"label": "dRFC = instruct - base", **series()}},
                     "heads": {"kind": "layer_head", "metric": "H(instruct) - H(base)", "units": "nats",
                               "values": rng.normal(0, scale, (n_layers, n_layers)).tolist(),
                               "layers": list(range(n_layers))}}}


def texts(rng: np.random.Generator, scale: float) -> dict[str, Any]:
    def metrics() -> dict[str, float]:
        return {"distinct_1": float(rng.random() * scale), "repeated_3gram_rate": float(rng.random() * scale),
                "longest_run": float(rng.integers(1, 40)), "n_units": 40.0}
    rows = [{"prompt": "p", "normal": "a b c", "ablated": "a a a", "metrics_normal": metrics(),
             "metrics_ablated": metrics()} for _ in range(6)]
    return {"protocol": "as_published", "kind": "as_published", "data": {"prompts": rows}}


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"scale{s:g}")
def test_every_layout_is_legible_at_every_scale(scale: float, drawn: list[MplFigure]) -> None:
    rng = np.random.default_rng(0)
    results = [records(rng, scale), permutation(rng, scale), columns(rng, scale), texts(rng, scale),
               *(profile(rng, scale, n) for n in LAYERS)]
    for result in results:
        assert figures_for(result, seed=0).problems == []
    assert len(drawn) == 9  # 2 from the records, 1 each from the next three, 2 per profile
    problems = {i: found for i, fig in enumerate(drawn) if (found := layout_problems(fig))}
    assert problems == {}


def test_the_checker_sees_a_cut_label_and_an_overlap() -> None:
    """The inspection itself can fail: a label past the edge and two ticks on one spot are both reported."""
    fig = MplFigure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_xticks([0.0, 0.001], ["a long tick label", "another long one"])
    ax.set_xlim(0, 1)
    ax.set_ylabel("y", labelpad=400)
    found = layout_problems(fig)
    assert any(p.startswith("tick labels overlap") for p in found)
    assert any(p.startswith("cut off: 'y'") for p in found)
