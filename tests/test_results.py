"""Unit tests of harness/results.py: the protocol-result shape and the check every claim test ends with."""

from __future__ import annotations

import math
from typing import Any

import pytest

from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import Claim, get_claim
from harness.claimkit.results import KINDS, check, is_diagnostic, protocol_result

CRITERION = {"separation": {"gt": 0.10}, "p_value": {"lt": 0.05}}


@pytest.fixture(scope="module")
def rv_claim() -> Claim:
    return get_claim("rv_contraction")


def on(weights: str, result: dict[str, Any]) -> dict[str, Any]:
    """The same result as if it came from a model with these weights."""
    return {**result, "weights": weights}


def test_protocol_result_packages_what_the_report_needs(rv_claim: Claim) -> None:
    bank = bank_for(rv_claim)
    res = protocol_result(
        rv_claim,
        "as_published",
        "as_published",
        CRITERION,
        {"separation": 0.2, "p_value": 0.01},
        banks=(bank,),
        n={"recursive": 8},
        exclusions={"short": 1},
        notes=("why",),
    )
    assert (res["claim"], res["claim_version"], res["model"], res["weights"]) == (
        rv_claim.id,
        rv_claim.version,
        "published-data",
        "published-data",
    )
    assert res["passed"] is True and res["criterion_detail"]["p_value"]["passed"] is True
    assert res["prompt_banks"] == [bank.describe()] and res["protocol_params"] == rv_claim.protocol
    assert (res["n"], res["exclusions"], res["notes"], res["model_info"]) == (
        {"recursive": 8},
        {"short": 1},
        ["why"],
        None,
    )


def test_protocol_result_rejects_an_unknown_kind(rv_claim: Claim) -> None:
    with pytest.raises(
        ValueError, match=r"result kind 'main'; allowed: \('as_published', 'control', 'robustness', 'null', "
    ):
        protocol_result(rv_claim, "x", "main", CRITERION, {})
    assert KINDS == ("as_published", "control", "robustness", "null", "rederive", "measure")


def test_an_inconclusive_result_says_why(rv_claim: Claim) -> None:
    res = protocol_result(
        rv_claim,
        "robustness:n30",
        "robustness",
        CRITERION,
        {"separation": 0.2, "p_value": math.nan},
        exclusions={"nan_pr": 3},
    )
    assert res["passed"] is None
    assert res["notes"] == ["inconclusive: p_value not observed or not finite; exclusions: {'nan_pr': 3}"]


def test_only_pretrained_weights_and_published_data_are_diagnostic() -> None:
    assert [is_diagnostic({"weights": w}) for w in ("pretrained", "published-data", "tiny", "random")] == [
        True,
        True,
        False,
        False,
    ]


def test_check_accepts_any_well_formed_result_on_tiny_weights(rv_claim: Claim) -> None:
    failing = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.0, "p_value": 0.5}
    )
    check(on("tiny", failing))
    nan = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.0, "p_value": math.nan}
    )
    check(on("random", nan))


def test_check_asserts_the_criterion_on_diagnostic_weights(rv_claim: Claim) -> None:
    held = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.2, "p_value": 0.01}
    )
    check(on("pretrained", held))
    failing = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.2, "p_value": 0.5}
    )
    with pytest.raises(
        AssertionError, match="rv_contraction/as_published on published-data: criterion not met"
    ):
        check(on("pretrained", failing))
    nan = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.2, "p_value": math.nan}
    )
    with pytest.raises(AssertionError, match="inconclusive"):
        check(nan)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"n": {"recursive": -1}}, r"n\[recursive\] = -1 is negative"),
        ({"observed": {"separation": 0.2}}, r"criterion metric 'p_value' was not observed"),
        (
            {"observed": {"separation": 0.2, "p_value": 0.01, "t": math.inf}},
            r"observed t = inf is not finite",
        ),
        ({"passed": None, "notes": []}, r"inconclusive without a note saying why"),
    ],
)
def test_check_names_what_is_malformed(rv_claim: Claim, change: dict[str, Any], problem: str) -> None:
    res = protocol_result(
        rv_claim, "as_published", "as_published", CRITERION, {"separation": 0.2, "p_value": 0.01}
    )
    with pytest.raises(AssertionError, match=rf"on published-data: malformed: .*{problem}"):
        check(on("tiny", {**res, **change}))
