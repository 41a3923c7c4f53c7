"""Correlation of two per-layer profiles (claims-spec B.2 (c), W-B6), with nulls that keep the layer order.

The source correlated Llama's and Mistral's per-layer dRFC with scipy's Pearson and Spearman tests, whose
p-values assume independent layers. Neighbouring layers are alike, so that p is too small. Two nulls that keep
each profile's autocorrelation are reported beside it:
- circular shift: y rotated by each of its n shifts (the identity included); exact, with n arrangements;
- block permutation: y cut into consecutive blocks of `block` layers whose order is shuffled (seeded draws);
  it keeps the dependence within a block and breaks the alignment between the profiles.
Both are two-sided on |r| and count the observed arrangement, so p >= 1/(number of arrangements).

Beside the p-values, an effect with a CI that respects the same dependence: `block_bootstrap_r` resamples
(x, y) layer pairs in runs of `block` consecutive layers (a circular block bootstrap) and gives a percentile
interval of r; `fisher_n_for_power` says how many independent layers a test at a given r would need, and
`misaligned_iid_rejections` how often the iid test calls deliberately misaligned profiles (y rotated beyond the
autocorrelation range) significant: its false-positive rate on this pair's own autocorrelation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.analysis.entropy import Array, checked
from harness.analysis.stats import Interval

TIE = 1e-12  # |r| within this of the observed counts as reaching it (float noise of a reordered sum)


@dataclass(frozen=True)
class ProfileCorrelation:
    """Pearson and Spearman (scipy, iid p) of two profiles, with the circular-shift and block nulls of r."""

    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    shift_p: float
    block_p: float
    block_length: int
    n_permutations: int
    n_layers: int


def profiles(x: object, y: object) -> tuple[Array, Array]:
    a, b = checked(x, "x", "(layer,)"), checked(y, "y", "(layer,)")
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"profiles have {a.size} and {b.size} layers; correlate >= 3 layers of equal count "
                         "(families with different depths cannot be paired layer by layer)")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("a profile is constant, so its correlation is undefined; check the input table")
    return a, b


def _r_rows(a: Array, rows: Array) -> Array:
    """Pearson r of `a` with each row of `rows` (rows are reorderings of one profile: same mean and sd)."""
    za = (a - a.mean()) / a.std()
    zb = (rows - rows.mean(-1, keepdims=True)) / rows.std(-1, keepdims=True)
    return np.asarray(zb @ za / a.size, dtype=np.float64)


def _p(null: Array, observed: float) -> float:
    return float((1 + np.sum(np.abs(null) >= abs(observed) - TIE)) / (null.size + 1))


def circular_shift_p(x: object, y: object) -> float:
    """Share of all n cyclic shifts of y (the identity included) whose |Pearson r| with x >= the observed."""
    a, b = profiles(x, y)
    r = _r_rows(a, np.stack([np.roll(b, s) for s in range(a.size)]))
    return float(np.mean(np.abs(r) >= np.abs(r[0]) - TIE))


def block_permutation_p(x: object, y: object, block: int, n_permutations: int = 10_000, seed: int = 0) -> float:
    """(1 + #draws with |r| >= observed) / (draws + 1), y's blocks of `block` consecutive layers shuffled."""
    a, b = profiles(x, y)
    if not 1 <= block < a.size or n_permutations < 1:
        raise ValueError(f"block={block}, n_permutations={n_permutations}: need 1 <= block < {a.size} layers "
                         "(at least two blocks) and >= 1 permutation")
    pieces = [np.arange(start, min(start + block, a.size)) for start in range(0, a.size, block)]
    rng = np.random.default_rng(seed)
    orders = rng.permuted(np.tile(np.arange(len(pieces)), (n_permutations, 1)), axis=1)
    index = np.stack([np.concatenate([pieces[i] for i in order]) for order in orders])  # (draw, layer)
    observed = _r_rows(a, b[None])[0]
    return _p(_r_rows(a, b[index]), observed)


def correlate_profiles(x: object, y: object, block: int = 4, n_permutations: int = 10_000,
                       seed: int = 0) -> ProfileCorrelation:
    """Pearson and Spearman (scipy, the source's iid p) with the circular-shift and block-permutation p."""
    a, b = profiles(x, y)
    pearson, spearman = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return ProfileCorrelation(float(pearson.statistic), float(pearson.pvalue), float(spearman.statistic),
                              float(spearman.pvalue), circular_shift_p(a, b),
                              block_permutation_p(a, b, block, n_permutations, seed), block, n_permutations,
                              a.size)


def _pearson_rows(a: Array, b: Array) -> Array:
    """Pearson r of each row of `a` with the same row of `b` (draw, layer); NaN where a row is constant."""
    da, db = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    denominator = np.sqrt((da * da).sum(-1) * (db * db).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((da * db).sum(-1) / denominator, dtype=np.float64)


@dataclass(frozen=True)
class BootstrapR:
    """Pearson r with its circular block-bootstrap percentile interval; `degenerate` draws (a resampled
    profile that is constant, so r is undefined) are counted and left out of the interval."""

    interval: Interval
    block_length: int
    n_resamples: int
    degenerate: int


def block_bootstrap_r(x: object, y: object, block: int, confidence: float, n_resamples: int = 10_000,
                      seed: int = 0) -> BootstrapR:
    """r of x and y with a percentile interval from layer pairs resampled in circular runs of `block` layers.

    Each draw concatenates ceil(n / block) runs, each starting at a uniformly drawn layer and wrapping past the
    last one, and keeps the first n layers (Politis and Romano's circular block bootstrap). `block = 1` is the
    ordinary (iid) pairs bootstrap. The SE is the standard deviation of the draws.
    """
    a, b = profiles(x, y)
    if not 1 <= block < a.size or n_resamples < 2 or not 0 < confidence < 1:
        raise ValueError(f"block={block}, n_resamples={n_resamples}, confidence={confidence}: need 1 <= block < "
                         f"{a.size} layers, >= 2 resamples and a confidence in (0, 1)")
    rng = np.random.default_rng(seed)
    runs = -(-a.size // block)
    starts = rng.integers(0, a.size, size=(n_resamples, runs))
    index = ((starts[..., None] + np.arange(block)) % a.size).reshape(n_resamples, -1)[:, : a.size]  # (draw, layer)
    draws = _pearson_rows(a[index], b[index])
    kept = draws[np.isfinite(draws)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(kept, [tail, 1 - tail])
    estimate = float(stats.pearsonr(a, b).statistic)
    interval = Interval(estimate, float(low), float(high), float(kept.std(ddof=1)), float(a.size - 2), confidence)
    return BootstrapR(interval, block, n_resamples, int(draws.size - kept.size))


def fisher_n_for_power(r: float, alpha: float, power: float = 0.8) -> int | None:
    """Independent pairs a one-sided test of rho = 0 needs to detect `r` with `power` (Fisher's z:
    n = ((z_(1-alpha) + z_power) / atanh|r|)^2 + 3, rounded up); None for r = 0 or |r| >= 1."""
    if not 0 < abs(r) < 1:
        return None
    z = (stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) / np.arctanh(abs(r))
    return int(np.ceil(z * z + 3))


def misaligned_iid_rejections(x: object, y: object, min_shift: int, alpha: float) -> tuple[int, int]:
    """(rejections, arrangements): of the rotations of y by min_shift .. n - min_shift layers (misaligned by at
    least `min_shift` in either direction), how many scipy.stats.pearsonr (two-sided, iid p) calls significant at
    `alpha`. With independent layers about alpha of them would; autocorrelated profiles give far more."""
    a, b = profiles(x, y)
    if not 1 <= min_shift <= a.size // 2:
        raise ValueError(f"min_shift={min_shift}: need 1 <= min_shift <= {a.size // 2} for {a.size} layers")
    shifts = range(min_shift, a.size - min_shift + 1)
    rejected = sum(bool(stats.pearsonr(a, np.roll(b, s)).pvalue < alpha) for s in shifts)
    return rejected, len(shifts)
