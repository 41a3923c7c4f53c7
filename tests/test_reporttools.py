"""harness/reporttools.py: merge, diff and schema validation of claims JSON reports.

The report under test comes from running the rv_contraction claim on tiny CPU models (tests/cpu_suite.py).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cpu_suite import ROOT, SuiteRun, cpu_suite_run

from harness.report.document import SCHEMA_VERSION, aggregate
from harness.report.tools import SCHEMA_FILE, ReportError, diff, main, merge, validate


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> SuiteRun:
    return cpu_suite_run(tmp_path_factory)


@pytest.fixture
def doc(suite: SuiteRun) -> dict[str, Any]:
    return suite.document()


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------------ schema --

def test_the_cpu_suite_report_validates(suite: SuiteRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate(suite.document()) == []
    status, out, _ = run_cli(capsys, "validate", str(suite.json_path))
    assert status == 0 and f"valid (schema_version {SCHEMA_VERSION})" in out


@pytest.mark.parametrize(("edit", "path"), [
    (lambda d: d["results"][0].pop("claim"), "$.results[0].claim: missing (required)"),
    (lambda d: d["results"][3].pop("observed"), "$.results[3].observed: missing (required)"),
    (lambda d: d["run"].pop("seed"), "$.run.seed: missing (required)"),
    (lambda d: d["verdicts"][0].pop("verdict"), "$.verdicts[0].verdict: missing (required)"),
], ids=["result.claim", "result.observed", "run.seed", "verdict.verdict"])
def test_a_missing_field_is_named_by_its_json_path(doc: dict[str, Any], edit: Any, path: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    edit(doc)
    assert path in validate(doc)
    bad = write(tmp_path / "bad.json", doc)
    status, _, err = run_cli(capsys, "validate", str(bad))
    assert status == 2
    assert f"{bad}: {path}" in err and "regenerate the report" in err


@pytest.mark.parametrize(("edit", "path"), [
    (lambda d: d["results"][0]["n"].update(recursive="eight"), "$.results[0].n.recursive"),
    (lambda d: d["run"].update(seed="0"), "$.run.seed"),
    (lambda d: d["results"][1].update(passed="yes"), "$.results[1].passed"),
    (lambda d: d["verdicts"][0].update(verdict="sort_of"), "$.verdicts[0].verdict"),
    (lambda d: d.update(schema_version="1.0"), "$.schema_version"),
    (lambda d: d["results"][0]["criterion"].update(p_value={"below": 0.05}),
     "$.results[0].criterion.p_value"),
], ids=["n.recursive", "run.seed", "result.passed", "verdict.verdict", "schema_version", "criterion.op"])
def test_a_wrong_type_is_named_by_its_json_path(doc: dict[str, Any], edit: Any, path: str) -> None:
    edit(doc)
    problems = validate(doc)
    assert any(p.startswith(f"{path}:") for p in problems), problems


def test_a_truncated_report_names_the_file(suite: SuiteRun, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    text = suite.json_path.read_text(encoding="utf-8")
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2], encoding="utf-8")
    for argv in (["validate", str(cut)], ["diff", str(cut), str(suite.json_path)],
                 ["merge", str(suite.json_path), str(cut), "-o", str(tmp_path / "m.json")]):
        status, _, err = run_cli(capsys, *argv)
        assert status == 2, argv
        assert f"{cut}: the file looks truncated" in err and "line" in err, err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("", "truncated"), ("not json at all", "not valid JSON"), ("[1, 2]", "$ is a list"),
    ('{"schema_version": "2.0"}', "$.run is missing"),
])
def test_bad_input_to_merge_and_diff_names_file_and_field(text: str, message: str, tmp_path: Path,
                                                          suite: SuiteRun,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text, encoding="utf-8")
    status, _, err = run_cli(capsys, "diff", str(suite.json_path), str(bad))
    assert status == 2 and str(bad) in err and message in err, err


def test_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "validate", str(tmp_path / "nowhere.json"))
    assert status == 2 and "nowhere.json: no such file" in err


def test_validate_asks_for_jsonschema_when_it_is_missing(monkeypatch: pytest.MonkeyPatch, suite: SuiteRun,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema now raises ImportError
    with pytest.raises(ReportError, match="pip install jsonschema"):
        validate({})
    status, _, err = run_cli(capsys, "validate", str(suite.json_path))
    assert status == 2 and "pip install jsonschema" in err


def test_the_schema_ships_as_package_data() -> None:
    schema = resources.files("harness").joinpath("report", "schema", SCHEMA_FILE)
    assert json.loads(schema.read_text(encoding="utf-8"))["properties"]["schema_version"] == {"const": SCHEMA_VERSION}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["harness"]
    assert any(fnmatch.fnmatch(f"report/schema/{SCHEMA_FILE}", g) for g in globs), globs


# ------------------------------------------------------------------------------------------------- merge --

def _split(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two hosts' reports: each holds half of the results and claims their verdicts only."""
    a, b = copy.deepcopy(doc), copy.deepcopy(doc)
    half = len(doc["results"]) // 2
    a["results"], b["results"] = doc["results"][:half], doc["results"][half:]
    for part, host in ((a, "host-a"), (b, "host-b")):
        part["verdicts"] = aggregate(part["results"])
        part["run"]["device"]["platform"] = host
    b["run"]["started"] = a["run"]["finished"] + 1
    b["run"]["finished"] = a["run"]["finished"] + 10
    return a, b


def test_merge_of_two_hosts_equals_the_whole_run(doc: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _split(doc)
    out = tmp_path / "merged.json"
    files = [str(write(tmp_path / "a.json", a)), str(write(tmp_path / "b.json", b))]
    status, _, _ = run_cli(capsys, "merge", *files, "-o", str(out))
    merged = json.loads(out.read_text(encoding="utf-8"))
    assert status == 0 and validate(merged) == []
    assert sorted(map(json.dumps, merged["results"])) == sorted(map(json.dumps, doc["results"]))
    assert merged["verdicts"] == doc["verdicts"]
    assert merged["models"] == doc["models"]
    assert [m["device"]["platform"] for m in merged["run"]["merged_from"]] == ["host-a", "host-b"]
    assert [m["file"] for m in merged["run"]["merged_from"]] == files
    assert merged["run"]["started"] == a["run"]["started"]
    assert merged["run"]["finished"] == b["run"]["finished"]


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_merge_prefer_newer_keeps_the_latest_of_a_conflicting_result(doc: dict[str, Any], order: str) -> None:
    old, new = copy.deepcopy(doc), copy.deepcopy(doc)
    new["run"]["finished"] = old["run"]["finished"] + 60
    new["results"][0]["observed"]["p_value"] = 0.5
    inputs = [("old", old), ("new", new)] if order == "older first" else [("new", new), ("old", old)]
    merged = merge(inputs, prefer="newer")
    assert len(merged["results"]) == len(doc["results"])
    first = next(r for r in merged["results"] if r["nodeid"] == doc["results"][0]["nodeid"]
                 and r["protocol"] == doc["results"][0]["protocol"])
    assert first["observed"]["p_value"] == 0.5
    (conflict,) = merged["run"]["merge_conflicts"]  # the overridden result is listed, not dropped silently
    assert "p_value" in conflict and conflict.endswith("(old -> new)")
    assert validate(merged) == []


def test_merge_of_the_same_report_twice_is_no_conflict(doc: dict[str, Any]) -> None:
    merged = merge([("a", doc), ("b", copy.deepcopy(doc))])
    assert len(merged["results"]) == len(doc["results"]) and "merge_conflicts" not in merged["run"]


def test_a_measured_result_wins_over_a_skip_of_the_same_test(doc: dict[str, Any]) -> None:
    skipped = copy.deepcopy(doc)
    target = skipped["results"][0]
    skipped["results"][0] = {**{k: target[k] for k in ("claim", "model", "protocol", "kind", "nodeid")},
                             "passed": None, "outcome": "skipped", "reason": "no weights", "duration_s": 0.0,
                             "weights": None}
    skipped["run"]["finished"] = doc["run"]["finished"] + 60  # the skip is newer: still no conflict, no loss
    merged = merge([("ran", doc), ("skipped", skipped)])
    assert merged["results"][0] == doc["results"][0] and "merge_conflicts" not in merged["run"]


def test_merge_of_disagreeing_reports_lists_every_conflict(doc: dict[str, Any], tmp_path: Path) -> None:
    other = copy.deepcopy(doc)
    changed = other["results"][0]
    changed["passed"] = not changed["passed"]
    changed["observed"]["p_value"] = 0.5
    a, b = write(tmp_path / "a.json", doc), write(tmp_path / "b.json", other)
    out = tmp_path / "m.json"
    done = subprocess.run([sys.executable, "-m", "harness", "merge", str(a), str(b), "-o", str(out)],
                          capture_output=True, text=True, check=False, timeout=120)
    where = f"{changed['claim']} / {changed['model']} / {changed['protocol']}"
    assert done.returncode == 2 and not out.exists()
    assert "error: merge: the inputs disagree on 2 figure(s):" in done.stderr
    assert f"passed    {where}: {doc['results'][0]['passed']}" in done.stderr
    assert f"observed  {where}: p_value" in done.stderr
    assert f"({a} -> {b})" in done.stderr and "--prefer newer" in done.stderr
    kept = subprocess.run([sys.executable, "-m", "harness", "merge", str(a), str(b), "-o", str(out),
                           "--prefer", "newer"], capture_output=True, text=True, check=False, timeout=120)
    assert kept.returncode == 0 and len(json.loads(out.read_text(encoding="utf-8"))["run"]["merge_conflicts"]) == 2


def test_merge_recomputes_verdicts_and_takes_the_worst_status(doc: dict[str, Any]) -> None:
    a, b = _split(doc)
    a["verdicts"], b["verdicts"] = [], []
    b["run"]["status"], b["run"]["finished"] = "interrupted", None
    merged = merge([("a", a), ("b", b)])
    assert merged["verdicts"] == aggregate(doc["results"])
    assert merged["run"]["status"] == "interrupted" and merged["run"]["finished"] is None


def test_merge_refuses_reports_of_different_seeds(doc: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    other = copy.deepcopy(doc)
    other["run"]["seed"] = 7
    status, _, err = run_cli(capsys, "merge", str(write(tmp_path / "a.json", doc)),
                             str(write(tmp_path / "b.json", other)), "-o", str(tmp_path / "m.json"))
    assert status == 2 and "different seeds" in err and "--claim-seed" in err


# -------------------------------------------------------------------------------------------------- diff --

def test_diff_of_a_report_with_itself_is_empty(suite: SuiteRun, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "diff", str(suite.json_path), str(suite.json_path))
    assert status == 0 and out == "no differences\n"


def test_diff_lists_changed_verdicts_results_and_figures(doc: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    other = copy.deepcopy(doc)
    target = other["results"][0]
    target["observed"]["p_value"] = target["observed"]["p_value"] + 0.1
    target["passed"] = not target["passed"]
    gone = other["results"].pop()
    v = other["verdicts"][0]
    v["verdict"] = "fragile" if v["verdict"] != "fragile" else "reproduced"
    status, out, _ = run_cli(capsys, "diff", str(write(tmp_path / "a.json", doc)),
                             str(write(tmp_path / "b.json", other)))
    where = f"{target['claim']} / {target['model']} / {target['protocol']}"
    assert status == 1
    assert f"verdict   {v['claim']} / {v['model']}: {doc['verdicts'][0]['verdict']} -> {v['verdict']}" in out
    assert f"observed  {where}: p_value" in out and f"passed    {where}:" in out
    assert f"result    {gone['claim']} / {gone['model']} / {gone['protocol']}: only in A" in out


@pytest.mark.parametrize(("options", "differs"), [
    ([], True),                              # default rtol 1e-6 < the 1e-4 change
    (["--rtol", "1e-3"], False),
    (["--rtol", "0", "--atol", "1"], False),
    (["--rtol", "0", "--atol", "1e-9"], True),
])
def test_diff_tolerances(doc: dict[str, Any], options: list[str], differs: bool, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    other = copy.deepcopy(doc)
    observed = next(r for r in other["results"] if r.get("observed", {}).get("t"))["observed"]
    observed["t"] *= 1 + 1e-4
    status, _, _ = run_cli(capsys, "diff", str(write(tmp_path / "a.json", doc)),
                           str(write(tmp_path / "b.json", other)), *options)
    assert status == (1 if differs else 0)
    assert diff(doc, doc) == []
