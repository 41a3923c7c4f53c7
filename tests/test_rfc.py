"""Unit and property tests of harness/analysis/rfc.py: RFC/RSI under both aggregations and their statistics.

The entropy reference (patterns -> head values) is tested in tests/test_entropy.py, the prompt-level
inference in tests/test_rfc_inference.py and the profile correlations in tests/test_profiles.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from harness.analysis.rfc import (
    CONFOUNDER,
    NEUTRAL,
    SELF,
    LayerStats,
    PromptEntropies,
    UnstableRule,
    benjamini_hochberg,
    bonferroni_significant,
    category_entropy,
    cohens_d,
    compare_layers,
    head_level_rfc,
    held_out_head_ranking,
    layer_metric,
    layer_stats,
    rfc,
    rsi,
    threshold_counts,
    unstable_denominator,
)

# Strategies at module level: seeds and positive entropies.
seeds = st.integers(min_value=0, max_value=2**32 - 1)
entropies = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)


# ---- RFC / RSI -----------------------------------------------------------------------------------------

@given(a=entropies, b=entropies)
def test_rfc_sign_flips_when_self_and_neutral_swap(a: float, b: float) -> None:
    forward, backward = rfc(np.array([a]), np.array([b]))[0], rfc(np.array([b]), np.array([a]))[0]
    assert np.sign(forward) == -np.sign(backward)
    assert (forward > 0) == (a < b)  # positive RFC: self prompts have lower entropy


def test_rfc_rsi_values() -> None:
    s, n, c = np.array([1.0, 2.0]), np.array([2.0, 2.0]), np.array([1.5, 3.0])
    np.testing.assert_allclose(rfc(s, n), [0.5, 0.0])
    np.testing.assert_allclose(rsi(s, n, c), [0.25, 0.5])
    with pytest.raises(ValueError, match="H_neutral is <= 0"):
        rfc(s, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="shapes differ"):
        rsi(s, n, np.ones(3))


def category(values: np.ndarray, tokens: list[int]) -> PromptEntropies:
    return PromptEntropies(np.asarray(values, dtype=float), np.asarray(tokens, dtype=float))


def test_aggregations_a_and_b_by_hand() -> None:
    # 2 prompts, 1 layer, 2 heads; prompt 0 has 1 token, prompt 1 has 3.
    self_ = category([[[1.0, 3.0]], [[2.0, 2.0]]], [1, 3])
    neutral = category([[[2.0, 4.0]], [[4.0, 4.0]]], [1, 3])
    cats = {SELF: self_, NEUTRAL: neutral, CONFOUNDER: neutral}
    # (a): per-prompt head means 2, 2 (self) and 3, 4 (neutral); category means 2 and 3.5.
    assert layer_metric(cats, "rfc", "prompt_mean")[0] == pytest.approx(1 - 2 / 3.5)
    # (b): token-weighted per head: self (1*1+3*2)/4 = 1.75, (3+6)/4 = 2.25; neutral 3.5, 4.0.
    np.testing.assert_allclose(category_entropy(self_, "pooled"), [[1.75, 2.25]])
    assert layer_metric(cats, "rfc", "pooled")[0] == pytest.approx(np.mean([1 - 1.75 / 3.5, 1 - 2.25 / 4.0]))
    assert layer_metric(cats, "rsi", "pooled")[0] == pytest.approx(np.mean([1.75 / 3.5, 1.75 / 4.0]))


def synthetic_categories(seed: int, prompts: int = 12, layers: int = 3, heads: int = 32,
                         self_shift: float = 0.0) -> dict[str, PromptEntropies]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 12, prompts).astype(float)
    out = {k: PromptEntropies(rng.uniform(0.5, 1.5, (prompts, layers, heads)), tokens)
           for k in (SELF, NEUTRAL, CONFOUNDER)}
    out[SELF] = PromptEntropies(out[SELF].head_means - self_shift, tokens)
    return out


def test_heads_are_counted_from_the_shape_unless_told() -> None:
    cats = synthetic_categories(0, heads=32)
    assert head_level_rfc(cats).rfc.n_heads == 32
    counted = head_level_rfc(cats, heads_counted=28)
    assert counted.rfc.n_heads == 28 and counted.rfc_heads.shape == (3, 28)
    np.testing.assert_allclose(counted.rfc.mean, head_level_rfc(cats).rfc_heads[:, :28].mean(-1))
    assert not np.allclose(counted.rfc.mean, head_level_rfc(cats).rfc.mean)
    with pytest.raises(ValueError, match="heads_counted=33 but the input has 32 heads"):
        head_level_rfc(cats, heads_counted=33)


def test_layer_stats_ci_matches_scipy_t_interval_with_28_heads() -> None:
    values = np.random.default_rng(1).normal(0.1, 0.2, (4, 32))
    s = layer_stats(values, heads_counted=28)
    first = values[:, :28]
    low, high = stats.t.interval(0.95, 27, loc=first.mean(-1), scale=stats.sem(first, axis=-1))
    np.testing.assert_allclose(s.ci_low, low, rtol=1e-12)
    np.testing.assert_allclose(s.ci_high, high, rtol=1e-12)
    np.testing.assert_allclose(s.std, values[:, :28].std(-1, ddof=1))


def test_compare_layers_ci_formula() -> None:
    base = LayerStats(np.array([0.1, 0.2]), np.array([0.2, 0.3]), np.zeros(2), np.zeros(2), 28)
    inst = LayerStats(np.array([0.0, 0.21]), np.array([0.1, 0.3]), np.zeros(2), np.zeros(2), 32)
    cmp = compare_layers(base, inst)
    se = np.sqrt(base.std**2 / 28 + inst.std**2 / 32)
    low, high = stats.t.interval(0.95, 27, loc=inst.mean - base.mean, scale=se)
    assert cmp.df == 27
    np.testing.assert_allclose([cmp.ci_low, cmp.ci_high], [low, high], rtol=1e-12)
    assert cmp.significant.tolist() == [bool(high[0] < 0), False]
    critical = stats.t.ppf(1 - 0.025 / 2, 27)
    assert bonferroni_significant(cmp.diff, se, 27).tolist() == (np.abs(cmp.diff) / se > critical).tolist()


def test_threshold_counts_at_the_boundaries() -> None:
    counts = threshold_counts([-0.01, 0.01, -0.0101, 0.0101, 0.0, -0.5])
    assert (counts.below, counts.above, counts.near_zero, counts.n) == (2, 1, 3, 6)


def test_unstable_denominator_rule() -> None:
    rfc_values = np.array([-7.41, 0.1, -0.99, 1.5])
    assert unstable_denominator(rfc_values).tolist() == [True, False, False, True]
    strict = UnstableRule(max_abs_rfc=0.5)
    assert unstable_denominator(rfc_values, rule=strict).tolist() == [True, False, True, True]
    h_neutral = np.array([[1.0, 1.0], [1.0, 0.01], [1.0, 1.0], [1.0, 1.0]])  # (layer, head)
    assert unstable_denominator(rfc_values, h_neutral).tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="4 layers"):
        unstable_denominator(rfc_values, np.ones(3))
    with pytest.raises(ValueError, match="must be finite"):
        unstable_denominator(rfc_values, np.array([1.0, np.nan, 1.0, 1.0]))


# ---- corrections and effect sizes ---------------------------------------------------------------------

def test_benjamini_hochberg_by_hand_and_scipy() -> None:
    # 4 layers: sorted p 0.01, 0.03, 0.04, 0.2 scale by 4/rank to 0.04, 0.06, 0.0533, 0.2; the step-up minimum
    # from the top gives 0.04, 0.0533, 0.0533, 0.2 (input order below).
    by_hand = benjamini_hochberg([0.01, 0.04, 0.03, 0.2], alpha=0.05)
    np.testing.assert_allclose(by_hand.adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.2], rtol=1e-12)
    assert by_hand.rejected.tolist() == [True, False, False, False]
    p = np.array([0.001, 0.02, 0.03, 0.04, 0.2, 0.9, 0.011])
    res = benjamini_hochberg(p, alpha=0.05)
    np.testing.assert_allclose(res.adjusted, stats.false_discovery_control(p), rtol=1e-12)
    assert res.rejected.tolist() == (stats.false_discovery_control(p) <= 0.05).tolist()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.5, 1.2])


def test_cohens_d_pooled_sd_ddof1() -> None:
    a = np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
    b = np.array([2.0, 4.0, 6.0, 8.0]).reshape(4, 1, 1)
    pooled = math.sqrt((2 * 1.0 + 3 * np.var([2, 4, 6, 8], ddof=1)) / 5)
    assert cohens_d(a, b)[0, 0] == pytest.approx((2.0 - 5.0) / pooled)


@settings(max_examples=20, deadline=None)
@given(seed=seeds)
def test_held_out_ranking_recovers_planted_heads(seed: int) -> None:
    rng = np.random.default_rng(seed)
    graded = np.linspace(0.0, 0.2, 15).reshape(3, 5)  # every head a little role-sensitive (d 0 to 2)
    self_ = rng.normal(1.0, 0.1, (40, 3, 5)) - graded
    neutral = rng.normal(1.0, 0.1, (40, 3, 5))
    self_[:, 1, 2] -= 0.5  # two strongly role-sensitive heads, d of about 5
    self_[:, 0, 4] -= 0.4
    res = held_out_head_ranking(self_, neutral, top_k=2, seed=seed)
    assert set(res.top_heads) == {(1, 2), (0, 4)}
    assert res.top_k_overlap == 1.0
    assert res.d_discovery.shape == (3, 5) and res.rank_correlation > 0.5


def test_prompt_entropies_validation() -> None:
    with pytest.raises(ValueError, match="one positive count per prompt"):
        PromptEntropies(np.ones((3, 2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        PromptEntropies(np.full((3, 2, 2), np.nan), np.ones(3))
    with pytest.raises(ValueError, match="category 'confounder' missing"):
        layer_metric({SELF: category([[[1.0, 1.0]]] * 2, [2, 2]),
                      NEUTRAL: category([[[1.0, 1.0]]] * 2, [2, 2])}, "rsi")
