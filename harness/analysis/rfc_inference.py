"""Prompt-level inference for RFC contrasts (claims-spec W-B3): paired bootstrap CIs and sign-flip permutation
p-values that resample prompts, never heads.

A contrast is a signed sum of arms; an arm is one model's measured categories under one input format
(instruct +1 and base -1 give dRFC; four arms give the chat-template difference-in-differences). Every arm
holds the same prompts in the same order, so one draw of prompt multiplicities per category applies to all
arms: the resampling is paired. Within a draw the layer RFC is computed as published (aggregation b:
token-weighted entropy per head, RFC_h = 1 - H_self/H_neutral, mean over the counted heads), so the bootstrap
distribution is that of the published statistic, not of a per-prompt proxy. Only the self and neutral
categories enter RFC, so only they are resampled.

Draws are vectorised: a draw is a (draw, prompt) weight matrix and pooling is one matrix product per category
and arm. `bootstrap_contrast` runs scipy.stats.bootstrap (BCa by default) on prompt indices; a group whose
draws are all equal (one model compared with itself) gets the degenerate interval [estimate, estimate], never
a NaN. `flip_p_values` runs scipy.stats.permutation_test with base and instruct swapped per prompt (the null
of exchangeable labels). Results are per group of layers: a group is averaged inside each draw, so the
dependence between layers is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from harness.analysis.entropy import Array, Mask
from harness.analysis.rfc import NEUTRAL, SELF, PromptEntropies, count_heads, layer_metric

RFC_CATEGORIES = (SELF, NEUTRAL)
Method = Literal["t", "BCa", "percentile"]
Weights = Mapping[str, Array]  # category -> (draw, prompt) multiplicities
Index = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Arm:
    """One model's categories in a contrast, with its sign (+1 instruct, -1 base)."""

    sign: float
    cats: Mapping[str, PromptEntropies]


def instruct_minus_base(base: Mapping[str, PromptEntropies], instruct: Mapping[str, PromptEntropies]
                        ) -> tuple[Arm, Arm]:
    """The published contrast dRFC = instruct - base."""
    return Arm(1.0, instruct), Arm(-1.0, base)


def paired_sizes(arms: Sequence[Arm]) -> dict[str, int]:
    """Prompts per RFC category, checked equal in every arm (the same prompts through every arm)."""
    if not arms:
        raise ValueError("a contrast needs at least one arm")
    sizes: dict[str, int] = {}
    for i, arm in enumerate(arms):
        for k in RFC_CATEGORIES:
            if k not in arm.cats:
                raise ValueError(f"arm {i} has no category {k!r} (has {sorted(arm.cats)}); RFC needs {SELF} "
                                 f"and {NEUTRAL}")
            n = arm.cats[k].n_tokens.size
            if sizes.setdefault(k, n) != n:
                raise ValueError(f"category {k!r}: arm {i} has {n} prompts, arm 0 {sizes[k]}; run the same "
                                 "prompts through every arm")
    return sizes


def token_sums(cat: PromptEntropies, weights: Array, heads_counted: int | None) -> Array:
    """(draw, layer, head) sum over prompts of weight * T * head entropy, for (draw, prompt) weights."""
    means = count_heads(cat.head_means, heads_counted)  # (prompt, layer, head)
    n, layers, heads = means.shape
    return ((weights * cat.n_tokens) @ means.reshape(n, layers * heads)).reshape(-1, layers, heads)


def pooled(cat: PromptEntropies, weights: Array, heads_counted: int | None) -> Array:
    """(draw, layer, head) token-weighted entropy of one category under (draw, prompt) multiplicities."""
    return token_sums(cat, weights, heads_counted) / (weights @ cat.n_tokens)[:, None, None]


def layer_rfc_draws(cats: Mapping[str, PromptEntropies], weights: Weights, heads_counted: int | None) -> Array:
    """(draw, layer) RFC as published (mean over counted heads of 1 - H_self/H_neutral) for each draw."""
    h_self, h_neutral = (pooled(cats[k], weights[k], heads_counted) for k in RFC_CATEGORIES)
    return (1.0 - h_self / h_neutral).mean(-1)


def contrast_draws(arms: Sequence[Arm], weights: Weights, heads_counted: int | None) -> Array:
    """(draw, layer) signed sum of the arms' layer RFC."""
    return np.sum([arm.sign * layer_rfc_draws(arm.cats, weights, heads_counted) for arm in arms], axis=0)


def multiplicities(index: Index, n: int) -> Array:
    """(draw, n) how often each prompt appears in each row of `index` (draw, k)."""
    rows = index.shape[0]
    flat = (index + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def layer_groups(n_layers: int, groups: Sequence[Sequence[int]] | None) -> list[Index]:
    """The groups as index arrays; None: one group of every layer."""
    chosen = [np.arange(n_layers)] if groups is None else [np.asarray(g, dtype=np.int64) for g in groups]
    bad = [g.tolist() for g in chosen if g.size == 0 or g.min() < 0 or g.max() >= n_layers]
    if bad:
        raise ValueError(f"layer groups {bad} empty or outside 0..{n_layers - 1}; give non-empty groups of layers")
    return chosen


@dataclass(frozen=True)
class ContrastCI:
    """A contrast per layer group with its paired prompt-bootstrap CI; arrays are (group,)."""

    estimate: Array
    ci_low: Array
    ci_high: Array
    standard_error: Array
    degenerate: Mask  # every draw equal: the interval is [estimate, estimate]
    n_prompts: dict[str, int]
    n_resamples: int
    confidence: float
    method: str
    seed: int
    joint: bool

    def describe(self) -> dict[str, Any]:
        """How the interval was made, for a result's `tests`."""
        return {"resampling": "prompts, paired across models" + (", matched sets jointly" if self.joint else
                                                                    ", each category on its own"),
                "n_resamples": self.n_resamples, "confidence": self.confidence, "method": self.method,
                "seed": self.seed, "n_prompts": dict(self.n_prompts), "scipy": "scipy.stats.bootstrap",
                "interval": ("estimate -+ t(n-1) * SE_boot * sqrt(n/(n-1))" if self.method == "t"
                             else f"scipy {self.method}")}


class _Statistic:
    """The contrast per group as scipy.stats.bootstrap calls it: prompt indices in, (group, ...) out."""

    def __init__(self, arms: Sequence[Arm], sizes: Mapping[str, int], groups: Sequence[Index],
                 heads_counted: int | None, joint: bool) -> None:
        self.arms, self.sizes, self.groups = arms, dict(sizes), list(groups)
        self.heads, self.joint = heads_counted, joint

    def data(self) -> tuple[Index, ...]:
        sizes = list(self.sizes.values())
        return (np.arange(sizes[0]),) if self.joint else tuple(np.arange(n) for n in sizes)

    def __call__(self, *index: Index, axis: int = -1) -> Array:
        picks = dict(zip(self.sizes, index * len(self.sizes) if self.joint else index, strict=True))
        lead = picks[SELF].shape[:-1]
        weights = {k: multiplicities(v.reshape(-1, v.shape[-1]), self.sizes[k]) for k, v in picks.items()}
        per_layer = contrast_draws(self.arms, weights, self.heads)  # (draw, layer)
        out = np.stack([per_layer[:, g].mean(-1) for g in self.groups])  # (group, draw)
        return out.reshape(len(self.groups), *lead)

    def restricted(self, keep: Mask) -> _Statistic:
        return _Statistic(self.arms, self.sizes, [g for g, k in zip(self.groups, keep, strict=True) if k],
                          self.heads, self.joint)


def bootstrap_contrast(arms: Sequence[Arm], *, groups: Sequence[Sequence[int]] | None = None,
                       heads_counted: int | None = None, joint: bool = False, n_resamples: int = 2000,
                       confidence: float = 0.95, seed: int = 0, method: Method = "t") -> ContrastCI:
    """Paired prompt bootstrap of the contrast averaged over each group of layers (default: all layers).

    `joint`: the categories are matched sets (prompt i of each category belongs together, e.g. equal token
    counts), resampled as sets; otherwise each category is resampled on its own.
    """
    sizes = paired_sizes(arms)
    if joint and len(set(sizes.values())) != 1:
        raise ValueError(f"joint resampling needs matched sets of equal size per category; got {sizes}")
    if n_resamples < 2 or not 0 < confidence < 1 or method not in ("t", "BCa", "percentile"):
        raise ValueError(f"n_resamples={n_resamples}, confidence={confidence}, method={method!r}: need >= 2 "
                         "draws, a confidence in (0, 1) and a method of 't', 'BCa', 'percentile'")
    for arm in arms:  # the published statistic, with its clear errors for a zero denominator
        layer_metric(arm.cats, "rfc", "pooled", heads_counted)
    n_layers = arms[0].cats[SELF].head_means.shape[1]
    statistic = _Statistic(arms, sizes, layer_groups(n_layers, groups), heads_counted, joint)
    estimate = statistic(*statistic.data())
    first = stats.bootstrap(statistic.data(), statistic, vectorized=True, n_resamples=n_resamples,
                            confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    draws = np.asarray(first.bootstrap_distribution).reshape(len(statistic.groups), -1)  # (group, draw)
    degenerate = np.ptp(draws, axis=-1) == 0
    se = draws.std(axis=-1, ddof=1)
    low, high = (np.asarray(x, dtype=np.float64).reshape(-1).copy() for x in first.confidence_interval)
    if method == "t":
        low, high = t_bootstrap_interval(estimate, se, min(sizes.values()), confidence)
    elif method == "BCa" and not degenerate.all():
        keep = ~degenerate
        bca = stats.bootstrap(statistic.data(), statistic.restricted(keep), vectorized=True, n_resamples=0,
                              confidence_level=confidence, method="BCa",
                              bootstrap_result=SimpleNamespace(bootstrap_distribution=draws[keep]))
        low[keep], high[keep] = (np.asarray(x).reshape(-1) for x in bca.confidence_interval)
    low[degenerate], high[degenerate] = estimate[degenerate], estimate[degenerate]
    return ContrastCI(estimate, low, high, se, degenerate, sizes, n_resamples, confidence, method, seed, joint)


def t_bootstrap_interval(estimate: Array, se: Array, n: int, confidence: float) -> tuple[Array, Array]:
    """estimate -+ t((1 + confidence)/2, n - 1) * se * sqrt(n / (n - 1)): the bootstrap SE of a statistic of
    n prompts per category, corrected for its sqrt((n - 1)/n) shortfall, with t quantiles (scipy)."""
    if n < 2:
        raise ValueError(f"{n} prompt(s) per category: a t interval needs >= 2")
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * se * math.sqrt(n / (n - 1))
    return estimate - half, estimate + half


def n_to_detect(published: float, ci: ContrastCI, group: int = 0) -> tuple[float, float]:
    """(per-prompt SD, standardised effect d) implied by the bootstrap SE: SD = SE * sqrt(n prompts)."""
    n = min(ci.n_prompts.values())
    sd = float(ci.standard_error[group]) * math.sqrt(n)
    return sd, (abs(published) / sd if sd > 0 else math.inf)


def _flipped(cats_i: PromptEntropies, cats_b: PromptEntropies, swap: Array, heads: int | None
             ) -> tuple[Array, Array]:
    """(draw, layer, head) pooled entropies of instruct and base with the prompts in `swap` exchanged."""
    if not np.array_equal(cats_i.n_tokens, cats_b.n_tokens):
        raise ValueError("base and instruct token counts differ; label flips need one tokenisation of each prompt")
    keep = 1.0 - swap  # (draw, prompt)
    total = cats_i.n_tokens.sum()
    mixed_i = (token_sums(cats_i, keep, heads) + token_sums(cats_b, swap, heads)) / total
    mixed_b = (token_sums(cats_b, keep, heads) + token_sums(cats_i, swap, heads)) / total
    return mixed_i, mixed_b


def flip_p_values(base: Mapping[str, PromptEntropies], instruct: Mapping[str, PromptEntropies], *,
                  heads_counted: int | None = None, n_resamples: int = 2000, seed: int = 0) -> Array:
    """(layer,) two-sided p of the layer dRFC under exchangeable base/instruct labels per prompt
    (scipy.stats.permutation_test, sign flips of a one-sample carrier: -1 swaps that prompt's models)."""
    sizes = paired_sizes(instruct_minus_base(base, instruct))
    offsets = np.cumsum([0, *sizes.values()])

    def statistic(signs: Array, axis: int = -1) -> Array:
        lead = signs.shape[:-1]
        swap = (signs.reshape(-1, signs.shape[-1]) < 0).astype(np.float64)  # (draw, all prompts)
        parts = {k: swap[:, offsets[i]:offsets[i + 1]] for i, k in enumerate(sizes)}
        (si, sb), (ni, nb) = (_flipped(instruct[k], base[k], parts[k], heads_counted) for k in RFC_CATEGORIES)
        drfc = (1.0 - si / ni).mean(-1) - (1.0 - sb / nb).mean(-1)  # (draw, layer)
        return drfc.reshape(*lead, drfc.shape[-1])

    carrier = np.ones(int(offsets[-1]))
    result = stats.permutation_test((carrier,), statistic, permutation_type="samples", vectorized=True,
                                    n_resamples=n_resamples, rng=np.random.default_rng(seed))
    return np.asarray(result.pvalue, dtype=np.float64)
