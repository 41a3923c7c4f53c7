"""Tests of harness/analysis/profiles.py: two per-layer profiles correlated with scipy's iid p and with the
circular-shift and block-permutation nulls that keep each profile's layer autocorrelation (W-B6).

The key property: for two smooth, independent profiles the iid p rejects far more often than alpha, while
both layer-aware nulls stay near alpha. Beside them: the circular block bootstrap of r (the iid case agrees with
scipy's paired bootstrap; blocks cut the false "effect" rate of smooth profiles), Fisher's n for power (Cohen's
table), and the iid test's rejections of deliberately misaligned profiles (about alpha for white noise, far
more for smooth profiles).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.analysis.profiles import (
    block_bootstrap_r,
    block_permutation_p,
    circular_shift_p,
    correlate_profiles,
    fisher_n_for_power,
    misaligned_iid_rejections,
)

ALPHA = 0.05


def test_correlate_profiles_matches_scipy_and_the_nulls() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=32)
    y = x + rng.normal(scale=0.5, size=32)
    res = correlate_profiles(x, y, block=4, n_permutations=999)
    assert res.pearson_r == pytest.approx(stats.pearsonr(x, y).statistic)
    assert res.pearson_p == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert res.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert res.shift_p == pytest.approx(1 / 32)  # no other cyclic shift correlates as strongly
    assert res.block_p == pytest.approx(1 / 1000)  # nor any block order of 999
    smooth = np.sin(np.linspace(0, 2 * np.pi, 32, endpoint=False))
    assert circular_shift_p(smooth, smooth) == pytest.approx(2 / 32)  # the half-period shift gives r = -1
    with pytest.raises(ValueError, match="32 and 28 layers"):
        correlate_profiles(x, y[:28])
    with pytest.raises(ValueError, match="constant"):
        correlate_profiles(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="at least two blocks"):
        block_permutation_p(x, y, block=32)


def test_block_permutation_is_seeded_and_reorders_whole_blocks() -> None:
    x = np.arange(12.0)
    y = np.repeat([3.0, 1.0, 2.0], 4)  # three blocks of 4: a block order is all that can change
    first = block_permutation_p(x, y, block=4, n_permutations=500, seed=3)
    assert first == block_permutation_p(x, y, block=4, n_permutations=500, seed=3)
    # 3! = 6 block orders, each drawn ~1/6 of the time; only the identity and its mirror-in-|r| reach |r_obs|
    r = [abs(np.corrcoef(x, np.repeat(order, 4))[0, 1]) for order in ([3, 1, 2], [1, 2, 3], [2, 1, 3],
                                                                     [1, 3, 2], [3, 2, 1], [2, 3, 1])]
    share = np.mean(np.array(r) >= r[0] - 1e-12)
    assert first == pytest.approx(share, abs=0.06)


def smooth_profiles(n: int, draws: int, seed: int, width: float = 3.0) -> np.ndarray:
    """(draws, 2, n) independent profiles with a Gaussian autocorrelation of `width` layers."""
    rng = np.random.default_rng(seed)
    kernel = np.exp(-0.5 * (np.arange(-10, 11) / width) ** 2)
    noise = rng.normal(size=(draws, 2, n + kernel.size - 1))
    return np.stack([[np.convolve(row, kernel, "valid") for row in pair] for pair in noise])


def test_layer_aware_nulls_hold_alpha_where_the_iid_p_does_not() -> None:
    # 200 pairs of independent, smooth 32-layer profiles: any rejection is a false positive.
    pairs = smooth_profiles(32, 200, seed=0)
    iid = np.mean([stats.pearsonr(a, b).pvalue < ALPHA for a, b in pairs])
    shift = np.mean([circular_shift_p(a, b) < ALPHA for a, b in pairs])
    block = np.mean([block_permutation_p(a, b, block=8, n_permutations=199, seed=i) < ALPHA
                     for i, (a, b) in enumerate(pairs)])
    assert iid > 0.2, f"iid Pearson p rejected {iid:.2f} of independent smooth profiles (expected >> {ALPHA})"
    assert shift <= 0.1 and block <= 0.15, (shift, block)


def test_the_iid_block_bootstrap_agrees_with_scipys_paired_bootstrap() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=32)
    y = 0.5 * x + rng.normal(size=32)
    ours = block_bootstrap_r(x, y, block=1, confidence=0.9, n_resamples=20_000, seed=1).interval
    theirs = stats.bootstrap((x, y), lambda a, b: stats.pearsonr(a, b).statistic, paired=True, vectorized=False,
                             n_resamples=4000, confidence_level=0.9, method="percentile",
                             rng=np.random.default_rng(2)).confidence_interval
    assert ours.estimate == pytest.approx(stats.pearsonr(x, y).statistic)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=0.03)
    assert ours.low < ours.estimate < ours.high and ours.confidence == 0.9


def test_the_block_bootstrap_resamples_runs_and_counts_degenerate_draws() -> None:
    x = np.arange(12.0)
    same = block_bootstrap_r(x, 2 * x + 1, block=3, confidence=0.9, n_resamples=500).interval
    assert (same.low, same.high) == pytest.approx((1.0, 1.0))  # every draw keeps a perfect line
    step = np.r_[np.zeros(10), 1.0, 2.0]  # a draw that misses the last two layers is constant: no r
    found = block_bootstrap_r(x, step, block=1, confidence=0.9, n_resamples=2000, seed=3)
    assert found.degenerate == pytest.approx(2000 * (10 / 12) ** 12, rel=0.5) and found.degenerate > 0
    assert block_bootstrap_r(x, step, 1, 0.9, 2000, seed=3) == found  # seeded
    with pytest.raises(ValueError, match="1 <= block < 12"):
        block_bootstrap_r(x, step, block=12, confidence=0.9)


def test_blocks_widen_the_interval_of_smooth_profiles_towards_the_nominal_rate() -> None:
    """200 pairs of independent smooth profiles: a 90% interval's low end should exceed 0 in 5% of them.
    The iid pairs bootstrap does so far more often; 6-layer blocks halve that (they still under-cover at 32
    layers, so an interval that covers 0 is the conservative reading)."""
    pairs = smooth_profiles(32, 200, seed=1)
    rate = {b: np.mean([block_bootstrap_r(x, y, b, 0.9, 1000, i).interval.low > 0 for i, (x, y) in
                        enumerate(pairs)]) for b in (1, 6)}
    assert rate[1] > 0.25 and rate[6] < 0.6 * rate[1], rate


def test_fisher_n_for_power_matches_the_textbook_figure() -> None:
    assert fisher_n_for_power(0.3, alpha=0.05) == 68  # Cohen (1988), one-tailed, power 0.8
    assert fisher_n_for_power(-0.3, alpha=0.05) == 68 and fisher_n_for_power(0.0, 0.05) is None
    assert fisher_n_for_power(0.5, alpha=0.05) < fisher_n_for_power(0.3, alpha=0.05)


def test_the_iid_test_calls_misaligned_smooth_profiles_significant() -> None:
    rng = np.random.default_rng(0)
    noise = [misaligned_iid_rejections(rng.normal(size=32), rng.normal(size=32), 6, ALPHA) for _ in range(200)]
    smooth = [misaligned_iid_rejections(a, b, 6, ALPHA) for a, b in smooth_profiles(32, 200, seed=1)]
    assert all(n == 21 for _, n in noise + smooth)  # rotations by 6 .. 26 layers
    assert np.mean([r / n for r, n in noise]) == pytest.approx(ALPHA, abs=0.02)
    assert np.mean([r / n for r, n in smooth]) > 0.3
    with pytest.raises(ValueError, match="min_shift=17"):
        misaligned_iid_rejections(np.arange(32.0), np.arange(32.0) ** 2, 17, ALPHA)
