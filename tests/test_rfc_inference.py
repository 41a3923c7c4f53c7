"""Tests of harness/analysis/rfc_inference.py: paired prompt-level inference for RFC contrasts.

The vectorised statistic equals the published aggregation (b) on the original prompts; draws are paired and
seeded; one model against itself gives the degenerate interval [0, 0] (never a NaN or a warning, which the
suite turns into errors); the label-flip p-values equal scipy's permutation test layer by layer. Calibration
under a null is in tests/test_rfc_calibration.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from harness.analysis.rfc import NEUTRAL, SELF, PromptEntropies, layer_metric
from harness.analysis.rfc_inference import (
    Arm,
    bootstrap_contrast,
    contrast_draws,
    flip_p_values,
    instruct_minus_base,
    multiplicities,
    paired_sizes,
    t_bootstrap_interval,
)

Cats = dict[str, PromptEntropies]


def categories(seed: int, prompts: int = 12, layers: int = 3, heads: int = 5, self_shift: float = 0.0) -> Cats:
    rng = np.random.default_rng(seed)
    out = {}
    for k in (SELF, NEUTRAL):
        tokens = rng.integers(4, 12, prompts).astype(float)
        out[k] = PromptEntropies(rng.uniform(0.8, 1.6, (prompts, layers, heads)), tokens)
    out[SELF] = PromptEntropies(out[SELF].head_means * (1 + self_shift), out[SELF].n_tokens)
    return out


def shifted(cats: Cats, factor: float, noise: float = 0.0, seed: int = 0) -> Cats:
    """The same prompts with the self entropies scaled (and per-prompt noise): a paired "instruct"."""
    rng = np.random.default_rng(seed)
    n = cats[SELF].n_tokens.size
    scale = factor * (1 + noise * rng.standard_normal(n))[:, None, None]
    return {SELF: PromptEntropies(cats[SELF].head_means * scale, cats[SELF].n_tokens), NEUTRAL: cats[NEUTRAL]}


def test_multiplicities_count_each_prompt_per_draw() -> None:
    counts = multiplicities(np.array([[0, 0, 2], [1, 2, 2]]), 4)
    np.testing.assert_array_equal(counts, [[2, 0, 1, 0], [0, 1, 2, 0]])


def test_the_statistic_is_the_published_aggregation_on_the_original_prompts() -> None:
    base = categories(0)
    instruct = shifted(base, 1.1, noise=0.05)
    ones = {k: np.ones((1, 12)) for k in (SELF, NEUTRAL)}
    per_layer = contrast_draws(instruct_minus_base(base, instruct), ones, heads_counted=4)[0]
    expected = layer_metric(instruct, "rfc", "pooled", 4) - layer_metric(base, "rfc", "pooled", 4)
    np.testing.assert_allclose(per_layer, expected, rtol=1e-12)
    ci = bootstrap_contrast(instruct_minus_base(base, instruct), groups=[[0, 1, 2], [2], [0, 1]],
                            heads_counted=4, n_resamples=200, seed=1)
    np.testing.assert_allclose(ci.estimate, [expected.mean(), expected[2], expected[:2].mean()], rtol=1e-12)
    assert (ci.ci_low < ci.estimate).all() and (ci.estimate < ci.ci_high).all() and not ci.degenerate.any()


def test_draws_are_paired_seeded_and_the_t_interval_is_documented() -> None:
    base = categories(2, prompts=20)
    # Every self prompt loses 5% entropy in "instruct": small against the spread between prompts, but the
    # same for each prompt, so only a paired resampling sees it clearly.
    instruct = shifted(base, 0.95)
    first = bootstrap_contrast(instruct_minus_base(base, instruct), n_resamples=300, seed=7)
    again = bootstrap_contrast(instruct_minus_base(base, instruct), n_resamples=300, seed=7)
    other = bootstrap_contrast(instruct_minus_base(base, instruct), n_resamples=300, seed=8)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high) and first.ci_low != other.ci_low
    assert first.ci_low[0] > 0  # lower self entropy raises RFC
    low, high = t_bootstrap_interval(first.estimate, first.standard_error, 20, 0.95)
    half = stats.t.ppf(0.975, 19) * first.standard_error * np.sqrt(20 / 19)
    np.testing.assert_allclose([low, high], [first.estimate - half, first.estimate + half])
    np.testing.assert_array_equal([first.ci_low, first.ci_high], [low, high])
    described = first.describe()
    assert described["method"] == "t" and "sqrt(n/(n-1))" in described["interval"]


@pytest.mark.parametrize("method", ["t", "BCa", "percentile"])
def test_one_model_against_itself_gives_the_degenerate_interval(method: str) -> None:
    cats = categories(3)
    ci = bootstrap_contrast(instruct_minus_base(cats, cats), groups=[[0, 1, 2], [1]], n_resamples=100,
                            method=method)  # type: ignore[arg-type]
    assert ci.degenerate.all() and ci.estimate.tolist() == ci.ci_low.tolist() == ci.ci_high.tolist() == [0, 0]
    mixed = bootstrap_contrast((Arm(1.0, shifted(cats, 1.1, 0.1)), Arm(-1.0, cats), Arm(1.0, cats),
                                Arm(-1.0, cats)), groups=[[0], [1]], n_resamples=100, method=method)  # type: ignore[arg-type]
    assert not mixed.degenerate.any() and np.isfinite([mixed.ci_low, mixed.ci_high]).all()


def test_inputs_that_are_not_paired_fail_with_the_fix() -> None:
    cats = categories(0)
    with pytest.raises(ValueError, match="same prompts through every arm"):
        paired_sizes(instruct_minus_base(cats, categories(0, prompts=11)))
    with pytest.raises(ValueError, match="has no category 'neutral'"):
        paired_sizes((Arm(1.0, {SELF: cats[SELF]}),))
    uneven = {SELF: cats[SELF], NEUTRAL: categories(1, prompts=9)[NEUTRAL]}  # 12 self, 9 neutral prompts
    assert bootstrap_contrast(instruct_minus_base(uneven, uneven), n_resamples=10).n_prompts == {SELF: 12,
                                                                                               NEUTRAL: 9}
    with pytest.raises(ValueError, match="matched sets of equal size"):
        bootstrap_contrast(instruct_minus_base(uneven, uneven), joint=True)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        bootstrap_contrast(instruct_minus_base(cats, cats), groups=[[3]])
    with pytest.raises(ValueError, match="H_neutral is <= 0"):
        zero = {SELF: cats[SELF], NEUTRAL: PromptEntropies(cats[NEUTRAL].head_means * 0, cats[NEUTRAL].n_tokens)}
        bootstrap_contrast(instruct_minus_base(zero, zero))


def test_flip_p_values_are_scipys_permutation_test_layer_by_layer() -> None:
    base = categories(4, prompts=10, layers=3)
    instruct = shifted(base, 1.0, noise=0.08, seed=1)
    instruct[SELF] = PromptEntropies(instruct[SELF].head_means * np.array([1.0, 1.15, 1.0])[None, :, None],
                                     instruct[SELF].n_tokens)  # layer 1 carries an effect
    p = flip_p_values(base, instruct, n_resamples=499, seed=3)
    n = 10

    def layer_statistic(layer: int):  # the same swap, one layer, written out per prompt
        def statistic(signs: np.ndarray, axis: int = -1) -> np.ndarray:
            swap = signs < 0  # (..., 2n): self prompts, then neutral prompts
            out = []
            for row in swap.reshape(-1, 2 * n):
                b = {k: PromptEntropies(np.where(row[i * n:(i + 1) * n, None, None], instruct[k].head_means,
                                                 base[k].head_means), base[k].n_tokens)
                     for i, k in enumerate((SELF, NEUTRAL))}
                j = {k: PromptEntropies(np.where(row[i * n:(i + 1) * n, None, None], base[k].head_means,
                                                 instruct[k].head_means), base[k].n_tokens)
                     for i, k in enumerate((SELF, NEUTRAL))}
                out.append(layer_metric(j, "rfc")[layer] - layer_metric(b, "rfc")[layer])
            return np.array(out).reshape(swap.shape[:-1])
        return statistic

    for layer in range(3):
        ref = stats.permutation_test((np.ones(2 * n),), layer_statistic(layer), permutation_type="samples",
                                     vectorized=True, n_resamples=499, rng=np.random.default_rng(3))
        assert p[layer] == pytest.approx(ref.pvalue, abs=1e-12), layer
    assert p[1] < 0.01 and p[0] > 0.05
    np.testing.assert_array_equal(flip_p_values(base, base, n_resamples=99), 1.0)
