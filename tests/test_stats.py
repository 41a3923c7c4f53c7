"""Unit tests of harness/stats.py: the source's Student t verbatim, the robust tests, effect sizes and OLS.

Published figures live in the test-data dict below (claims-spec A.1 and A.2), never in a test body; the claim
itself reads its figures from fixtures/claims/rv_contraction.toml.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.analysis.stats import (
    bootstrap_mean_diff_ci,
    cohens_d,
    describe,
    mann_whitney,
    ols,
    permutation_test,
    student_t,
    t_from_stats,
    welch_t,
)

# claims-spec A.1 (mistral_reproduction_results.json, REPORT App. A) and A.2 (the re-derivation).
A2 = {
    "baseline_mean": 1.1488566198084325,
    "baseline_std_ddof0": 0.10787766617082367,
    "recursive_mean": 0.9588525699536328,
    "recursive_std_ddof0": 0.11297803698740934,
    "n": 8,
    "t": 3.2181218,  # Student, one-sided, df 14, after converting the ddof=0 stds
    "p": 0.0030966,
    "t_unconverted": 3.440,  # the wrong reading: ddof=0 stds passed as sample stds
    "p_unconverted": 0.00199,
    # the 3-d.p. per-prompt values, in prompt order
    "recursive_per_prompt": [0.878, 0.894, 0.974, 1.148, 0.750, 1.034, 1.037, 0.956],
    "baseline_per_prompt": [1.355, 1.017, 1.018, 1.093, 1.206, 1.114, 1.149, 1.240],
    "t_per_prompt": 3.2216,
    "p_per_prompt": 0.003075,
    "p_two_sided": 0.00619,  # from the converted summary figures
    "mann_whitney_u": 56,
    "mann_whitney_p": 0.0052,
    "cohens_d": 1.61,
}

SHIFTED = (np.arange(10) * 0.1 + 2.0).tolist(), (np.arange(10) * 0.1).tolist()  # a clear shift of 2.0


# --- Student t, as the source ran it ----------------------------------------------------------------------


def test_student_t_equals_scipy_equal_var_one_sided() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.4, 1.0, 12), rng.normal(0.0, 1.5, 9)
    res = student_t(a.tolist(), b.tolist())
    ref = sps.ttest_ind(a, b, equal_var=True, alternative="greater")
    assert (res.test, res.alternative, res.df) == ("student_t", "greater", 19.0)
    assert res.statistic == pytest.approx(float(ref.statistic), rel=1e-12)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)


def test_student_t_known_value_by_hand() -> None:
    """a = b + 1 with var 5/3 each: t = 1 / sqrt(5/3 * (1/4 + 1/4)), p = t_6.sf(t)."""
    res = student_t([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])
    t = 1 / math.sqrt(5 / 3 * 0.5)
    assert res.statistic == pytest.approx(t, rel=1e-12)
    assert res.p_value == pytest.approx(float(sps.t.sf(t, 6)), rel=1e-12)


def test_student_t_on_the_published_per_prompt_values() -> None:
    base, rec = A2["baseline_per_prompt"], A2["recursive_per_prompt"]
    res = student_t(base, rec)
    assert res.statistic == pytest.approx(A2["t_per_prompt"], abs=1e-4)
    assert res.p_value == pytest.approx(A2["p_per_prompt"], abs=1e-6)
    assert student_t(base, rec, alternative="two-sided").p_value == pytest.approx(2 * res.p_value, rel=1e-9)
    assert student_t(rec, base).p_value == pytest.approx(1 - res.p_value, rel=1e-9)  # the other direction


def test_t_from_stats_converts_ddof0_stds_and_recovers_the_published_t() -> None:
    res = t_from_stats(
        A2["baseline_mean"],
        A2["baseline_std_ddof0"],
        A2["n"],
        A2["recursive_mean"],
        A2["recursive_std_ddof0"],
        A2["n"],
    )
    assert (res.df, res.alternative) == (14.0, "greater")
    assert res.statistic == pytest.approx(A2["t"], abs=1e-7)
    assert res.p_value == pytest.approx(A2["p"], abs=1e-7)
    two_sided = t_from_stats(
        A2["baseline_mean"],
        A2["baseline_std_ddof0"],
        A2["n"],
        A2["recursive_mean"],
        A2["recursive_std_ddof0"],
        A2["n"],
        alternative="two-sided",
    )
    assert two_sided.p_value == pytest.approx(A2["p_two_sided"], abs=1e-5)


def test_t_from_stats_without_conversion_gives_the_wrong_reading() -> None:
    res = t_from_stats(
        A2["baseline_mean"],
        A2["baseline_std_ddof0"],
        A2["n"],
        A2["recursive_mean"],
        A2["recursive_std_ddof0"],
        A2["n"],
        ddof0=False,
    )
    assert res.statistic == pytest.approx(A2["t_unconverted"], abs=5e-4)
    assert res.p_value == pytest.approx(A2["p_unconverted"], abs=5e-6)


def test_t_from_stats_matches_student_t_on_raw_data() -> None:
    a, b = [1.0, 2.5, 3.0, 4.5, 2.0], [0.5, 1.0, 2.0, 1.5]
    raw = student_t(a, b)
    summary = t_from_stats(
        float(np.mean(a)), float(np.std(a)), len(a), float(np.mean(b)), float(np.std(b)), len(b)
    )
    assert summary.statistic == pytest.approx(raw.statistic, rel=1e-12)
    assert summary.p_value == pytest.approx(raw.p_value, rel=1e-12)


# --- robust tests -----------------------------------------------------------------------------------------


def test_welch_equals_scipy_and_uses_satterthwaite_df() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0, 9.0], [0.0, 0.5, 1.0]
    res = welch_t(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert res.statistic == pytest.approx(float(ref.statistic), rel=1e-12)
    assert res.p_value == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert res.df == pytest.approx(df, rel=1e-12)


def test_mann_whitney_on_the_published_per_prompt_values() -> None:
    res = mann_whitney(A2["baseline_per_prompt"], A2["recursive_per_prompt"])
    assert res.statistic == A2["mann_whitney_u"]
    assert res.p_value == pytest.approx(A2["mann_whitney_p"], abs=5e-5)


def test_permutation_test_is_seeded_and_deterministic() -> None:
    a, b = [0.3, 1.2, 0.8, 1.9, 0.5, 1.1], [0.2, 0.9, 0.4, 1.0, 0.1, 0.7, 0.6]
    first, again = (
        permutation_test(a, b, n_resamples=999, seed=3),
        permutation_test(a, b, n_resamples=999, seed=3),
    )
    assert first == again
    assert first.statistic == pytest.approx(np.mean(a) - np.mean(b))
    assert 0 < first.p_value < 1


def test_permutation_test_rejects_a_clear_shift() -> None:
    res = permutation_test(*SHIFTED, n_resamples=2000, seed=0)
    assert res.statistic == pytest.approx(2.0)
    assert res.p_value < 0.01


def test_permutation_test_does_not_reject_identical_samples() -> None:
    sample = SHIFTED[1]
    res = permutation_test(sample, list(sample), n_resamples=2000, seed=0)
    assert res.statistic == 0.0
    assert res.p_value > 0.4


def test_permutation_test_follows_the_alternative() -> None:
    assert permutation_test(*SHIFTED, n_resamples=2000, seed=0, alternative="less").p_value > 0.99


# --- effect sizes and intervals ---------------------------------------------------------------------------


def test_cohens_d_known_values() -> None:
    assert cohens_d([2.0, 4.0, 6.0], [1.0, 3.0, 5.0]) == pytest.approx(0.5, rel=1e-12)  # diff 1, pooled sd 2
    assert cohens_d([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]) == pytest.approx(-0.5, rel=1e-12)
    assert round(cohens_d(A2["baseline_per_prompt"], A2["recursive_per_prompt"]), 2) == A2["cohens_d"]


def test_cohens_d_of_constant_samples_is_nan() -> None:
    assert math.isnan(cohens_d([1.0, 1.0], [1.0, 1.0]))


def test_bootstrap_ci_is_seeded_and_covers_the_shift() -> None:
    a, b = SHIFTED
    lo, hi = bootstrap_mean_diff_ci(a, b, seed=1)
    assert (lo, hi) == bootstrap_mean_diff_ci(a, b, seed=1)
    assert lo < 2.0 < hi and hi - lo < 0.6
    wide_lo, wide_hi = bootstrap_mean_diff_ci(a, b, level=0.99, seed=1)
    assert wide_lo <= lo and hi <= wide_hi


# --- OLS --------------------------------------------------------------------------------------------------


def test_ols_recovers_planted_coefficients() -> None:
    rng = np.random.default_rng(0)
    tokens, condition = rng.integers(5, 20, 60).astype(float), np.repeat([0.0, 1.0], 30)
    y = 1.5 + 0.05 * tokens - 0.3 * condition + rng.normal(0, 0.01, 60)
    reg = ols(y.tolist(), {"tokens": tokens.tolist(), "condition": condition.tolist()})
    assert reg.names == ("intercept", "tokens", "condition") and reg.df == 57
    assert reg.coef == pytest.approx((1.5, 0.05, -0.3), abs=0.01)
    assert reg.term("condition")["t"] < -50 and reg.term("condition")["p"] < 1e-10


def test_ols_t_and_p_match_linregress() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    y = 0.2 * x + rng.normal(size=20)
    ref = sps.linregress(x, y)
    slope = ols(y.tolist(), {"x": x.tolist()}).term("x")
    assert slope["coef"] == pytest.approx(ref.slope, rel=1e-10)
    assert slope["t"] == pytest.approx(ref.slope / ref.stderr, rel=1e-10)
    assert slope["p"] == pytest.approx(ref.pvalue, rel=1e-8)


def test_ols_rejects_collinear_columns() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match=r"columns \('intercept', 'x', 'twice_x'\) is rank deficient"):
        ols([1.0, 3.0, 2.0, 5.0, 4.0], {"x": x, "twice_x": [2 * v for v in x]})
    with pytest.raises(ValueError, match="rank deficient"):
        ols([1.0, 3.0, 2.0], {"constant": [4.0, 4.0, 4.0]})  # collinear with the intercept


def test_ols_rejects_a_design_without_residual_df() -> None:
    with pytest.raises(ValueError, match=r"no residual df \(n=3\)"):
        ols([1.0, 2.0, 4.0], {"x": [1.0, 2.0, 3.0], "z": [1.0, 0.0, 1.0]})


# --- input validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [student_t, welch_t, mann_whitney, cohens_d, permutation_test, bootstrap_mean_diff_ci]
)
def test_non_finite_input_raises_naming_the_count(fn) -> None:
    with pytest.raises(ValueError, match="b holds 2 non-finite values"):
        fn([1.0, 2.0, 3.0], [1.0, float("nan"), float("inf"), 0.5])


def test_ols_non_finite_column_is_named() -> None:
    with pytest.raises(ValueError, match="tokens holds 1 non-finite values"):
        ols([1.0, 2.0, 3.0, 4.0], {"tokens": [1.0, float("nan"), 2.0, 5.0]})


@pytest.mark.parametrize("bad", [[1.0], [[1.0, 2.0], [3.0, 4.0]]])
def test_too_small_or_not_1d_sample_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="a needs a 1-d sample of at least 2 values"):
        student_t(bad, [1.0, 2.0])


def test_describe_reports_both_stds() -> None:
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d == {
        "mean": 2.5,
        "std_ddof0": pytest.approx(math.sqrt(1.25)),
        "std_ddof1": pytest.approx(math.sqrt(5 / 3)),
        "min": 1.0,
        "max": 4.0,
        "n": 4,
    }
    single = describe([7.0])
    assert single["std_ddof0"] == 0.0 and math.isnan(single["std_ddof1"])
