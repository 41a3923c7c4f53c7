"""Figures of the claims page, drawn from a result's `data` by its layout, never by claim id.

`figures_for(result)` looks at one protocol result's `data`, recognises the layouts below, and returns PNG
figures (drawn by harness.report.plots) with a title, axis labels and units, plus the data keys it drew. A new
claim gets figures without touching this code by emitting one of these layouts; other keys are listed on
the page as "other data". Malformed data never stops the page: the builder's error is shown instead.

Expected `data` layouts
-----------------------
1. Per-item records by condition (emitted by rv_contraction). Every key whose value is a list of objects
   with numeric fields and no text but "prompt" is a condition; numeric fields common to all are metrics::

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

6. Generated texts side by side (l31_ablation_repetition, residual_patch_collapse): any key holding a list
   of objects with a text field other than "prompt". harness.report.htmlparts renders it as an HTML table, one row
   per object and one column per field, texts side by side, numbers and nested metrics beside them. With
   two or more fields holding objects of the same numbers (metrics_normal, metrics_ablated), each metric is
   also drawn per text by condition. An object of equal-length lists of texts is a table by column::

       "prompts": [{"prompt": "...", "normal": "...", "ablated": "...", "patched": "...",
                    "metrics_normal": {"distinct_1": 0.8, "repeated_3gram_rate": 0.1}, ...}, ...]
       "texts": {"14": ["text of prompt 0", ...], "13": [...]}

Any other key (counts, settings, token ids) is listed under "other data" on the page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from harness.report.plots import (
    Figure,
    as_numbers,
    columns_figure,
    is_number,
    layer_head_figure,
    layer_profile_figure,
    metric_fields,
    permutation_figure,
    records_figures,
    text_metrics_figure,
)

DrawError = (ValueError, TypeError, KeyError, IndexError, ArithmeticError)  # shown on the page, never hidden


@dataclass
class Drawn:
    """What `figures_for` made of one result: its figures, the data keys they used, and builder errors."""

    figures: list[Figure] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def is_objects(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def text_fields(value: list[dict[str, Any]]) -> list[str]:
    """Fields holding text other than "prompt": such objects are generated texts (layout 6), not layout 1."""
    return [k for k, v in value[0].items() if isinstance(v, str) and k != "prompt"]


def is_records(value: Any) -> bool:
    """Layout 1: a list of objects with a numeric field and no text but the prompt."""
    return is_objects(value) and not text_fields(value) and any(is_number(v) for v in value[0].values())


def is_texts(value: Any) -> bool:
    """Layout 6: a list of objects with a text field other than "prompt"."""
    return is_objects(value) and bool(text_fields(value))


def is_text_columns(value: Any) -> bool:
    """Layout 6, by column: an object of equal-length lists of texts (e.g. texts per ablated layer)."""
    return (isinstance(value, dict) and bool(value) and all(isinstance(v, list) and v for v in value.values())
            and all(isinstance(t, str) for v in value.values() for t in v)
            and len({len(v) for v in value.values()}) == 1)


def text_rows(value: Any) -> list[dict[str, Any]]:
    """Layout 6 as rows: the list of objects itself, or one row per index of the text columns."""
    if is_text_columns(value):
        return [{k: v[i] for k, v in value.items()} for i in range(len(next(iter(value.values()))))]
    return list(value) if is_texts(value) else []


def numeric_columns(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Equal-length numeric lists including "tokens", or {} when the data is not in layout 2."""
    cols = {k: v for k, v in data.items() if isinstance(v, list) and len(v) >= 3
            and all(is_number(x) for x in v)}
    if "tokens" not in cols or len(cols) < 2 or len({len(v) for v in cols.values()}) != 1:
        return {}
    return {k: as_numbers(v, f"data.{k}") for k, v in cols.items()}


Builder = Callable[[str, Mapping[str, Any]], Figure]
KINDS: dict[str, Builder] = {
    "layer_profile": layer_profile_figure,
    "layer_head": layer_head_figure,
    "permutation_null": permutation_figure,
}


# ------------------------------------------------------------------------------------------- dispatcher --

def _attempt(drawn: Drawn, keys: Sequence[str], build: Callable[[], list[Figure]],
             consume: bool = True) -> None:
    """Run one builder; data it cannot draw becomes a visible problem naming the keys, never a silent gap.
    `consume=False` leaves the keys for the page's tables (generated texts are drawn and also listed)."""
    try:
        drawn.figures.extend(build())
    except DrawError as err:
        drawn.problems.append(f"data keys {', '.join(keys)}: {type(err).__name__}: {err}")
    if consume:
        drawn.used.update(keys)


def _one(build: Builder, key: str, value: Mapping[str, Any]) -> list[Figure]:
    return [build(key, value)]


def _texts(key: str, rows: list[dict[str, Any]], seed: int) -> list[Figure]:
    return [text_metrics_figure(key, rows, seed)]


def figures_for(result: Mapping[str, Any], seed: int = 0) -> Drawn:
    """Every figure the layouts above find in `result["data"]`."""
    data: Mapping[str, Any] = result.get("data") or {}
    drawn = Drawn()
    records = {k: v for k, v in data.items() if is_records(v)}
    if records:
        _attempt(drawn, list(records), lambda: records_figures(records, result, seed))
    cols = numeric_columns(data)
    if cols:
        _attempt(drawn, list(cols), lambda: [columns_figure(cols)])
    for key, value in data.items():
        if isinstance(value, dict) and value.get("kind") in KINDS:
            _attempt(drawn, [key], partial(_one, KINDS[value["kind"]], key, value))
        elif is_texts(value) and len(metric_fields(value)) >= 2:
            _attempt(drawn, [key], partial(_texts, key, value, seed), consume=False)
    return drawn
