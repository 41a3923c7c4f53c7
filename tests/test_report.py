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


def pub(passed: bool | None, outcome: str = "passed", **kw: Any) -> dict[str, Any]:
    return result("as_published", "as_published", passed, outcome, **kw)


def ctl(name: str, passed: bool | None, outcome: str = "passed", **kw: Any) -> dict[str, Any]:
    return result("control", f"control_{name}", passed, outcome, **kw)


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
        ([pub(True), ctl("a", True), ctl("b", True)], "reproduced"),
        ([pub(True), ctl("a", True), ctl("b", False)], "fragile"),
        ([pub(True), ctl("a", False, "failed")], "fragile"),
        ([pub(False), ctl("a", True)], "not_reproduced"),
        ([pub(False, "failed"), ctl("a", False)], "not_reproduced"),  # the criterion failed on real weights
        ([pub(None), ctl("a", True)], "inconclusive"),  # NaN observed
        ([pub(True), ctl("a", None)], "inconclusive"),
        ([ctl("a", True)], "inconclusive"),  # no as-published result at all
        ([pub(True), result("as_published", "as_published_variant", False)], "not_reproduced"),
        ([pub(None, "skipped"), ctl("a", None, "skipped")], "skipped"),
        ([pub(True), ctl("a", None, "error")], "error"),
        ([pub(None, "error"), ctl("a", True)], "error"),
        (
            [result("rederive", "rederive", True, model="published-data", weights="published-data")],
            "reproduced",
        ),
    ],
    ids=[
        "all-pass",
        "control-fails",
        "control-test-failed",
        "as-published-fails",
        "as-published-test-failed",
        "nan",
        "control-nan",
        "controls-only",
        "one-main-fails",
        "skipped",
        "control-error",
        "main-error",
        "rederive",
    ],
)
def test_aggregate_verdict(items: list[dict[str, Any]], expected: str) -> None:
    (row,) = aggregate(items)
    assert row["verdict"] == expected


def test_aggregate_gives_one_verdict_per_claim_and_model() -> None:
    items = [
        pub(True, model="m2"),
        ctl("a", False, model="m2"),
        pub(True, model="m1"),
        ctl("a", True, model="m1"),
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
    assert rows[2]["as_published"] == {"as_published": True} and rows[2]["controls"] == {"control_a": False}


@pytest.mark.parametrize(
    ("weights", "diagnostic"),
    [
        (["pretrained"], True),
        (["pretrained", "published-data"], True),
        (["tiny"], False),
        (["random"], False),
        (["pretrained", None], False),
    ],
)
def test_aggregate_marks_which_weights_are_evidence(weights: list[str | None], diagnostic: bool) -> None:
    items = [ctl(f"c{i}", True, weights=w) for i, w in enumerate(weights)]
    (row,) = aggregate([pub(True, weights=weights[0]), *items])
    assert row["diagnostic_weights"] is diagnostic
    assert row["weights"] == sorted({str(w) for w in weights})


def test_aggregate_flags_a_non_diagnostic_criterion() -> None:
    (row,) = aggregate([pub(True, non_diagnostic=True), ctl("a", True)])
    assert row["non_diagnostic"] is True and row["verdict"] == "reproduced"
    assert aggregate([pub(True)])[0]["non_diagnostic"] is False


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
    report.add({**ctl("a", False), "observed": {"separation": -math.inf}})
    doc = strict_loads(report.path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["run"]["seed"] == 7 and doc["run"]["argv"] == ["-m", "not gpu"] and doc["run"]["git"] == GIT
    assert doc["run"]["status"] == "running" and doc["run"]["finished"] is None
    assert doc["models"] == {"tiny-mistral": info}
    assert [r["protocol"] for r in doc["results"]] == ["as_published", "control_a"]
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
                ctl("a", True),
                ctl("b", False),
                pub(True, model="mistral-7b-instruct-v0.2", weights="pretrained"),
            ]
        )
    )
    header, published, tiny = rows
    assert header.split()[:3] == ["claim", "model", "verdict"]
    assert "reproduced" in published and "not evidence" not in published
    assert (
        "fragile" in tiny
        and " 1/2 " in tiny
        and "weights tiny: not evidence about the published model" in tiny
    )
    assert summary_rows([]) == []
