"""Unit tests of harness/claimkit/params.py: typed claim parameters, validated at collection (issue 12 rows
"unknown key in [protocol] or [controls.*]" and "wrong type"), and the same errors through the real plugin."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any, Literal

import pytest
from plugin_runs import inprocess

from harness.claimkit.params import Schema, describe, matches, validate
from harness.claimkit.registry import ClaimError, load_claim, load_claims

SCHEMA_MODULES = {
    "rv_contraction": "claims.rv_contraction.protocols",
    "l31_ablation_repetition": "claims.l31_ablation_repetition.protocols",
    "residual_patch_collapse": "claims.residual_patch_collapse.protocols",
    "graded_head_ablation": "claims.graded_head_ablation.protocols",
    "rfc_instruct_compresses_mistral": "harness.claimkit.role_controls",
    "rfc_preserved_qwen": "harness.claimkit.role_controls",
    "rfc_instruct_compresses_llama": "harness.claimkit.role_controls",
}


@pytest.mark.parametrize(("value", "expected", "ok"), [
    (16, int, True), (16.0, int, False), (True, int, False), (3, float, True), ("16", int, False),
    (["a", "b"], list[str], True), (["a", 1], list[str], False), ({"x": 1.0}, dict[str, float], True),
    ({"x": "y"}, dict[str, float], False), ("all", int | Literal["all"], True), (4, int | Literal["all"], True),
    ("some", int | Literal["all"], False), ([[1, 2]], list[list[int]], True), ("x", Any, True),
])
def test_matches(value: object, expected: object, ok: bool) -> None:
    assert matches(value, expected) is ok


def test_describe_reads_like_prose() -> None:
    assert describe(int) == "an integer"
    assert describe(list[str]) == "a list of a string"
    assert describe(Literal["float16", "float32"]) == "one of 'float16', 'float32'"
    assert describe(int | None) == "an integer (optional)"


def test_every_seed_claim_validates_against_the_schema_its_code_declares() -> None:
    claims = load_claims()
    assert set(SCHEMA_MODULES) <= set(claims)
    for claim_id, module in SCHEMA_MODULES.items():
        validate(claims[claim_id], importlib.import_module(module).SCHEMA)


def copy_claim(tmp_path: Path, claim_id: str = "rv_contraction") -> Path:
    folder = tmp_path / claim_id
    shutil.copytree(load_claims()[claim_id].folder, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder / "claim.toml"


def edited(path: Path, old: str, new: str) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


SCHEMA = importlib.import_module(SCHEMA_MODULES["rv_contraction"]).SCHEMA


@pytest.mark.parametrize(("old", "new", "message"), [
    ("window = 16\n", "windwo = 16\n", r"\[protocol\] has unknown key 'windwo' \(did you mean 'window'\?\)"),
    ("n_resamples = 10000\n", "n_resample = 10000\n",
     r"\[controls.permutation\] has unknown key 'n_resample' \(did you mean 'n_resamples'\?\)"),
    ("window = 16\n", 'window = "sixteen"\n', r"\[protocol\].window = 'sixteen' is a string; expected an integer"),
    ('dtype = "float16"\n', 'dtype = "fp16"\n', r"\[protocol\].dtype = 'fp16' is a string; expected one of"),
    ("min_pairs = 8\n", "", r"\[controls.token_matched\] is missing min_pairs \(min_pairs: an integer\)"),
    ("[controls.n30]", "[controls.n_30]", r"\[controls.n_30\] is not a control this claim's code runs "
                                          r"\(did you mean 'n30'\?\)"),
])
def test_a_claim_file_off_its_schema_names_file_key_and_type(tmp_path: Path, old: str, new: str,
                                                           message: str) -> None:
    path = edited(copy_claim(tmp_path), old, new)
    with pytest.raises(ClaimError, match=message) as err:
        validate(load_claim(path), SCHEMA)
    assert str(err.value).startswith(str(path))


def test_a_control_the_code_runs_must_be_in_the_file(tmp_path: Path) -> None:
    path = copy_claim(tmp_path)
    bigger = Schema(SCHEMA.protocol, {**SCHEMA.controls, "extra": {}})
    with pytest.raises(ClaimError, match=r"runs control\(s\) extra but claim.toml has no \[controls.extra\]"):
        validate(load_claim(path), bigger)


@pytest.mark.parametrize(("old", "new", "needle"), [
    ("window = 16\n", "windwo = 16\n", "did you mean 'window'"),
    ("window = 16\n", 'window = "sixteen"\n', "window = 'sixteen' is a string; expected an integer"),
])
def test_the_plugin_stops_at_collection_with_one_message(pytester: pytest.Pytester, old: str, new: str,
                                                         needle: str) -> None:
    """Through the real plugin: the claim folder copied into a project, its TOML broken; one error, no run."""
    edited(copy_claim(pytester.path), old, new)
    result = inprocess(pytester, "--models", "tiny-llama-instruct", f"--claims-json={pytester.path / 'c.json'}")
    output = result.stdout.str() + result.stderr.str()
    errors = output.split("short test summary info")[0]
    assert result.ret != 0 and errors.count(needle) == 1 and output.count("ERROR collecting") == 1, output[-3000:]
    assert "Traceback" not in output and "harness/" not in errors, output[-3000:]
    assert "passed" not in output.splitlines()[-1] and not (pytester.path / "c.json").exists()
