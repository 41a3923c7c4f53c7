"""Unit tests of harness/report.py: strict JSON values, atomic writes, verdict aggregation, the document."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import harness.report.document as report_module
from harness.report.document import SCHEMA_VERSION, Report, aggregate, atomic_write, jsonable, summary_rows

GIT = {"commit": "0" * 40, "dirty": False}


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity, as strict JSON parsers do."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def result(
    kind: str,
    protocol: str,
    passed: bool | None,
    outcome: str = "passed",
    *,
    claim: str = "rv",
    model: str = "tiny-mistral",
    weights: str | None = "tiny",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "claim": claim,
        "model": model,
        "kind": kind,
        "protocol": protocol,
        "passed": passed,
        "outcome": outcome,
        "weights": weights,
        **extra,
    }


DECLARED = {"as_published": ["as_published"], "controls": ["a", "b"], "robustness": [], "nulls": [],
            "skipped_on_purpose": [], "null_weights": False}


def pub(passed: bool | None, outcome: str = "passed", **kw: Any) -> dict[str, Any]:
    return result("as_published", "as_published", passed, outcome, **{"declared": DECLARED, **kw})


def ctl(name: str, decision: str | None, outcome: str = "passed", **kw: Any) -> dict[str, Any]:
    """A control result as protocol_result makes it: `passed` follows the decision."""
    passed = {"pass": True, "fail": False}.get(decision or "")
    return result("control", f"control:{name}", passed, outcome, decision=decision, **{"declared": DECLARED, **kw})


# --- jsonable ---------------------------------------------------------------------------------------------


def test_jsonable_turns_non_finite_values_into_none() -> None:
    value = {
        "nan": float("nan"),
        "inf": math.inf,
        "ninf": -math.inf,
        "np32": np.float32("nan"),
        "np64": np.float64("inf"),
        "torch": torch.tensor(float("nan")),
        "ok": 0.5,
    }
    assert jsonable(value) == {
        "nan": None,
        "inf": None,
        "ninf": None,
        "np32": None,
        "np64": None,
        "torch": None,
        "ok": 0.5,
    }


def test_jsonable_walks_containers_and_unwraps_scalars() -> None:
    value = {1: (np.int64(3), [np.float32(0.5), "text", None, True]), "t": torch.tensor(2.0)}
    out = jsonable(value)
    assert out == {"1": [3, [0.5, "text", None, True]], "t": 2.0}
    assert type(out["1"][0]) is int and type(out["1"][1][0]) is float and out["1"][1][3] is True
    assert strict_loads(json.dumps(out, allow_nan=False)) == out


# --- atomic_write -----------------------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "results" / "claims.json"
    atomic_write(path, "first\n")
    atomic_write(path, "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["claims.json"]


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    atomic_write(path, "complete\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(
            path, "half written \ud800"
        )  # a lone surrogate cannot be encoded: the write fails midway
    assert path.read_text(encoding="utf-8") == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["claims.json"]


# --- aggregate --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([pub(True), ctl("a", "pass"), ctl("b", "pass")], "reproduced"),
        ([pub(True), ctl("a", "pass"), ctl("b", "fail")], "fragile"),
        ([pub(True), ctl("a", "fail", "failed"), ctl("b", "pass")], "fragile"),
        ([pub(True), ctl("a", "underpowered"), ctl("b", "pass")], "underpowered"),
        ([pub(True), ctl("a", "pass")], "inconclusive"),  # control b declared, never ran
        ([pub(False), ctl("a", "pass")], "not_reproduced"),
        ([pub(False, "failed"), ctl("a", "fail")], "not_reproduced"),  # the criterion failed on real weights
        ([pub(None), ctl("a", "pass")], "inconclusive"),  # NaN observed
        ([pub(True), ctl("a", None), ctl("b", "pass")], "inconclusive"),
        ([ctl("a", "pass"), ctl("b", "pass")], "inconclusive"),  # no as-published result at all
        ([pub(True), result("as_published", "as_published_variant", False)], "not_reproduced"),
        ([pub(True), ctl("a", "pass"), ctl("b", "pass"), result("null", "null:x", True)], "non_diagnostic"),
        ([pub(True), ctl("a", "pass"), ctl("b", "pass"), result("robustness", "robustness:n30", False)],
         "reproduced"),
        ([pub(None, "skipped"), ctl("a", None, "skipped")], "skipped"),
        ([pub(True), ctl("a", None, "error")], "error"),
        ([pub(None, "error"), ctl("a", "pass")], "error"),
        ([result("rederive", "rederive", True, model="published-data", weights="published-data")], "rederived"),
        ([result("measure", "measure:downstream", True)], "measured"),
    ],
    ids=["all-pass", "control-fails", "control-test-failed", "underpowered", "control-not-run",
         "as-published-fails", "as-published-test-failed", "nan", "control-nan", "controls-only", "one-main-fails",
         "null-holds", "robustness-never-counted", "skipped", "control-error", "main-error", "rederive", "measure"],
)
def test_aggregate_verdict(items: list[dict[str, Any]], expected: str) -> None:
    (row,) = aggregate(items)
    assert row["verdict"] == expected


def test_the_old_rule_no_longer_reproduces_with_nothing_tested() -> None:
    """Issue 10 §1: `verdict(True, {})` said reproduced. With no control run, or none declared, it cannot."""
    (nothing_declared,) = aggregate([result("as_published", "as_published", True)])
    assert nothing_declared["verdict"] == "inconclusive"
    assert "reproduced needs at least one diagnostic control" in nothing_declared["reasons"][0]
    (partial,) = aggregate([pub(True), ctl("a", "pass")])
    assert partial["verdict"] == "inconclusive" and partial["not_run"] == ["b"]
    assert partial["reasons"] == ["controls not run: b"]


def test_a_control_skipped_on_purpose_is_listed_not_missing() -> None:
    declared = {**DECLARED, "skipped_on_purpose": ["b"]}
    (row,) = aggregate([pub(True, declared=declared), ctl("a", "pass", declared=declared)])
    assert row["verdict"] == "reproduced" and row["skipped_on_purpose"] == ["b"] and row["not_run"] == []


def test_aggregate_gives_one_verdict_per_claim_and_model() -> None:
    items = [
        pub(True, model="m2"),
        ctl("a", "fail", model="m2"),
        ctl("b", "pass", model="m2"),
        pub(True, model="m1"),
        ctl("a", "pass", model="m1"),
        ctl("b", "pass", model="m1"),
        pub(False, claim="other", model="m1"),
        pub(None, "skipped", model="m3"),
    ]
    rows = aggregate(items)
    assert [(r["claim"], r["model"], r["verdict"]) for r in rows] == [
        ("other", "m1", "not_reproduced"),
        ("rv", "m1", "reproduced"),
        ("rv", "m2", "fragile"),
        ("rv", "m3", "skipped"),
    ]
    assert rows[2]["as_published"] == {"as_published": True}
    assert rows[2]["controls"] == {"control:a": "fail", "control:b": "pass"}


@pytest.mark.parametrize(
    ("weights", "diagnostic"),
    [
        (["pretrained"], True),
        (["pretrained", "published-data"], True),
        (["tiny"], False),
        (["random"], False),
    ],
)
def test_aggregate_marks_which_weights_are_evidence(weights: list[str], diagnostic: bool) -> None:
    items = [ctl(f"c{i}", "pass", weights=w) for i, w in enumerate(weights)]
    (row,) = aggregate([pub(True, weights=weights[0]), *items])
    assert row["diagnostic_weights"] is diagnostic
    assert row["weights"] == sorted(set(weights))


def test_aggregate_flags_a_non_diagnostic_criterion_and_says_what_the_null_weights_check_did() -> None:
    declared = {**DECLARED, "nulls": ["random_weights"], "null_weights": True}
    held = [pub(True, declared=declared), ctl("a", "pass"), ctl("b", "pass"),
            result("null", "null:random_weights", True, declared=declared)]
    (row,) = aggregate(held)
    assert row["non_diagnostic"] is True and row["verdict"] == "non_diagnostic"
    assert row["null_weights"].startswith("ran: the criterion also holds on random weights")
    (missing,) = aggregate(held[:3])
    assert missing["verdict"] == "inconclusive" and missing["not_run"] == ["random_weights"]
    assert missing["reasons"] == ["nulls not run: random_weights"] and missing["null_weights"] == "not run"
    (opted_out,) = aggregate([pub(True), ctl("a", "pass"), ctl("b", "pass")])
    assert opted_out["null_weights"] == "not run: opted out (--no-null-weights)"
    assert opted_out["verdict"] == "reproduced" and opted_out["non_diagnostic"] is False


# --- the document -----------------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Report:
    monkeypatch.setattr(report_module, "git_state", lambda root: dict(GIT))  # no subprocess in unit tests
    return Report(tmp_path / "out" / "claims.json", seed=7, argv=["-m", "not gpu"], root=tmp_path)


def test_report_document_is_strict_json_after_every_add(report: Report) -> None:
    info = {"id": "tiny-mistral", "weights": "tiny", "dims": {"n_layers": 16}}
    report.add(
        {
            **pub(True),
            "model_info": info,
            "observed": {"t": np.float32(2.5), "p_value": float("nan")},
            "n": {"recursive": np.int64(8)},
        }
    )
    first = strict_loads(report.path.read_text(encoding="utf-8"))
    assert first["results"][0]["observed"] == {"t": 2.5, "p_value": None}
    report.add({**ctl("a", "fail"), "observed": {"separation": -math.inf}})
    doc = strict_loads(report.path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["run"]["seed"] == 7 and doc["run"]["argv"] == ["-m", "not gpu"] and doc["run"]["git"] == GIT
    assert doc["run"]["status"] == "running" and doc["run"]["finished"] is None
    assert doc["models"] == {"tiny-mistral": info}
    assert [r["protocol"] for r in doc["results"]] == ["as_published", "control:a"]
    assert doc["results"][1]["observed"]["separation"] is None
    assert [(v["model"], v["verdict"]) for v in doc["verdicts"]] == [("tiny-mistral", "fragile")]
    assert [p.name for p in report.path.parent.iterdir()] == ["claims.json"]


def test_report_finish_records_status_and_end(report: Report) -> None:
    report.add(pub(True))
    report.finish("complete")
    run = strict_loads(report.path.read_text(encoding="utf-8"))["run"]
    assert run["status"] == "complete"
    assert run["finished"] >= run["started"] and run["wall_s"] >= 0
    assert set(run) >= {"harness_version", "packages", "device", "seed", "argv", "git"}


# --- terminal summary -------------------------------------------------------------------------------------


def test_summary_rows_show_verdict_controls_and_weight_notes() -> None:
    rows = summary_rows(
        aggregate(
            [
                pub(True),
                ctl("a", "pass"),
                ctl("b", "fail"),
                pub(True, model="mistral-7b-instruct-v0.2", weights="pretrained"),
                ctl("a", "pass", model="mistral-7b-instruct-v0.2", weights="pretrained"),
                ctl("b", "underpowered", model="mistral-7b-instruct-v0.2", weights="pretrained", n_needed=41),
            ]
        )
    )
    header, published, tiny = rows
    assert header.split()[:3] == ["claim", "model", "verdict"]
    assert "underpowered" in published and "not evidence" not in published
    assert "control:b underpowered (n >= 41 per group needed)" in published
    assert "fragile" in tiny and " 1/2 " in tiny and "weights tiny: not evidence about the published model" in tiny
    assert summary_rows([]) == []
