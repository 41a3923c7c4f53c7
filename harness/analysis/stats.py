"""Statistics: the sources' tests verbatim, and the robust ones a reviewer asks for.

Every function takes plain sequences and returns a frozen result with the numbers the report records.
Directional tests follow the claim's direction: `greater(a, b)` tests mean(a) > mean(b).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class TestResult:
    test: str
    statistic: float
    p_value: float
    df: float | None = None
    alternative: str = "greater"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arr(x: Sequence[float], name: str, minimum: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or a.size < minimum:
        raise ValueError(f"{name} needs a 1-d sample of at least {minimum} values; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite values; drop and count them first")
    return a


def t_test_rows(a: np.ndarray, b: np.ndarray, equal_var: bool,
                alternative: str = "greater") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(statistic, p, df) of scipy's ttest_ind along the last axis: one test per row of (draws, n) arrays, the
    same code path for one sample and for many (calibration draws)."""
    res = sps.ttest_ind(a, b, axis=-1, equal_var=equal_var, alternative=alternative)
    return np.asarray(res.statistic), np.asarray(res.pvalue), np.asarray(res.df)


def student_t(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> TestResult:
    """scipy ttest_ind with equal variances: the source's test (one-sided, df = n_a + n_b - 2)."""
    x, y = _arr(a, "a"), _arr(b, "b")
    stat, p, _ = t_test_rows(x, y, True, alternative)
    return TestResult("student_t", float(stat), float(p), x.size + y.size - 2.0, alternative)


def welch_t(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> TestResult:
    x, y = _arr(a, "a"), _arr(b, "b")
    stat, p, df = t_test_rows(x, y, False, alternative)
    return TestResult("welch_t", float(stat), float(p), float(df), alternative)


def mann_whitney(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> TestResult:
    res = sps.mannwhitneyu(_arr(a, "a"), _arr(b, "b"), alternative=alternative, method="auto")
    return TestResult("mann_whitney_u", float(res.statistic), float(res.pvalue), None, alternative)


def t_from_stats(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                 ddof0: bool = True, alternative: str = "greater") -> TestResult:
    """Student t from summary figures; `ddof0` converts population stds (np.std) with s * sqrt(n / (n - 1))."""
    if ddof0:
        sd_a, sd_b = sd_a * math.sqrt(n_a / (n_a - 1)), sd_b * math.sqrt(n_b / (n_b - 1))
    res = sps.ttest_ind_from_stats(mean_a, sd_a, n_a, mean_b, sd_b, n_b, equal_var=True, alternative=alternative)
    return TestResult("student_t_from_stats", float(res.statistic), float(res.pvalue), n_a + n_b - 2.0, alternative)


def permutation_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                     alternative: str = "greater") -> TestResult:
    """Difference of means under random relabelling (seeded)."""
    res = sps.permutation_test((_arr(a, "a"), _arr(b, "b")), lambda x, y: np.mean(x) - np.mean(y),
                               permutation_type="independent", n_resamples=n_resamples,
                               alternative=alternative, rng=np.random.default_rng(seed))
    return TestResult("permutation_mean_diff", float(res.statistic), float(res.pvalue), None, alternative)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _arr(a, "a"), _arr(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length: a has {x.size} values, b has {y.size}; "
                         "give one value of b per value of a, in the same order")
    return x, y


def paired_t(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> TestResult:
    """scipy ttest_rel of mean(a - b) against 0 (df = n - 1). When every difference is the same the t
    statistic is undefined (zero variance): statistic and p are NaN, and scipy is not asked."""
    x, y = _paired(a, b)
    diff = x - y
    if np.all(diff == diff[0]):
        return TestResult("paired_t", float("nan"), float("nan"), x.size - 1.0, alternative)
    res = sps.ttest_rel(x, y, alternative=alternative)
    return TestResult("paired_t", float(res.statistic), float(res.pvalue), x.size - 1.0, alternative)


def paired_permutation(a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0,
                       alternative: str = "greater") -> TestResult:
    """Sign-flip test of mean(a - b): each pair keeps or swaps its two values (seeded; exact when 2**n is at
    most `n_resamples`). Defined for every input: all-zero differences give p = 1."""
    x, y = _paired(a, b)
    res = sps.permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis),
                               permutation_type="samples", vectorized=True, n_resamples=n_resamples,
                               alternative=alternative, rng=np.random.default_rng(seed))
    return TestResult("paired_permutation", float(res.statistic), float(res.pvalue), None, alternative)


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean_a - mean_b) / pooled sd (ddof=1)."""
    x, y = _arr(a, "a"), _arr(b, "b")
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    return float((x.mean() - y.mean()) / math.sqrt(pooled)) if pooled > 0 else float("nan")


def bootstrap_mean_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_resamples: int = 5000,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) - mean(b), each group resampled on its own (scipy.stats.bootstrap,
    seeded)."""
    x, y = _arr(a, "a"), _arr(b, "b")
    res = sps.bootstrap((x, y), lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
                        n_resamples=n_resamples, confidence_level=level, method="percentile", vectorized=True,
                        paired=False, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval and the standard error it rests on."""

    estimate: float
    low: float
    high: float
    se: float
    df: float
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci_rows(diffs: np.ndarray, confidence: float) -> tuple[np.ndarray, ...]:
    """(estimate, low, high, se, df) per row of a (draws, n) array of paired differences: the t interval of
    scipy ttest_1samp(...).confidence_interval. A row whose differences are all equal gets that value as its
    interval (no spread, nothing to be uncertain about)."""
    d = np.atleast_2d(np.asarray(diffs, dtype=float))  # (draws, n)
    n = d.shape[-1]
    mean, se = d.mean(-1), d.std(-1, ddof=1) / math.sqrt(n)
    spread = se > 0
    low, high = mean.copy(), mean.copy()
    if spread.any():
        ci = sps.ttest_1samp(d[spread], 0.0, axis=-1).confidence_interval(confidence)
        low[spread], high[spread] = ci.low, ci.high
    return mean, low, high, se, np.full(mean.shape, n - 1.0)


def mean_diff_ci_rows(a: np.ndarray, b: np.ndarray, confidence: float,
                      equal_var: bool = False) -> tuple[np.ndarray, ...]:
    """(estimate, low, high, se, df) of mean(a) - mean(b) per row: the t interval of scipy
    ttest_ind(...).confidence_interval, Welch by default, Student with `equal_var`."""
    x, y = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))  # (draws, n)
    nx, ny = x.shape[-1], y.shape[-1]
    estimate = x.mean(-1) - y.mean(-1)
    vx, vy = x.var(-1, ddof=1), y.var(-1, ddof=1)
    pooled = ((nx - 1) * vx + (ny - 1) * vy) / (nx + ny - 2)
    se = np.sqrt(pooled * (1 / nx + 1 / ny)) if equal_var else np.sqrt(vx / nx + vy / ny)
    spread = se > 0
    low, high = estimate.copy(), estimate.copy()
    df = np.full(estimate.shape, nx + ny - 2.0)
    if spread.any():
        res = sps.ttest_ind(x[spread], y[spread], axis=-1, equal_var=equal_var)
        ci = res.confidence_interval(confidence)
        low[spread], high[spread], df[spread] = ci.low, ci.high, res.df
    return estimate, low, high, se, df


def mean_ci(diffs: Sequence[float], confidence: float) -> Interval:
    """The mean of paired differences with its t interval (`mean_ci_rows` on one row)."""
    mean, low, high, se, df = (v[0] for v in mean_ci_rows(_arr(diffs, "differences"), confidence))
    return Interval(float(mean), float(low), float(high), float(se), float(df), confidence)


def mean_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float, equal_var: bool = False) -> Interval:
    """mean(a) - mean(b) with its t interval (`mean_diff_ci_rows` on one row): Welch by default."""
    est, low, high, se, df = (v[0] for v in mean_diff_ci_rows(_arr(a, "a"), _arr(b, "b"), confidence, equal_var))
    return Interval(float(est), float(low), float(high), float(se), float(df), confidence)


def stratum_permutation_ci(treated: Sequence[Sequence[float]], reference: Sequence[float], confidence: float,
                           n_resamples: int = 10_000, seed: int = 0,
                           bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """mean over strata of (mean(treated_s) - reference_s), with an interval from its within-stratum label
    permutation distribution (seeded).

    Each stratum (a target prompt) holds k treated values (e.g. patched generations) and one reference value
    (its unpatched generation). Under the null that the k + 1 labels are exchangeable within each stratum,
    the reference is a uniformly drawn one of the k + 1 values: the statistic's permutation distribution is
    exact there, so "low > 0" is an exact one-sided test at (1 - confidence) / 2 even for skewed, lattice data
    (rare collapses), where a t interval is not. The interval is the estimate minus the quantiles of that
    centred distribution (a location-shift inversion: exact at 0, approximate elsewhere), clipped to `bounds`.
    """
    if len(treated) != len(reference) or len(reference) < 2:
        raise ValueError(f"stratum_permutation_ci needs one reference per stratum and at least 2 strata; got "
                         f"{len(treated)} treated groups and {len(reference)} references")
    rng = np.random.default_rng(seed)
    nulls = np.zeros(n_resamples)
    estimate = 0.0
    for values, ref in zip(treated, reference, strict=True):
        pooled = np.append(_arr(values, "treated", minimum=1), float(ref))  # (k + 1,)
        k = pooled.size - 1
        estimate += pooled[:k].mean() - pooled[k]
        drawn = pooled[rng.integers(0, k + 1, size=n_resamples)]  # the value labelled "reference"
        nulls += (pooled.sum() - drawn) / k - drawn
    n = len(reference)
    estimate, nulls = estimate / n, nulls / n
    tail = (1 - confidence) / 2
    # the null is centred at 0 by construction (each stratum's permuted statistic has mean 0); its quantiles
    # are taken at atoms ("lower" and "higher"), never interpolated between them, so low > 0 is exact
    lo_q = float(np.quantile(nulls, tail, method="lower"))
    hi_q = float(np.quantile(nulls, 1 - tail, method="higher"))
    # a very discrete null can put both quantiles on one side of 0: the interval still holds the estimate, and
    # never leaves the values the difference can take (`bounds`, e.g. [-1, 1] for rates)
    low = min(max(estimate - hi_q, bounds[0]), estimate)
    high = max(min(estimate - lo_q, bounds[1]), estimate)
    return Interval(float(estimate), float(low), float(high), float(nulls.std()), float(n - 1), confidence)


def ratio_of_means_ci(num: Sequence[float], den: Sequence[float], confidence: float, n_resamples: int = 10_000,
                      seed: int = 0, clusters: Sequence[Any] | None = None) -> Interval:
    """mean(num) / mean(den) over paired items with a percentile bootstrap interval (seeded, numpy).

    `clusters` labels items that are not independent (pairs that share a prompt): whole clusters are resampled,
    so the interval does not treat a reused prompt as new evidence. se is the bootstrap sd; df is clusters - 1.
    Where the interval of mean(den) reaches 0 the ratio is not bounded (Fieller's unbounded case): the interval
    is (-inf, inf), and a decision resting on it is left open.
    """
    x, y = _paired(num, den)
    labels = list(range(x.size)) if clusters is None else list(clusters)
    if len(labels) != x.size:
        raise ValueError(f"{len(labels)} cluster labels for {x.size} items; give one label per item")
    ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    index = np.array([ids[label] for label in labels])
    sums_x, sums_y = np.bincount(index, x, len(ids)), np.bincount(index, y, len(ids))  # (clusters,)
    counts = np.random.default_rng(seed).multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_resamples)
    denominators = counts @ sums_y  # (n_resamples,)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = (counts @ sums_x) / denominators
    estimate = float(x.sum() / y.sum()) if y.sum() != 0 else float("nan")
    tail = (1 - confidence) / 2
    den_low, den_high = np.quantile(denominators, [tail, 1 - tail])
    if not math.isfinite(estimate) or den_low <= 0 <= den_high:
        return Interval(estimate, -math.inf, math.inf, float("nan"), len(ids) - 1.0, confidence)
    finite = draws[np.isfinite(draws)]
    low, high = np.quantile(finite, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), float(finite.std(ddof=1)), len(ids) - 1.0, confidence)


@dataclass(frozen=True)
class Regression:
    names: tuple[str, ...]
    coef: tuple[float, ...]
    t: tuple[float, ...]
    p: tuple[float, ...]
    df: int
    se: tuple[float, ...] = ()
    resid_sd: float = float("nan")  # sqrt(residual sum of squares / df)

    def term(self, name: str) -> dict[str, float]:
        i = self.names.index(name)
        return {"coef": self.coef[i], "t": self.t[i], "p": self.p[i], "se": self.se[i]}

    def interval(self, name: str, confidence: float) -> Interval:
        """The coefficient's t interval (scipy.stats.t.interval, df = n - columns)."""
        i = self.names.index(name)
        low, high = sps.t.interval(confidence, self.df, loc=self.coef[i], scale=self.se[i])
        return Interval(self.coef[i], float(low), float(high), self.se[i], float(self.df), confidence)


def ols(y: Sequence[float], columns: dict[str, Sequence[float]]) -> Regression:
    """Ordinary least squares with an intercept; two-sided t tests per coefficient."""
    target = _arr(y, "y", minimum=3)
    names = ("intercept", *columns)
    design = np.column_stack([np.ones(target.size)] + [_arr(c, n, 3) for n, c in columns.items()])
    df = target.size - design.shape[1]
    if df < 1 or np.linalg.matrix_rank(design) < design.shape[1]:
        raise ValueError(f"design with columns {names} is rank deficient or has no residual df (n={target.size})")
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    cov = (resid @ resid / df) * np.linalg.inv(design.T @ design)
    se = np.sqrt(np.diag(cov))
    t = coef / se
    p = 2 * sps.t.sf(np.abs(t), df)
    return Regression(names, tuple(map(float, coef)), tuple(map(float, t)), tuple(map(float, p)), int(df),
                      tuple(map(float, se)), float(math.sqrt(resid @ resid / df)))


def nan_mean(x: Sequence[float]) -> float:
    """The mean, or NaN when there is nothing to average (so an empty group reads as not observed)."""
    return float(np.mean(x)) if len(x) else float("nan")


def describe(x: Sequence[float]) -> dict[str, float]:
    """Mean, population std (np.std, ddof=0, as the source reported) and sample std, min, max, n."""
    a = _arr(x, "sample", minimum=1)
    return {"mean": float(a.mean()), "std_ddof0": float(a.std()), "std_ddof1": float(a.std(ddof=1)) if a.size > 1
            else float("nan"), "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}
