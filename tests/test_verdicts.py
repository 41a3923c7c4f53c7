"""Unit tests of harness/claimkit/verdicts.py: control decisions on positive evidence, power, and the verdict rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.claimkit.verdicts import Declared, Effect, control_decision, n_for_power, verdict

PUBLISHED = -0.09  # an arbitrary negative published effect: the claimed direction is negative


def effect(low: float, high: float, published: float = PUBLISHED, fraction: float = 0.5) -> Effect:
    return Effect((low + high) / 2, low, high, published, fraction)


@pytest.mark.parametrize(("low", "high", "decision"), [
    (-0.20, -0.06, "pass"),          # excludes 0, reaches half the published effect
    (-0.03, 0.01, "fail"),           # wholly weaker than half the published effect: the artefact
    (-0.04, -0.01, "fail"),          # present, but credibly below half of it
    (-0.12, 0.02, "underpowered"),   # covers 0 and covers half the effect
    (0.01, 0.05, "fail"),            # the opposite direction
])
def test_control_decision_needs_positive_evidence(low: float, high: float, decision: str) -> None:
    assert control_decision(effect(low, high)).decision == decision


def test_the_claimed_direction_follows_the_published_sign() -> None:
    assert control_decision(effect(0.06, 0.20, published=0.09)).decision == "pass"
    assert control_decision(effect(-0.20, -0.06, published=0.09)).decision == "fail"


def test_a_rejecting_artefact_test_fails_even_a_strong_effect() -> None:
    outcome = control_decision(effect(-0.20, -0.06), artefact_rejects=True)
    assert outcome.decision == "fail" and "artefact" in outcome.reason


def test_a_non_finite_effect_is_inconclusive_and_underpowered_carries_n() -> None:
    assert control_decision(Effect(math.nan, -1, 1, PUBLISHED)).decision is None
    outcome = control_decision(effect(-0.12, 0.02), n_needed=40)
    assert (outcome.decision, outcome.n_needed) == ("underpowered", 40)


@pytest.mark.parametrize("bad", [{"published": 0.0}, {"published": math.inf}, {"min_fraction": 0.0},
                                 {"min_fraction": 1.5}])
def test_effect_rejects_values_that_make_no_decision(bad: dict[str, float]) -> None:
    kwargs = {"estimate": 0.0, "ci_low": -1.0, "ci_high": 1.0, "published": PUBLISHED, **bad}
    with pytest.raises(ValueError, match="effect 'effect'"):
        Effect(**kwargs)


CIS = st.tuples(st.floats(-1, 1), st.floats(0, 1)).map(lambda t: (t[0], t[0] + t[1]))


@given(CIS)
def test_exactly_one_decision_and_it_flips_with_the_sign_convention(ci: tuple[float, float]) -> None:
    low, high = ci
    first = control_decision(Effect((low + high) / 2, low, high, PUBLISHED)).decision
    mirrored = control_decision(Effect(-(low + high) / 2, -high, -low, -PUBLISHED)).decision
    assert first in ("pass", "fail", "underpowered") and first == mirrored


def test_n_for_power_matches_the_textbook_figures() -> None:
    """Two-sample t, d = 0.5, alpha 0.05: 64 per group two-sided and 51 one-sided at 80% power (Cohen 1988)."""
    assert n_for_power(0.5, alternative="two-sided") == 64
    assert n_for_power(0.5, alternative="greater") == 51
    assert n_for_power(0.5, alternative="greater", paired=True) < 51
    assert n_for_power(0.0) is None and n_for_power(1e-6, n_max=1000) is None
    assert n_for_power(50.0) == 2  # the smallest test already has the power


def result(protocol: str, kind: str, passed: bool | None = True, decision: str | None = None) -> dict[str, object]:
    return {"protocol": protocol, "kind": kind, "passed": passed, "decision": decision}


DECLARED = Declared(as_published=("as_published",), controls=("a", "b"))
HELD = result("as_published", "as_published")


@pytest.mark.parametrize(("results", "declared", "expected"), [
    ([HELD, result("control:a", "control", decision="pass"), result("control:b", "control", decision="pass")],
     DECLARED, "reproduced"),
    ([HELD, result("control:a", "control", decision="fail"), result("control:b", "control", decision="pass")],
     DECLARED, "fragile"),
    ([HELD, result("control:a", "control", decision="underpowered"), result("control:b", "control",
                                                                             decision="pass")],
     DECLARED, "underpowered"),
    ([HELD, result("control:a", "control", decision="pass")], DECLARED, "inconclusive"),
    ([HELD, result("control:a", "control", decision="pass")], Declared(("as_published",), ("a", "b"),
                                                                       skipped_on_purpose=("b",)), "reproduced"),
    ([HELD], Declared(("as_published",)), "inconclusive"),
    ([result("as_published", "as_published", passed=False)], DECLARED, "not_reproduced"),
    ([result("as_published", "as_published", passed=None)], DECLARED, "inconclusive"),
    ([HELD, result("null:random_weights", "null"), result("control:a", "control", decision="pass"),
      result("control:b", "control", decision="pass")], DECLARED, "non_diagnostic"),
    ([HELD, result("null:random_weights", "null", passed=False), result("control:a", "control", decision="pass"),
      result("control:b", "control", decision="pass"), result("robustness:perm", "robustness", passed=False)],
     DECLARED, "reproduced"),
    # a claim judged on the published data alone: its re-derivation counts beside the as-published test
    ([HELD, result("rederive", "rederive"), result("control:a", "control", decision="underpowered")],
     Declared(("as_published",), ("a",)), "underpowered"),
    ([HELD, result("rederive", "rederive", passed=False), result("control:a", "control", decision="pass")],
     Declared(("as_published",), ("a",)), "not_reproduced"),
    ([HELD, result("rederive", "rederive", passed=None), result("control:a", "control", decision="pass")],
     Declared(("as_published",), ("a",)), "inconclusive"),
    ([HELD, result("rederive", "rederive"), result("control:a", "control", decision="pass")],
     Declared(("as_published",), ("a",)), "reproduced"),
    ([result("rederive", "rederive")], Declared(), "rederived"),
    ([result("rederive", "rederive", passed=False)], Declared(), "not_reproduced"),
    ([result("downstream", "measure")], Declared(), "measured"),
    ([], Declared(), "inconclusive"),
])
def test_verdict_rules(results: list[dict[str, object]], declared: Declared, expected: str) -> None:
    assert verdict(results, declared).verdict == expected


def test_the_verdict_names_what_did_not_run_and_what_was_skipped() -> None:
    partial = verdict([HELD, result("control:a", "control", decision="pass")], DECLARED)
    assert partial.not_run == ["b"] and "controls not run: b" in partial.reasons
    skipped = verdict([HELD, result("control:a", "control", decision="pass")],
                      Declared(("as_published",), ("a", "b"), skipped_on_purpose=("b",)))
    assert skipped.skipped_on_purpose == ["b"] and skipped.not_run == []


def test_a_dropped_control_is_listed_as_skipped_and_never_counted() -> None:
    """A control that would repeat as_published on a model (h10b: Qwen's all_heads at 28 heads) decides nothing."""
    dropped = {**result("control:b", "control", passed=None, decision=None), "dropped": "repeats as_published"}
    judged = verdict([HELD, result("control:a", "control", decision="pass"), dropped], DECLARED)
    assert judged.verdict == "reproduced" and judged.not_run == [] and "control:b" not in judged.controls
    assert judged.skipped_on_purpose == ["b (dropped: repeats as_published)"]


def test_a_failed_re_derivation_beside_an_as_published_test_is_named() -> None:
    judged = verdict([HELD, result("rederive", "rederive", passed=False), result("control:a", "control",
                                                                               decision="pass")],
                     Declared(("as_published",), ("a",)))
    assert judged.reasons == ["the published table does not give the published figure: rederive"]
