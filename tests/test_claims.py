"""Unit tests of harness/claims.py: the claim registry, its validation errors and criteria.

Validation tests write claim files into tmp_path from the sections below, changing one thing each.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import harness.claimkit.registry as claims_module
from harness.claimkit.registry import (
    ClaimError,
    evaluate,
    get_claim,
    load_claim,
    load_claims,
)
from harness.resources import seed_claims_dir

SECTIONS = {
    "claim": """[claim]
id = "demo"
version = 1
title = "A demo claim"
statement = "Something holds."
source = { repo = "owner/repo", commit = "abc1234", files = ["run.py"] }
models = ["tiny-mistral"]
published_n_layers = 32
prompt_bank = "rv_contraction"
""",
    "published": '[published]\nt = 3.2\nper_prompt = [1.0, 2.0]\nnote = "text"\n',
    "protocol": "[protocol]\nwindow = 16\n",
    "criteria": "[criteria.as_coded]\np_value = { lt = 0.05 }\nseparation = { gt = 0.1, lt = 1 }\n",
    "controls": """[controls.permutation]
description = "labels permuted"
n_resamples = 100
criterion = { p_value = { lt = 0.05 } }
""",
}


def write_claim(directory: Path, name: str = "demo", **changes: str | None) -> Path:
    """A claim file built from SECTIONS; a change replaces a section's text, None drops the section."""
    sections = {**SECTIONS, **changes}
    path = directory / name / "claim.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text for text in sections.values() if text is not None), encoding="utf-8")
    return path


def claim_with(*lines: str, drop: str | None = None) -> str:
    """The [claim] section with `drop` removed and `lines` appended."""
    kept = [
        line for line in SECTIONS["claim"].splitlines() if drop is None or not line.startswith(f"{drop} =")
    ]
    return "\n".join([*kept, *lines]) + "\n"


# --- the real registry ------------------------------------------------------------------------------------


def test_the_real_registry_loads_and_ids_match_file_names() -> None:
    registry = load_claims()
    assert "rv_contraction" in registry
    for claim_id, claim in registry.items():
        assert claim.id == claim_id == claim.folder.name and claim.path.name == "claim.toml"
        assert claim.folder.parent == seed_claims_dir()


def test_rv_contraction_entry_holds_the_protocol_and_controls() -> None:
    claim = get_claim("rv_contraction")
    assert claim.models[0] == "mistral-7b-instruct-v0.2" and claim.published_n_layers == 32
    assert claim.tiny_models is not None and all(m.endswith("-instruct") for m in claim.tiny_models)
    assert (claim.protocol["early_layer"], claim.protocol["late_layer"], claim.protocol["window"]) == (
        5,
        27,
        16,
    )
    assert claim.criteria["as_coded"] == {"separation": {"gt": 0.10}, "p_value": {"lt": 0.05}}
    assert {"token_matched", "bos_excluded", "length_strata", "chat_template", "permutation", "n30"} <= set(
        claim.controls)
    assert (claim.controls["permutation"]["kind"], claim.controls["n30"]["kind"]) == ("robustness", "robustness")
    assert claim.control("permutation")["criterion"] == {"p_value": {"lt": 0.05}}


def test_unknown_claim_id_suggests_the_closest() -> None:
    with pytest.raises(
        ClaimError, match=r"unknown claim 'rv_contractoin' \(did you mean 'rv_contraction'\?\)"
    ):
        get_claim("rv_contractoin")


def test_unknown_control_lists_the_controls(tmp_path: Path) -> None:
    claim = load_claim(write_claim(tmp_path))
    with pytest.raises(
        ClaimError, match=r"demo/claim.toml: claim 'demo' has no control 'bos'; controls: permutation"
    ):
        claim.control("bos")


# --- a valid file -----------------------------------------------------------------------------------------


def test_a_valid_file_loads_every_table(tmp_path: Path) -> None:
    claim = load_claim(write_claim(tmp_path))
    assert (claim.id, claim.version, claim.models, claim.prompt_bank) == (
        "demo",
        1,
        ("tiny-mistral",),
        "rv_contraction",
    )
    assert claim.source == {"repo": "owner/repo", "commit": "abc1234", "files": ["run.py"]}
    assert claim.published == {"t": 3.2, "per_prompt": [1.0, 2.0], "note": "text"}
    assert claim.criteria["as_coded"]["separation"] == {"gt": 0.1, "lt": 1}
    assert claim.tiny_models is None


def test_tiny_models_is_optional(tmp_path: Path) -> None:
    claim = load_claim(write_claim(tmp_path, claim=claim_with('tiny_models = ["tiny-llama"]')))
    assert claim.tiny_models == ("tiny-llama",)


# --- validation errors: each names the file, the key and what is allowed ----------------------------------


def invalid(path: Path, pattern: str) -> None:
    with pytest.raises(ClaimError, match=pattern) as err:
        load_claim(path)
    assert str(err.value).startswith(f"{path}: ")


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write_claim(tmp_path, extra="[control.permutation]\ndescription = 'x'\n")
    invalid(
        path,
        r"unknown key\(s\) in \[top level\]: 'control' \(did you mean 'controls'\?\); "
        r"allowed: claim, controls, criteria, protocol, published",
    )


def test_unknown_claim_key_has_a_did_you_mean_hint(tmp_path: Path) -> None:
    path = write_claim(tmp_path, claim=claim_with('titel = "typo"'))
    invalid(path, r"unknown key\(s\) in \[claim\]: 'titel' \(did you mean 'title'\?\); allowed: id, models")


def test_unknown_key_without_a_close_match_has_no_hint(tmp_path: Path) -> None:
    path = write_claim(tmp_path, claim=claim_with("zzz = 1"))
    with pytest.raises(ClaimError, match=r"\[claim\]: 'zzz'; allowed") as err:
        load_claim(path)
    assert "did you mean" not in str(err.value)


def test_unknown_source_key(tmp_path: Path) -> None:
    line = 'source = { repo = "o/r", commit = "abc", files = [], url = "x" }'
    path = write_claim(tmp_path, claim=claim_with(line, drop="source"))
    invalid(path, r"unknown key\(s\) in \[claim.source\]: 'url'; allowed: commit, files, repo")


@pytest.mark.parametrize("table", ["published", "protocol", "criteria", "controls"])
def test_missing_table(tmp_path: Path, table: str) -> None:
    invalid(write_claim(tmp_path, **{table: None}), rf"\[top level\] is missing {table}$")


def test_missing_claim_key(tmp_path: Path) -> None:
    invalid(write_claim(tmp_path, claim=claim_with(drop="prompt_bank")), r"\[claim\] is missing prompt_bank$")


def test_id_must_equal_the_folder_name(tmp_path: Path) -> None:
    path = write_claim(tmp_path, name="other")
    invalid(path, r"claim.id = 'demo' must equal the name of its folder 'other'")


@pytest.mark.parametrize(
    ("key", "value"),
    [("version", "0"), ("version", '"1"'), ("published_n_layers", "-3"), ("published_n_layers", "32.0")],
)
def test_non_positive_integers_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    path = write_claim(tmp_path, claim=claim_with(f"{key} = {value}", drop=key))
    invalid(path, rf"claim.{key} = .*; use a positive integer")


def test_bad_criterion_op_lists_the_allowed_ops(tmp_path: Path) -> None:
    path = write_claim(tmp_path, criteria="[criteria.as_coded]\np_value = { eq = 0.05 }\n")
    invalid(path, r"\[criteria.as_coded\].p_value = \{'eq': 0.05\}; use one or more of lt, le, gt, ge")


@pytest.mark.parametrize("value", ['"0.05"', "true", "[0.05]"])
def test_non_numeric_criterion_value(tmp_path: Path, value: str) -> None:
    path = write_claim(tmp_path, criteria=f"[criteria.as_coded]\np_value = {{ lt = {value} }}\n")
    invalid(path, r"\[criteria.as_coded\].p_value.lt = .* is not a number")


def test_criterion_that_is_not_a_table(tmp_path: Path) -> None:
    invalid(
        write_claim(tmp_path, criteria="[criteria]\nas_coded = 0.05\n"),
        r"\[criteria.as_coded\] must map metric names to \{op = value\}, got 0.05",
    )


def test_control_needs_description_and_criterion(tmp_path: Path) -> None:
    path = write_claim(tmp_path, controls="[controls.permutation]\ndescription = 'x'\n")
    invalid(path, r"\[controls.permutation\] needs 'description' and 'criterion'")


def test_control_criterion_is_validated(tmp_path: Path) -> None:
    path = write_claim(
        tmp_path,
        controls="[controls.permutation]\ndescription = 'x'\ncriterion = { p_value = { below = 0.05 } }\n",
    )
    invalid(path, r"\[controls.permutation.criterion\].p_value = .*use one or more of lt, le, gt, ge")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "demo/claim.toml"
    path.parent.mkdir()
    path.write_text("[claim\nid = 'demo'\n", encoding="utf-8")
    invalid(path, r"is not valid TOML")


def test_a_copied_claim_file_cannot_reuse_an_id(tmp_path: Path) -> None:
    """Ids equal folder names: a second folder carrying an existing id fails the id check, naming the copy."""
    write_claim(tmp_path)
    copy = write_claim(tmp_path, name="demo_copy")
    with pytest.raises(ClaimError, match=rf"^{copy}: claim.id = 'demo' must equal the name of its folder 'demo_copy'"):
        load_claims(tmp_path)


def test_duplicate_ids_across_files_fail_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The duplicate check itself, reached by making every (valid) file load under one id."""
    first = write_claim(tmp_path, name="a_demo", claim=SECTIONS["claim"].replace('"demo"', '"a_demo"'))
    second = write_claim(tmp_path, name="b_demo", claim=SECTIONS["claim"].replace('"demo"', '"b_demo"'))
    real_load = claims_module.load_claim
    monkeypatch.setattr(
        claims_module, "load_claim", lambda path: dataclasses.replace(real_load(path), id="demo")
    )
    with pytest.raises(ClaimError, match=rf"{second}: duplicate claim id 'demo' \(also in {first}\)"):
        load_claims(tmp_path)


def test_load_claims_of_a_directory(tmp_path: Path) -> None:
    write_claim(tmp_path)
    body = SECTIONS["claim"].replace('id = "demo"', 'id = "second"')
    write_claim(tmp_path, name="second", claim=body)
    assert sorted(load_claims(tmp_path)) == ["demo", "second"]


# --- criteria ---------------------------------------------------------------------------------------------

CRITERION = {"separation": {"gt": 0.10}, "p_value": {"lt": 0.05}}


def test_evaluate_passes_when_every_rule_holds() -> None:
    passed, detail = evaluate(CRITERION, {"separation": 0.19, "p_value": 0.003, "t": 3.2})
    assert passed is True
    assert detail == {
        "separation": {"value": 0.19, "rule": {"gt": 0.10}, "passed": True},
        "p_value": {"value": 0.003, "rule": {"lt": 0.05}, "passed": True},
    }


@pytest.mark.parametrize(
    ("observed", "failing"),
    [
        ({"separation": 0.05, "p_value": 0.003}, "separation"),
        ({"separation": 0.19, "p_value": 0.05}, "p_value"),
    ],
)
def test_evaluate_fails_when_one_rule_fails(observed: dict[str, float], failing: str) -> None:
    passed, detail = evaluate(CRITERION, observed)
    assert passed is False
    assert [m for m, d in detail.items() if d["passed"] is False] == [failing]


def test_evaluate_needs_every_op_of_a_metric() -> None:
    band = {"r": {"gt": 0.5, "le": 1.0}}
    assert evaluate(band, {"r": 1.0})[0] is True
    assert evaluate(band, {"r": 1.5})[0] is False
    assert evaluate(band, {"r": 0.5})[0] is False
    assert evaluate({"n": {"ge": 30}}, {"n": 30})[0] is True


@pytest.mark.parametrize("missing", [float("nan"), np.float64("nan"), np.float32("nan"), None])
def test_evaluate_is_inconclusive_on_nan_or_missing(missing: object) -> None:
    passed, detail = evaluate(CRITERION, {"separation": 0.5, "p_value": missing})
    assert passed is None
    assert detail["p_value"]["passed"] is None and detail["separation"]["passed"] is True


def test_evaluate_is_inconclusive_when_a_metric_is_absent() -> None:
    assert evaluate(CRITERION, {"separation": 0.5})[0] is None


def test_a_nan_never_turns_a_failed_rule_into_inconclusive() -> None:
    """Issue 10 §1: separation 0.0 fails `> 0` whatever p is; NaN only matters when every known rule holds."""
    passed, detail = evaluate(CRITERION, {"separation": 0.0, "p_value": math.nan})
    assert passed is False and detail["separation"]["passed"] is False and detail["p_value"]["passed"] is None
    passed, _ = evaluate({"p_value": {"lt": 0.05}, "separation": {"gt": 0.0}}, {"separation": 0.0, "p_value": None})
    assert passed is False, "the order of the rules must not matter"
