"""Unit and property tests of the paired tests in harness/stats.py: paired_t and paired_permutation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness.analysis import stats

values = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=12)


def test_paired_t_matches_a_one_sample_t_on_the_differences() -> None:
    a = [0.31, 0.42, 0.28, 0.55, 0.47, 0.39]
    b = [0.30, 0.35, 0.29, 0.41, 0.40, 0.33]
    res = stats.paired_t(a, b)
    ref = sps.ttest_1samp(np.subtract(a, b), 0.0, alternative="greater")
    assert res.statistic == pytest.approx(float(ref.statistic))
    assert res.p_value == pytest.approx(float(ref.pvalue))
    assert res.df == len(a) - 1


def test_paired_t_with_constant_differences_is_undefined_not_a_warning() -> None:
    res = stats.paired_t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(res.statistic) and math.isnan(res.p_value)


def test_paired_samples_must_have_equal_length() -> None:
    with pytest.raises(ValueError, match="a has 3 values, b has 2"):
        stats.paired_permutation([1.0, 2.0, 3.0], [1.0, 2.0])


def test_paired_permutation_is_exact_for_small_n() -> None:
    """Four positive differences: only the all-kept sign pattern of 2**4 reaches the observed mean."""
    res = stats.paired_permutation([2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0])
    assert res.statistic == pytest.approx(2.5)
    assert res.p_value == pytest.approx(1 / 16)


def test_all_zero_differences_give_p_one() -> None:
    res = stats.paired_permutation([0.5] * 20, [0.5] * 20)
    assert res.statistic == 0.0 and res.p_value == pytest.approx(1.0)


def test_a_clear_shift_is_detected_and_its_mirror_is_not() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(size=25)
    a = b + 0.5 + 0.1 * rng.normal(size=25)
    assert stats.paired_permutation(a, b, seed=1).p_value < 0.001
    assert stats.paired_permutation(b, a, seed=1).p_value > 0.99


@settings(max_examples=40, deadline=None)
@given(values, st.integers(0, 3))
def test_paired_permutation_p_lies_in_unit_interval_and_is_seeded(a: list[float], seed: int) -> None:
    b = list(reversed(a))
    first = stats.paired_permutation(a, b, n_resamples=200, seed=seed)
    assert 0.0 < first.p_value <= 1.0
    assert first == stats.paired_permutation(a, b, n_resamples=200, seed=seed)
