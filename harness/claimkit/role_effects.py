"""What a role-conditioning control concludes: its effect with a paired prompt-level CI, or why it was dropped.

Every RFC control states its effect in the units and sign of the published mean dRFC (instruct - base, mean
over layers): the estimate is the control's own statistic and the CI a paired prompt bootstrap of it
(`harness.analysis.rfc_inference.bootstrap_contrast`; [protocol] n_resamples, confidence, ci_method).
`harness.claimkit.verdicts.control_decision` then reads it against [published].mean_drfc and the control's
`min_fraction`: pass when the CI excludes 0 in the claimed direction, fail when it lies wholly below that
fraction of the published effect, underpowered (with the n prompts per category that a test at the published
effect would need) when it covers both.

A control whose manipulation changes nothing on a model (every head is already counted; no layer has an
unstable denominator) would repeat as_published: it is `dropped` for that model with the reason, recorded
but never counted as a passed control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.analysis.rfc_inference import Arm, ContrastCI, bootstrap_contrast, n_to_detect
from harness.claimkit.results import protocol_result
from harness.claimkit.role import Extras, RoleContext
from harness.claimkit.verdicts import Effect, control_decision, n_for_power


def bootstrap(ctx: RoleContext, arms: Sequence[Arm], heads: int, *, groups: Sequence[Sequence[int]] | None = None,
              joint: bool = False) -> ContrastCI:
    """The claim's paired prompt bootstrap ([protocol] n_resamples, confidence, ci_method; the run's seed)."""
    p = ctx.claim.protocol
    return bootstrap_contrast(arms, groups=groups, heads_counted=heads, joint=joint, n_resamples=p["n_resamples"],
                              confidence=p["confidence"], seed=ctx.seed, method=p["ci_method"])


def interval(name: str, ci: ContrastCI, group: int = 0) -> dict[str, float]:
    """`name`, `name_ci_low`, `name_ci_high` and `name_se` of one group of a ContrastCI, as observed figures."""
    return {name: float(ci.estimate[group]), f"{name}_ci_low": float(ci.ci_low[group]),
            f"{name}_ci_high": float(ci.ci_high[group]), f"{name}_se": float(ci.standard_error[group])}


def stated_effect(ctx: RoleContext, control: str, ci: ContrastCI, group: int = 0
                  ) -> tuple[Effect, int | None, tuple[str, ...]]:
    """The control's Effect against the published mean dRFC; when it is underpowered, the n (prompts per
    category) that a paired t-test at the published effect would need with the per-prompt spread this
    bootstrap implies, and a note saying so."""
    table, p = ctx.claim.control(control), ctx.claim.protocol
    published = float(ctx.claim.published["mean_drfc"])
    effect = Effect(float(ci.estimate[group]), float(ci.ci_low[group]), float(ci.ci_high[group]), published,
                    float(table["min_fraction"]), float(p["confidence"]), f"{control}: {table['effect']}")
    outcome = control_decision(effect)
    if outcome.decision != "underpowered":
        return effect, None, ()
    sd, d = n_to_detect(published, ci, group)
    n_needed = n_for_power(d, alpha=1 - p["confidence"], alternative="two-sided", paired=True)
    need = f"about {n_needed} prompts per category" if n_needed else "more prompts than any bank holds"
    return effect, n_needed, (f"underpowered: {outcome.reason}; with a per-prompt sd of {sd:.3g} a paired test "
                              f"at the published effect needs {need} (power 0.8)",)


def effect_extras(ctx: RoleContext, control: str, arms: Sequence[Arm], heads: int, *,
                  groups: Sequence[Sequence[int]] | None = None, joint: bool = False,
                  observed: Mapping[str, Any] | None = None, **extras: Any) -> Extras:
    """Extras carrying the control's effect (its `effect` key, CI and SE as observed figures) and how it was
    computed, plus `observed` and any other Extras field."""
    key = ctx.claim.control(control)["effect"]
    ci = bootstrap(ctx, arms, heads, groups=groups, joint=joint)
    effect, n_needed, why = stated_effect(ctx, control, ci)
    extras["notes"] = (*extras.get("notes", ()), *why)
    return Extras(observed={**(observed or {}), **interval(key, ci)}, effect=effect, n_needed=n_needed,
                  tests={"paired_prompt_bootstrap": ci.describe()}, **extras)


def dropped(ctx: RoleContext, control: str, reason: str) -> dict[str, Any]:
    """A control not run on this model because it would repeat as_published; `dropped` says why."""
    table = ctx.claim.control(control)
    observed = {m: float("nan") for m in table["criterion"]}
    result = protocol_result(ctx.claim, f"control:{control}", ctx.kind(control), table["criterion"], observed,
                             lm=ctx.instruct, banks=(ctx.bank,), notes=(f"dropped: {reason}",))
    return {**result, "dropped": reason}
