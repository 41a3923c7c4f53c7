"""Role-conditioning metrics (claims-spec B.2): RFC/RSI from per-prompt head entropies, and their statistics.

The entropies themselves come from `harness.engine.attention` (in the forward pass) or, as a model-free reference,
from `harness.analysis.entropy` (materialised patterns). This module only aggregates them.

Shapes: per-prompt head entropies are `(prompt, layer, head)`; per-layer results are `(layer,)`. Inputs may
be numpy arrays or torch tensors; results are float64 numpy arrays.

Vocabulary: categories are data keys (`self_referent`, `neutral`, `confounder`); "threshold counts" are
counts of point estimates beyond +-0.01 (the source's "% layers compress"), not significance tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from harness.analysis.entropy import Array, Mask, checked

SELF, NEUTRAL, CONFOUNDER = "self_referent", "neutral", "confounder"
Aggregation = Literal["prompt_mean", "pooled"]
Metric = Literal["rfc", "rsi"]


@dataclass(frozen=True)
class PromptEntropies:
    """Head entropies of one prompt category under one model.

    head_means: (prompt, layer, head), each prompt's head value (mean over its queries);
    n_tokens: (prompt,), its number of query positions T, the weights of the pooled aggregation (b).
    """

    head_means: Array
    n_tokens: Array

    def __post_init__(self) -> None:
        means = checked(self.head_means, "head_means", "(prompt, layer, head)")
        tokens = checked(self.n_tokens, "n_tokens", "(prompt,)")
        if tokens.shape[0] != means.shape[0] or (tokens <= 0).any():
            raise ValueError(f"n_tokens {tokens.shape} must hold one positive count per prompt of head_means "
                             f"{means.shape}; pass the sequence length T of each prompt")
        object.__setattr__(self, "head_means", means)
        object.__setattr__(self, "n_tokens", tokens)

    def take(self, index: npt.NDArray[np.int64]) -> PromptEntropies:
        """The prompts at `index` (repeats allowed: bootstrap draws)."""
        return PromptEntropies(self.head_means[index], self.n_tokens[index])


def count_heads(values: Array, heads_counted: int | None) -> Array:
    """The first `heads_counted` heads of the last axis (the source's hard-coded 28), or all of them."""
    available = values.shape[-1]
    if heads_counted is None:
        return values
    if not 1 <= heads_counted <= available:
        raise ValueError(f"heads_counted={heads_counted} but the input has {available} heads; "
                         f"pass 1..{available}, or None to count all heads")
    return values[..., :heads_counted]


def category_entropy(cat: PromptEntropies, aggregation: Aggregation,
                     heads_counted: int | None = None) -> Array:
    """Category entropy: (layer,) prompt mean of head means (a), or (layer, head) token-weighted pool (b)."""
    means = count_heads(cat.head_means, heads_counted)  # (prompt, layer, head)
    if aggregation == "prompt_mean":
        return means.mean(axis=2).mean(axis=0)
    if aggregation == "pooled":
        weights = cat.n_tokens / cat.n_tokens.sum()
        return np.einsum("p,plh->lh", weights, means)
    raise ValueError(f"aggregation {aggregation!r} unknown; use 'prompt_mean' (a) or 'pooled' (b)")


def _entropies(**named: Array) -> None:
    shapes = {name: h.shape for name, h in named.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"entropy shapes differ: {shapes}; pass the same layers and heads per category")
    h = named["h_neutral"]
    if (h <= 0).any():
        raise ValueError(f"H_neutral is <= 0 at {np.argwhere(h <= 0)[0].tolist()}; RFC is undefined there")


def rfc(h_self: Array, h_neutral: Array) -> Array:
    """Role-Focus Coefficient 1 - H_self/H_neutral, elementwise (> 0: self prompts attend more narrowly)."""
    _entropies(h_self=h_self, h_neutral=h_neutral)
    return 1.0 - h_self / h_neutral


def rsi(h_self: Array, h_neutral: Array, h_conf: Array) -> Array:
    """Role-Sensitivity Index (H_conf - H_self)/H_neutral, elementwise."""
    _entropies(h_self=h_self, h_neutral=h_neutral, h_conf=h_conf)
    return (h_conf - h_self) / h_neutral


def _category(cats: Mapping[str, PromptEntropies], key: str) -> PromptEntropies:
    if key not in cats:
        raise ValueError(f"category {key!r} missing; got {sorted(cats)}: pass {SELF}, {NEUTRAL}, "
                         f"{CONFOUNDER}")
    return cats[key]


def layer_metric(cats: Mapping[str, PromptEntropies], metric: Metric = "rfc",
                 aggregation: Aggregation = "pooled", heads_counted: int | None = None) -> Array:
    """Per-layer RFC or RSI (layer,): ratio of category means (a), or mean over heads of head values (b)."""
    if metric not in ("rfc", "rsi"):
        raise ValueError(f"metric {metric!r} unknown; use 'rfc' or 'rsi'")
    keys = (SELF, NEUTRAL) if metric == "rfc" else (SELF, NEUTRAL, CONFOUNDER)
    h = [category_entropy(_category(cats, k), aggregation, heads_counted) for k in keys]
    value = rfc(h[0], h[1]) if metric == "rfc" else rsi(h[0], h[1], h[2])
    return value if aggregation == "prompt_mean" else value.mean(axis=-1)


def t_interval(center: Array, scale: Array, df: int, confidence: float = 0.95) -> tuple[Array, Array]:
    """scipy.stats.t.interval(confidence, df, loc=center, scale=scale), with a clear error for df < 1."""
    if df < 1:
        raise ValueError(f"df={df}: a t-interval needs df >= 1 (at least two heads or prompts)")
    low, high = stats.t.interval(confidence, df, loc=center, scale=scale)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


@dataclass(frozen=True)
class LayerStats:
    """Statistics over heads per layer (aggregation b): mean, std (ddof=1) and t-CI with df = n_heads - 1."""

    mean: Array
    std: Array
    ci_low: Array
    ci_high: Array
    n_heads: int


def layer_stats(values: object, heads_counted: int | None = None, confidence: float = 0.95) -> LayerStats:
    """LayerStats of per-head values (layer, head); n_heads from the shape unless heads_counted slices it."""
    heads = count_heads(checked(values, "values", "(layer, head)"), heads_counted)
    n = heads.shape[-1]
    if n < 2:
        raise ValueError(f"only {n} head counted; a std over heads needs >= 2")
    mean, std = heads.mean(axis=-1), heads.std(axis=-1, ddof=1)
    low, high = t_interval(mean, std / np.sqrt(n), n - 1, confidence)
    return LayerStats(mean, std, low, high, n)


@dataclass(frozen=True)
class HeadLevelRFC:
    """Aggregation (b): per-head RFC/RSI (layer, head) and their statistics over heads per layer."""

    rfc: LayerStats
    rsi: LayerStats
    rfc_heads: Array
    rsi_heads: Array


def head_level_rfc(cats: Mapping[str, PromptEntropies], heads_counted: int | None = None,
                   confidence: float = 0.95) -> HeadLevelRFC:
    """Aggregation (b) as compare_base_instruct did it, with heads counted from the input unless told."""
    h = [count_heads(category_entropy(_category(cats, k), "pooled"), heads_counted)  # (layer, head)
         for k in (SELF, NEUTRAL, CONFOUNDER)]
    rfc_h, rsi_h = rfc(h[0], h[1]), rsi(h[0], h[1], h[2])
    rfc_stats, rsi_stats = layer_stats(rfc_h, None, confidence), layer_stats(rsi_h, None, confidence)
    return HeadLevelRFC(rfc_stats, rsi_stats, rfc_h, rsi_h)


@dataclass(frozen=True)
class LayerComparison:
    """Instruct - base per layer with the published head-level CI; `significant` = CI excludes 0."""

    diff: Array
    se: Array
    ci_low: Array
    ci_high: Array
    df: int
    significant: Mask


def compare_layers(base: LayerStats, instruct: LayerStats, confidence: float = 0.95) -> LayerComparison:
    """diff = mean_i - mean_b, SE = sqrt(sd_b^2/n_b + sd_i^2/n_i), t-CI with df = min(n_b, n_i) - 1."""
    if base.mean.shape != instruct.mean.shape:
        raise ValueError(f"base has {base.mean.shape} layers, instruct {instruct.mean.shape}; "
                         "compare two models of one family")
    diff = instruct.mean - base.mean
    se = np.sqrt(base.std**2 / base.n_heads + instruct.std**2 / instruct.n_heads)
    df = min(base.n_heads, instruct.n_heads) - 1
    low, high = t_interval(diff, se, df, confidence)
    return LayerComparison(diff, se, low, high, df, (low > 0) | (high < 0))


def bonferroni_significant(diff: Array, se: Array, df: int, alpha: float = 0.05) -> Mask:
    """|diff|/SE > t(1 - alpha/(2L), df) over the L layers: two-sided, Bonferroni-corrected."""
    critical = stats.t.ppf(1.0 - alpha / (2.0 * diff.size), df)
    return np.abs(diff) / se > critical


@dataclass(frozen=True)
class ThresholdCounts:
    """Counts of point estimates beyond a threshold (the source's "% compress"); NOT a significance test."""

    below: int
    above: int
    near_zero: int
    n: int
    threshold: float = 0.01


def threshold_counts(diff: object, threshold: float = 0.01) -> ThresholdCounts:
    """#(x < -threshold), #(x > +threshold), #(|x| <= threshold), as cross_model_correlation counted."""
    x = checked(diff, "diff", "(layer,)")
    return ThresholdCounts(int((x < -threshold).sum()), int((x > threshold).sum()),
                           int((np.abs(x) <= threshold).sum()), x.size, threshold)


@dataclass(frozen=True)
class UnstableRule:
    """When a layer's RFC denominator is unstable (W-B4).

    max_abs_rfc: |RFC| above this means H_self > (1 + max_abs_rfc) H_neutral (default 1: H_self > 2 H_neutral;
    RFC > 1 would need a negative entropy): the denominator is small, so entropy noise moves RFC a lot.
    min_h_neutral: H_neutral below this many nats (any head, where per-head values are given).
    """

    max_abs_rfc: float = 1.0
    min_h_neutral: float = 0.05


def unstable_denominator(rfc_values: object, h_neutral: object | None = None,
                         rule: UnstableRule | None = None) -> Mask:
    """(layer,) True where `rule` flags the layer: |RFC| too large, or (if given) H_neutral too small."""
    rule = rule or UnstableRule()
    flags = np.abs(checked(rfc_values, "rfc_values", "(layer,)")) > rule.max_abs_rfc
    if h_neutral is not None:
        h = np.asarray(h_neutral, dtype=np.float64)
        if h.shape[:1] != flags.shape or not np.isfinite(h).all():
            raise ValueError(f"h_neutral (shape {h.shape}) must be finite (layer,) or (layer, head) values "
                             f"for the {flags.size} layers of rfc_values; pass those of the same model")
        flags = flags | (h.reshape(flags.size, -1) < rule.min_h_neutral).any(axis=1)
    return flags


@dataclass(frozen=True)
class FDRResult:
    """Benjamini-Hochberg adjusted p-values and rejections at `alpha`, in input order."""

    adjusted: Array
    rejected: Mask
    alpha: float


def benjamini_hochberg(p_values: object, alpha: float = 0.05) -> FDRResult:
    """scipy.stats.false_discovery_control (BH) over the layers, and which layers it rejects at `alpha`."""
    p = checked(p_values, "p_values", "(layer,)")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p_values must lie in [0, 1]; got min {p.min()}, max {p.max()}")
    adjusted = np.asarray(stats.false_discovery_control(p, method="bh"), dtype=np.float64)
    return FDRResult(adjusted, adjusted <= alpha, alpha)


def cohens_d(a: object, b: object) -> Array:
    """Cohen's d along axis 0 (prompts) with the pooled sd (ddof=1); NaN where the pooled sd is 0."""
    x, y = checked(a, "a", "(prompt, layer, head)"), checked(b, "b", "(prompt, layer, head)")
    if x.shape[1:] != y.shape[1:] or min(len(x), len(y)) < 2:
        raise ValueError(f"shapes {x.shape} and {y.shape}: need equal (layer, head) and >= 2 prompts each")
    n1, n2 = len(x), len(y)
    pooled = np.sqrt(((n1 - 1) * x.var(0, ddof=1) + (n2 - 1) * y.var(0, ddof=1)) / (n1 + n2 - 2))
    diff = x.mean(0) - y.mean(0)
    return np.divide(diff, pooled, out=np.full_like(diff, np.nan), where=pooled > 0)


def rank_heads(d: Array, top_k: int) -> list[tuple[int, int]]:
    """The top_k (layer, head) pairs by |d|, largest first; NaN last."""
    order = np.argsort(-np.abs(d), axis=None, kind="stable")[:top_k]
    return [(int(layer), int(head)) for layer, head in zip(*np.unravel_index(order, d.shape), strict=True)]


@dataclass(frozen=True)
class HeldOutRanking:
    """Heads ranked on a discovery split of the prompts and checked on the held-out split (W-B7)."""

    d_discovery: Array
    d_held_out: Array
    top_heads: list[tuple[int, int]]
    top_k_overlap: float
    rank_correlation: float


def held_out_head_ranking(self_values: object, neutral_values: object, top_k: int = 10,
                          seed: int = 0) -> HeldOutRanking:
    """Split each category's prompts in two halves (seeded), rank heads by d on one, check on the other."""
    rng = np.random.default_rng(seed)
    data = {SELF: checked(self_values, "self_values", "(prompt, layer, head)"),
            NEUTRAL: checked(neutral_values, "neutral_values", "(prompt, layer, head)")}
    splits = {k: np.array_split(rng.permutation(len(v)), 2) for k, v in data.items()}
    d = [cohens_d(data[SELF][splits[SELF][i]], data[NEUTRAL][splits[NEUTRAL][i]]) for i in (0, 1)]
    top, held = rank_heads(d[0], top_k), set(rank_heads(d[1], top_k))
    finite = np.isfinite(d[0]) & np.isfinite(d[1])
    a, b = d[0][finite], d[1][finite]
    rho = float(stats.spearmanr(a, b).statistic) if a.size > 2 and np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan
    return HeldOutRanking(d[0], d[1], top, len(held.intersection(top)) / len(top), rho)
