"""Unit and property tests of harness/metrics.py: participation ratio (uncentred and centred) and R_V.

Windows are drawn as float64 arrays and converted to float32 tensors, as the harness computes in float32;
comparisons carry a float32 tolerance, and windows too close to zero for that tolerance are assumed away.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.analysis.metrics import NAN_FLOOR, participation_ratio, r_v

RTOL = 1e-4  # float32 SVD of a window whose Frobenius norm is at least MIN_NORM
MIN_NORM = 0.1
PROPERTY = settings(deadline=None, max_examples=60)

# Strategies at module level: window shapes, windows (W, d), scale factors, orthogonal-matrix seeds, offsets.
sizes = st.integers(min_value=1, max_value=9)
entries = st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, width=64)
windows = st.tuples(sizes, sizes).flatmap(lambda shape: arrays(np.float64, shape, elements=entries))
tall_windows = st.tuples(st.integers(2, 9), sizes).flatmap(
    lambda shape: arrays(np.float64, shape, elements=entries)
)
scales = st.floats(min_value=1e-2, max_value=1e2)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
paddings = st.integers(min_value=1, max_value=6)
vectors = st.integers(1, 9).flatmap(
    lambda n: arrays(np.float64, n, elements=entries.filter(lambda v: abs(v) > 1e-3))
)


def pr(x: np.ndarray, rows: list[int] | None = None, centred: bool = False) -> float:
    """PR of one float64 window (W, d), computed by the harness in float32."""
    out = participation_ratio(torch.tensor(x, dtype=torch.float32)[None], rows=rows, centred=centred)
    assert out.shape == (1,) and out.dtype == torch.float32
    return float(out[0])


def orthogonal(d: int, seed: int) -> np.ndarray:
    """A random orthogonal (d, d) matrix: QR of a seeded Gaussian, signs fixed so Q is Haar distributed."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def centred_norm(x: np.ndarray) -> float:
    return float(np.linalg.norm(x - x.mean(0)))


def pad(x: np.ndarray, n: int) -> np.ndarray:
    return np.vstack([x, np.zeros((n, x.shape[1]))])


# --- bounds and known values ------------------------------------------------------------------------------


@PROPERTY
@given(windows)
@example(np.eye(4))
@example(np.ones((5, 3)))
def test_uncentred_pr_lies_between_one_and_min_w_d(x: np.ndarray) -> None:
    assume(np.linalg.norm(x) > MIN_NORM)
    value = pr(x)
    assert 1 - RTOL <= value <= min(x.shape) * (1 + RTOL)


@PROPERTY
@given(arrays(np.float64, st.integers(1, 9), elements=entries), vectors)
@example(np.array([1.0]), np.array([1.0, 2.0, 3.0]))
def test_rank_one_window_has_pr_one(u: np.ndarray, v: np.ndarray) -> None:
    x = np.outer(u, v)  # (W, d), rank 1
    assume(np.linalg.norm(x) > MIN_NORM)
    assert pr(x) == pytest.approx(1.0, rel=RTOL)


@PROPERTY
@given(st.integers(1, 9), st.integers(0, 5), seeds, scales)
@example(4, 0, 0, 1.0)
def test_orthogonal_equal_norm_rows_have_pr_w(w: int, extra: int, seed: int, scale: float) -> None:
    x = scale * orthogonal(w + extra, seed)[:w]  # (W, d) with d >= W, orthogonal rows of equal norm
    assert pr(x) == pytest.approx(w, rel=RTOL)


def test_known_singular_values() -> None:
    """Singular values (2, 1): lambda = (4, 1), PR = 5^2 / (16 + 1)."""
    assert pr(np.diag([2.0, 1.0])) == pytest.approx(25 / 17, rel=1e-6)
    assert pr(np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx(2.0, rel=1e-6)


# --- invariances ------------------------------------------------------------------------------------------


@PROPERTY
@given(windows, scales)
def test_pr_is_scale_invariant(x: np.ndarray, c: float) -> None:
    assume(np.linalg.norm(x) > MIN_NORM)
    assert pr(c * x) == pytest.approx(pr(x), rel=RTOL)


@PROPERTY
@given(windows, seeds)
def test_pr_is_invariant_to_row_permutation(x: np.ndarray, seed: int) -> None:
    assume(np.linalg.norm(x) > MIN_NORM)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    assert pr(x[perm]) == pytest.approx(pr(x), rel=RTOL)


@PROPERTY
@given(windows, seeds)
def test_pr_is_invariant_to_orthogonal_rotation(x: np.ndarray, seed: int) -> None:
    assume(np.linalg.norm(x) > MIN_NORM)
    rotated = x @ orthogonal(x.shape[1], seed)  # rotate the feature space
    assert pr(rotated) == pytest.approx(pr(x), rel=RTOL)


@PROPERTY
@given(windows, paddings)
def test_zero_padding_rows_leave_uncentred_pr_unchanged(x: np.ndarray, n_pad: int) -> None:
    assume(np.linalg.norm(x) > MIN_NORM)
    assert pr(pad(x, n_pad), rows=[x.shape[0]]) == pytest.approx(pr(x), rel=RTOL)


@PROPERTY
@given(tall_windows, paddings)
def test_zero_padding_rows_leave_centred_pr_unchanged(x: np.ndarray, n_pad: int) -> None:
    """The centring mean is taken over the valid rows only, and padding stays zero after centring."""
    assume(centred_norm(x) > MIN_NORM)
    assert pr(pad(x, n_pad), rows=[x.shape[0]], centred=True) == pytest.approx(pr(x, centred=True), rel=RTOL)


@PROPERTY
@given(tall_windows, arrays(np.float64, 9, elements=st.floats(-5, 5)), paddings)
def test_centred_pr_ignores_a_constant_offset_on_valid_rows(
    x: np.ndarray, offset: np.ndarray, n_pad: int
) -> None:
    assume(centred_norm(x) > 1.0)  # float32 cancellation of the offset needs a window well above zero
    shifted = pad(x + offset[: x.shape[1]], n_pad)
    assert pr(shifted, rows=[x.shape[0]], centred=True) == pytest.approx(pr(x, centred=True), rel=1e-3)


@PROPERTY
@given(tall_windows)
@example(np.array([[1.0, 0.0], [0.0, 1.0]]))
def test_centred_pr_lies_between_one_and_min_rank(x: np.ndarray) -> None:
    """Centring W rows leaves rank at most W - 1."""
    assume(centred_norm(x) > MIN_NORM)
    assert 1 - RTOL <= pr(x, centred=True) <= min(x.shape[0] - 1, x.shape[1]) * (1 + RTOL)


def test_centred_differs_from_uncentred_on_offset_data() -> None:
    """A common offset makes the uncentred window nearly rank 1; centring removes it."""
    x = np.array([[10.0, 10.0, 1.0], [10.0, 10.0, -1.0], [10.0, 10.0, 0.0]])
    assert pr(x) < 1.01
    assert pr(x, centred=True) == pytest.approx(1.0, rel=RTOL)
    y = np.array([[5.0, 1.0, 0.0], [5.0, -1.0, 0.0], [5.0, 0.0, 1.0], [5.0, 0.0, -1.0]])
    assert pr(y, centred=True) == pytest.approx(2.0, rel=RTOL)
    assert pr(y) < 1.5


# --- NaN floor and batches --------------------------------------------------------------------------------


@given(st.tuples(sizes, sizes), st.booleans())
def test_all_zero_window_is_nan(shape: tuple[int, int], centred: bool) -> None:
    assert math.isnan(pr(np.zeros(shape), centred=centred))


def test_nan_floor_is_per_window_and_follows_the_source() -> None:
    below = math.sqrt(NAN_FLOOR) / 4  # sum lambda = 4 * below^2 < 1e-10
    batch = torch.stack([torch.zeros(4, 3), torch.eye(4, 3), torch.full((4, 3), below)])
    out = participation_ratio(batch)
    assert math.isnan(out[0]) and out[1] == pytest.approx(3.0) and math.isnan(out[2])


def test_centred_single_valid_row_is_nan() -> None:
    x = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    assert math.isnan(participation_ratio(x, rows=[1], centred=True)[0])


@PROPERTY
@given(st.lists(arrays(np.float64, (4, 5), elements=entries), min_size=1, max_size=4))
def test_batched_pr_equals_each_window_alone(batch: list[np.ndarray]) -> None:
    for x in batch:
        assume(np.linalg.norm(x) > MIN_NORM)
    together = participation_ratio(torch.tensor(np.stack(batch), dtype=torch.float32))
    alone = [pr(x) for x in batch]
    assert together.tolist() == pytest.approx(alone, rel=RTOL)


def test_pr_rejects_a_window_without_batch_dimension() -> None:
    with pytest.raises(ValueError, match=r"\(batch, window, width\); got shape \(4, 3\)"):
        participation_ratio(torch.ones(4, 3))


# --- R_V --------------------------------------------------------------------------------------------------


def test_r_v_is_late_over_early_per_prompt() -> None:
    late, early = torch.tensor([2.0, 3.0, float("nan")]), torch.tensor([4.0, 1.5, 2.0])
    out = r_v(late, early)
    assert out[:2].tolist() == [0.5, 2.0] and math.isnan(out[2])


def test_r_v_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"late \(3,\) vs early \(2,\)"):
        r_v(torch.ones(3), torch.ones(2))
