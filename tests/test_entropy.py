"""Unit and property tests of harness/entropy.py: attention entropy from materialised patterns (B.2), the
published definition and the normalised, BOS-excluded control (ln q, q >= 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.analysis.entropy import (
    EPS,
    bos_mass,
    entropy_from_pattern,
    mean_abs_pattern,
    mean_over_queries,
    normalised_entropy_from_pattern,
    normalised_head_entropy,
    published_head_entropy,
)

# Strategies at module level: sequence lengths, head counts, seeds.
lengths = st.integers(min_value=1, max_value=12)
head_counts = st.integers(min_value=1, max_value=5)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def causal_softmax(logits: np.ndarray) -> np.ndarray:
    """Post-softmax causal attention (..., T, T) from arbitrary logits: future keys get exactly 0."""
    t = logits.shape[-1]
    masked = np.where(np.tril(np.ones((t, t), dtype=bool)), logits, -np.inf)
    weights = np.exp(masked - masked.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def random_pattern(seed: int, batch: int, heads: int, t: int, scale: float = 3.0) -> np.ndarray:
    return causal_softmax(np.random.default_rng(seed).normal(0, scale, (batch, heads, t, t)))  # (b, h, q, k)


def uniform_causal(t: int, batch: int = 1, heads: int = 1) -> np.ndarray:
    rows = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # row q: 1/(q+1) on keys 0..q
    return np.broadcast_to(rows, (batch, heads, t, t)).copy()


# ---- entropy as published ------------------------------------------------------------------------------

@given(seed=seeds, heads=head_counts, t=lengths)
def test_entropy_lies_between_zero_and_log_k(seed: int, heads: int, t: int) -> None:
    h = entropy_from_pattern(random_pattern(seed, 2, heads, t))
    assert h.shape == (2, heads, t)
    assert (h >= -1e-12).all() and (h <= math.log(t) + 1e-12).all()


@given(t=st.integers(min_value=1, max_value=40))
def test_uniform_causal_attention_gives_log_factorial_over_t(t: int) -> None:
    head_value = published_head_entropy(uniform_causal(t))[0, 0]
    # (1/T) sum_q ln(q+1) = ln(T!)/T, up to the EPS given to each of at most T future keys of a row.
    eps_bias = t * EPS * (1 - math.log(EPS))
    assert head_value == pytest.approx(math.lgamma(t + 1) / t, abs=eps_bias)
    assert head_value != pytest.approx(math.lgamma(t + 2) / (t + 1), abs=eps_bias)  # one token longer differs


def test_uniform_causal_per_query_entropy_is_log_q_plus_1() -> None:
    h = entropy_from_pattern(uniform_causal(6))[0, 0]
    np.testing.assert_allclose(h, np.log(np.arange(1, 7)), atol=1e-6)
    assert h[0] < 1e-6  # q = 0 has true entropy 0 and still counts in the published mean


def test_one_hot_rows_get_the_published_epsilon_on_every_key() -> None:
    t, eps = 5, 1e-8
    pattern = np.zeros((1, 1, t, t))
    pattern[..., 0] = 1.0  # every query attends to BOS only
    # All t keys (future ones too) get eps before renormalising: one key holds (1 + eps)/(1 + t eps).
    hot, cold = (1 + eps) / (1 + t * eps), eps / (1 + t * eps)
    expected = -(hot * math.log(hot) + (t - 1) * cold * math.log(cold))
    np.testing.assert_allclose(entropy_from_pattern(pattern)[0, 0], expected, rtol=1e-9)


@given(seed=seeds, t=st.integers(min_value=1, max_value=12))
def test_mean_abs_pattern_is_exactly_one_over_t_for_causal_rows(seed: int, t: int) -> None:
    # W-B7: the source's head-ranking score is the same constant for every head.
    np.testing.assert_allclose(mean_abs_pattern(random_pattern(seed, 2, 3, t)), 1.0 / t, rtol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_entropies(side: str) -> None:
    lens, t = (3, 5), 5
    batch = np.zeros((2, 2, t, t))
    mask = np.zeros((2, t))
    alone = []
    for i, n in enumerate(lens):
        pattern = random_pattern(i, 1, 2, n)
        sl = slice(t - n, t) if side == "left" else slice(0, n)
        batch[i, :, sl, sl] = pattern[0]
        mask[i, sl] = 1
        alone.append(pattern)
    for fn in (entropy_from_pattern, normalised_entropy_from_pattern, bos_mass):
        padded = fn(batch, mask)
        for i, n in enumerate(lens):
            sl = slice(t - n, t) if side == "left" else slice(0, n)
            np.testing.assert_allclose(padded[i, :, sl], fn(alone[i])[0], rtol=1e-12, equal_nan=True)
            assert np.isnan(np.delete(padded[i], np.arange(t)[sl], axis=-1)).all()
    np.testing.assert_allclose(published_head_entropy(batch, mask)[0], published_head_entropy(alone[0])[0])


def test_normalised_entropy_of_uniform_attention_is_one_at_every_length() -> None:
    t = 7
    h = normalised_entropy_from_pattern(uniform_causal(t))[0, 0]
    assert np.isnan(h[:2]).all()  # q = 0 and q = 1 have at most one key once BOS is dropped
    # BOS dropped: keys 1..q stay uniform, so H'_q = ln q, the largest entropy over q keys: G_q = 1.
    np.testing.assert_allclose(h[2:], 1.0, atol=1e-12)
    for length in (3, 5, 9):  # no length trend left, unlike ln q / ln(q+1)
        assert normalised_head_entropy(uniform_causal(length))[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_normalised_entropy_ignores_bos_mass_and_uses_no_epsilon() -> None:
    t = 4
    pattern = np.zeros((1, 1, t, t))
    pattern[0, 0, :, 0] = 0.9  # most mass on BOS
    pattern[0, 0, 0, 0] = 1.0
    pattern[0, 0, 1, 1] = 0.1
    pattern[0, 0, 2, 1:3] = [0.1, 0.0]  # all non-BOS mass on key 1: entropy exactly 0, no EPS smoothing
    pattern[0, 0, 3, 1:4] = [0.05, 0.05, 0.0]
    h = normalised_entropy_from_pattern(pattern)[0, 0]
    assert h[2] == 0.0
    assert h[3] == pytest.approx(math.log(2) / math.log(3), rel=1e-12)


@given(seed=seeds, t=st.integers(min_value=3, max_value=12))
def test_normalised_entropy_lies_in_zero_one(seed: int, t: int) -> None:
    h = normalised_entropy_from_pattern(random_pattern(seed, 1, 3, t))[..., 2:]
    assert (h >= -1e-12).all() and (h <= 1 + 1e-9).all()


def test_normalised_head_entropy_needs_three_tokens() -> None:
    with pytest.raises(ValueError, match="no query at position >= 2"):
        normalised_head_entropy(uniform_causal(2))


def test_bos_mass_of_uniform_attention_is_one_over_q_plus_1() -> None:
    np.testing.assert_allclose(bos_mass(uniform_causal(5))[0, 0], 1.0 / np.arange(1, 6))


def test_torch_input_matches_numpy() -> None:
    pattern = random_pattern(3, 2, 3, 6)
    np.testing.assert_allclose(entropy_from_pattern(torch.from_numpy(pattern).float()),
                               entropy_from_pattern(pattern.astype(np.float32)), rtol=1e-12)


def test_mean_over_queries_excludes_first_position_when_asked() -> None:
    per_query = np.array([[[10.0, 1.0, 3.0]]])
    assert mean_over_queries(per_query)[0, 0] == pytest.approx(14 / 3)
    assert mean_over_queries(per_query, first_position=1)[0, 0] == pytest.approx(2.0)


@pytest.mark.parametrize(("pattern", "mask", "match"), [
    (np.full((1, 1, 3, 3), np.nan), None, "non-finite"),
    (np.ones((1, 3, 3)), None, "expected 4 axes"),
    (np.ones((1, 1, 3, 4)) / 4, None, "square"),
    (-np.ones((1, 1, 2, 2)), None, "non-negative"),
    (np.zeros((1, 1, 0, 0)), None, "empty"),
    (np.ones((1, 1, 3, 3)) / 3, np.ones((1, 4)), r"needs \(1, 3\)"),
    (np.ones((1, 1, 3, 3)) / 3, np.zeros((1, 3)), "at least one 1"),
])
def test_bad_patterns_raise_naming_the_value(pattern: np.ndarray, mask: np.ndarray | None,
                                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        entropy_from_pattern(pattern, mask)
