"""A control's effect, stated against the published effect: estimate, CI, and the n a decision would need.

Each `[controls.<name>]` of kind `control` names the metric that carries its effect (`effect`), the share of
the published effect below which the effect counts as gone (`min_fraction`), and, where the source published
no figure in that metric's units, the effect the claim implies (`published_effect`, with its derivation in
the TOML). The claim's `[protocol].control_alpha` sets the CI: two-sided at 1 - 2 * alpha, so that each side
is a one-sided test at alpha ("present": the low end above 0; "gone": the high end below the floor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.analysis import stats
from harness.claimkit.registry import Claim, ClaimError
from harness.claimkit.verdicts import Effect, control_decision, n_for_power


@dataclass(frozen=True)
class EffectSpec:
    """What a control compares its effect with, read from the claim."""

    name: str  # the observed metric that holds the effect
    published: float  # in the metric's units; its sign is the claimed direction
    min_fraction: float
    alpha: float  # each side of the CI is a one-sided test at this level

    @property
    def confidence(self) -> float:
        return 1 - 2 * self.alpha

    @classmethod
    def of(cls, claim: Claim, control: str) -> EffectSpec:
        table = claim.control(control)
        missing = [key for key in ("effect", "min_fraction") if key not in table]
        if missing:
            raise ClaimError(f"{claim.path}: [controls.{control}] states no effect: add {', '.join(missing)} "
                             "(the metric holding the effect, and the share of the published effect below "
                             "which it counts as gone)")
        key = str(table["effect"])
        published = table.get("published_effect", claim.published.get(key))
        if not isinstance(published, int | float) or isinstance(published, bool):
            raise ClaimError(f"{claim.path}: [controls.{control}].effect = {key!r} has no published figure: "
                             f"[published].{key} is absent; state [controls.{control}].published_effect and how "
                             "it follows from the claim")
        if "control_alpha" not in claim.protocol:
            raise ClaimError(f"{claim.path}: [protocol].control_alpha is missing; the controls' CIs need it "
                             "(e.g. 0.05: two-sided 90% intervals, each side a one-sided test at 0.05)")
        return cls(key, float(published), float(table["min_fraction"]), float(claim.protocol["control_alpha"]))

    def effect(self, interval: stats.Interval) -> Effect:
        return Effect(interval.estimate, interval.low, interval.high, self.published, self.min_fraction,
                      interval.confidence, self.name)


@dataclass(frozen=True)
class Stated:
    """A control's effect, the n a decision at the published effect would need, and what the report shows."""

    effect: Effect
    n_needed: int | None
    observed: dict[str, Any]


def _stated(spec: EffectSpec, interval: stats.Interval, sd: float, paired: bool) -> Stated:
    n_needed = None
    if control_decision(spec.effect(interval)).decision == "underpowered":  # power at the published effect
        d = spec.published / sd if sd > 0 and math.isfinite(sd) else math.inf
        n_needed = n_for_power(d, alpha=spec.alpha, alternative="greater", paired=paired) if math.isfinite(d) else None
    observed = {spec.name: interval.estimate, f"{spec.name}_ci_low": interval.low,
                f"{spec.name}_ci_high": interval.high, f"{spec.name}_se": interval.se,
                "published_effect": spec.published, "effect_floor": spec.min_fraction * spec.published}
    return Stated(spec.effect(interval), n_needed, observed)


def paired_effect(spec: EffectSpec, a: Sequence[float], b: Sequence[float]) -> Stated:
    """mean(a - b) over pairs with its paired t interval; n_needed is the number of pairs."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    interval = stats.mean_ci(diffs, spec.confidence)
    return _stated(spec, interval, interval.se * math.sqrt(len(diffs)), paired=True)


def two_sample_effect(spec: EffectSpec, a: Sequence[float], b: Sequence[float]) -> Stated:
    """mean(a) - mean(b) with its Welch t interval; n_needed is per group."""
    interval = stats.mean_diff_ci(a, b, spec.confidence)
    sd = interval.se / math.sqrt(1 / len(a) + 1 / len(b))
    return _stated(spec, interval, sd, paired=False)


def interval_effect(spec: EffectSpec, interval: stats.Interval, sd: float, paired: bool = False) -> Stated:
    """An effect whose interval comes from elsewhere (a regression coefficient, a difference of differences)."""
    return _stated(spec, interval, sd, paired)


def stratum_effect(spec: EffectSpec, treated: Sequence[Sequence[float]], reference: Sequence[float],
                   n_resamples: int, seed: int, bounds: tuple[float, float] = (-1.0, 1.0)) -> Stated:
    """mean over strata of mean(treated) - reference (rates by default: within [-1, 1]), with its within-stratum
    permutation interval (harness.analysis.stats.stratum_permutation_ci); n_needed is the number of strata."""
    interval = stats.stratum_permutation_ci(treated, reference, spec.confidence, n_resamples, seed, bounds)
    return _stated(spec, interval, interval.se * math.sqrt(len(reference)), paired=True)
