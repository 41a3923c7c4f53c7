"""Correlation of two per-layer profiles (claims-spec B.2 (c), W-B6), with nulls that keep the layer order.

The source correlated Llama's and Mistral's per-layer dRFC with scipy's Pearson and Spearman tests, whose
p-values assume independent layers. Neighbouring layers are alike, so that p is too small. Two nulls that keep
each profile's autocorrelation are reported beside it:
- circular shift: y rotated by each of its n shifts (the identity included); exact, with n arrangements;
- block permutation: y cut into consecutive blocks of `block` layers whose order is shuffled (seeded draws);
  it keeps the dependence within a block and breaks the alignment between the profiles.
Both are two-sided on |r| and count the observed arrangement, so p >= 1/(number of arrangements).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from harness.analysis.entropy import Array, checked

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
