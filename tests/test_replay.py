"""Tests of harness/claimkit/replay.py and role_rederive.py: the published role-conditioning tables re-derived,
the claims' re-derivations, and the command line.

The expected figures live in fixtures/replay/rfc_published_figures.toml; the tables are the vendored copies in
fixtures/published/, checked against MANIFEST.toml: a missing or altered table fails, never skips.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from harness.claimkit.published import verified_table
from harness.claimkit.registry import get_claim
from harness.claimkit.replay import REQUIRED_COLUMNS, ReplayError, main, read_table, replay_rfc
from harness.claimkit.role_rederive import cross_model, rederive
from harness.resources import published_dir

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = published_dir()
FIGURES = tomllib.loads((ROOT / "fixtures" / "replay" / "rfc_published_figures.toml").read_text("utf-8"))
TABLES = [name for name in FIGURES if name not in ("tolerance", "correlations")]


def table_path(name: str) -> Path:
    return verified_table(PUBLISHED, FIGURES[name]["file"])


def lookup(data: Any, path: str) -> Any:
    """data["rfc"]["thresholds"]["below"] for "rfc.thresholds.below"; integer parts index lists."""
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def matches(observed: Any, expected: Any, tol: float) -> bool:
    if isinstance(expected, float):
        return math.isclose(observed, expected, rel_tol=0.0, abs_tol=tol)
    return bool(observed == expected)


def tolerance(section: dict[str, Any], path: str) -> float:
    return float(section.get("tolerance", {}).get(path, FIGURES["tolerance"]["default"]))


@pytest.fixture(scope="module")
def replays() -> dict[str, dict[str, Any]]:
    return {name: replay_rfc(table_path(name)).to_dict() for name in TABLES}


@pytest.mark.parametrize("name", TABLES)
def test_replayed_figures(name: str, replays: dict[str, dict[str, Any]]) -> None:
    section = FIGURES[name]
    wrong = {path: (lookup(replays[name], path), expected) for path, expected in section["replayed"].items()
             if not matches(lookup(replays[name], path), expected, tolerance(section, path))}
    assert not wrong, f"{section['file']}: (replayed, expected) differ for {wrong}"


@pytest.mark.parametrize("name", TABLES)
def test_every_published_discrepancy_is_explained(name: str, replays: dict[str, dict[str, Any]]) -> None:
    section = FIGURES[name]
    differs = {path for path, published in section["published"].items()
               if not matches(lookup(replays[name], path), published, tolerance(section, path))}
    explained = set(section.get("discrepancies", {}))
    assert differs - explained == set(), f"{name}: published figures not reproduced and not explained"
    assert explained - differs == set(), f"{name}: discrepancy notes for figures that do reproduce (stale)"


def test_mistral_discrepancy_is_the_head_count(replays: dict[str, dict[str, Any]]) -> None:
    section = FIGURES["mistral"]
    assert replays["mistral"]["n_heads"]["base"] < section["model_heads"]
    notes = [note for path, note in section["discrepancies"].items() if path.endswith("significant")]
    assert notes and all("28 of 32 heads" in note for note in notes)


def test_correlation_between_tables() -> None:
    for expected in FIGURES["correlations"].values():
        a, b = (table_path(name) for name in expected["tables"])
        result = replay_rfc(a, against=b, block=expected.get("block_length", 4)).to_dict()["correlation"]
        for key in [k for k in expected if k not in ("tables", "tolerance", "block_length")]:
            assert matches(result[key], expected[key], tolerance(expected, key)), key
        diffs = [read_table(p).columns["rfc_diff"] for p in (a, b)]
        assert result["pearson_r"] == pytest.approx(stats.pearsonr(*diffs).statistic, abs=1e-12)


def test_correlating_tables_of_different_depth_fails() -> None:
    with pytest.raises(ReplayError, match=r"32 layers but .* has 28"):
        replay_rfc(table_path("mistral"), against=table_path("qwen"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harness", "replay", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120, check=False)


def test_cli_json_to_stdout() -> None:
    done = run_cli("rfc", str(table_path("mistral")), "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    replayed = FIGURES["mistral"]["replayed"]
    for path in ("rfc.mean", "rfc.significant", "rsi.significant", "rfc.bonferroni", "n_heads.base"):
        assert matches(lookup(report, path), replayed[path], tolerance(FIGURES["mistral"], path)), path


def test_cli_json_file_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "qwen.json"
    done = run_cli("rfc", str(table_path("qwen")), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["unstable_layers"][0]["layer"] == 0
    assert "unstable RFC denominator" in done.stdout and "L0 (base RFC -7.413" in done.stdout


# ---- bad input: a synthetic table built from the published formulas ------------------------------------

def write_table(path: Path, layers: int = 4, heads: int = 28, seed: int = 0) -> Path:
    """A detailed_comparison table whose CI columns follow the published formulas."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float]] = [{"layer": i} for i in range(layers)]
    for metric in ("rfc", "rsi"):
        sds = {}
        for model in ("base", "instruct"):
            mean, sd = rng.normal(0, 0.1, layers), rng.uniform(0.05, 0.2, layers)
            half = stats.t.ppf(0.975, heads - 1) * sd / math.sqrt(heads)
            sds[model] = (mean, sd)
            for i, row in enumerate(rows):
                row.update({f"{metric}_mean_{model}": mean[i], f"{metric}_std_{model}": sd[i],
                            f"{metric}_ci_low_{model}": mean[i] - half[i],
                            f"{metric}_ci_high_{model}": mean[i] + half[i], f"n_heads_{model}": heads})
        diff = sds["instruct"][0] - sds["base"][0]
        se = np.sqrt((sds["base"][1] ** 2 + sds["instruct"][1] ** 2) / heads)
        half = stats.t.ppf(0.975, heads - 1) * se
        for i, row in enumerate(rows):
            row.update({f"{metric}_diff": diff[i], f"{metric}_diff_ci_low": diff[i] - half[i],
                        f"{metric}_diff_ci_high": diff[i] + half[i]})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REQUIRED_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_synthetic_table_replays_from_the_formulas(tmp_path: Path) -> None:
    path = write_table(tmp_path / "t.csv", layers=6)
    result = replay_rfc(path)
    diff = read_table(path).columns["rfc_diff"]
    assert result.rfc.mean == pytest.approx(diff.mean())
    assert result.rfc.thresholds.below == int((diff < -0.01).sum())
    assert result.rfc.ci_max_abs_error < 1e-12 and result.n_heads == {"base": 28, "instruct": 28}


def blank_cell(line: str, index: int) -> str:
    return ",".join("" if i == index else cell for i, cell in enumerate(line.split(",")))


def edit_lines(path: Path, edit: Any) -> Path:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda lines: [lines[0].replace("rfc_std_base", "rfc_sd_base"), *lines[1:]],
     r"missing column\(s\) \['rfc_std_base'\]"),
    (lambda lines: [*lines[:2], lines[2].rsplit(",", 2)[0], *lines[3:]],
     r"row 2 \(file line 3\) ends before column\(s\) \['rsi_diff_ci_low', 'rsi_diff_ci_high'\].*truncated"),
    (lambda lines: [*lines[:3], lines[3].replace(",", ",x", 1), *lines[4:]], "row 3, column 'rfc_mean_base'"),
    (lambda lines: [*lines[:2], blank_cell(lines[2], 1), *lines[3:]], "row 2 .*'rfc_mean_base' is empty"),
    (lambda lines: [*lines[:2], lines[2] + ",1", *lines[3:]], "row 2 .* has 1 cell"),
    (lambda lines: lines[:1], "no rows"),
    (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "column 'layer' reads"),
    (lambda lines: [lines[0], *lines[1:-1], lines[-1].replace(",28,", ",32,", 1)], "n_heads_base"),
], ids=["missing-column", "truncated-row", "not-a-number", "empty-cell", "extra-cell", "no-rows",
        "layers-out-of-order", "head-count-varies"])
def test_bad_tables_name_the_file_the_cell_and_the_fix(tmp_path: Path, edit: Any, message: str) -> None:
    path = edit_lines(write_table(tmp_path / "bad.csv"), edit)
    with pytest.raises(ReplayError, match=message) as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_cli_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.csv"
    assert main(["rfc", str(missing)]) == 2
    said = capsys.readouterr().err
    assert f"{missing}: no such file" in said
    hint = "fixtures/published/role-conditioning_mistral_detailed_comparison.csv"  # the vendored table, in every clone
    assert hint in said and (Path(__file__).resolve().parents[1] / hint).is_file()
    assert "shared" not in said
    assert main(["entropy", "x.csv"]) == 2
    assert "unknown subject 'entropy'; available: rfc" in capsys.readouterr().err
    truncated = edit_lines(write_table(tmp_path / "t.csv"), lambda lines: [*lines[:-1], lines[-1][:20]])
    assert main(["rfc", str(truncated), "--json", "-"]) == 2
    captured = capsys.readouterr()
    assert "row 4" in captured.err and "re-export" in captured.err and captured.out == ""


# ---- the claims' re-derivations (role_rederive) ---------------------------------------------------------

def test_qwen_rederives_from_the_committed_table_and_reports_the_superseded_one() -> None:
    claim = get_claim("rfc_preserved_qwen")
    committed, superseded = rederive(claim, PUBLISHED), rederive(claim, PUBLISHED, "superseded_data_file")
    assert (committed["protocol"], committed["kind"]) == ("rederive", "rederive")
    assert (superseded["protocol"], superseded["kind"]) == ("robustness:rederive_superseded", "robustness")
    published = claim.published
    assert committed["observed"]["mean_drfc"] == pytest.approx(published["mean_drfc_committed_table"], abs=5e-5)
    assert committed["passed"] is published["rederive_reproduces_headline"] is False
    assert superseded["observed"]["mean_drfc"] == pytest.approx(published["mean_drfc"], abs=5e-5)
    assert superseded["passed"] is True
    assert committed["observed"]["mean_drfc_superseded_table"] == superseded["observed"]["mean_drfc"]
    assert superseded["observed"]["mean_drfc_committed_table"] == committed["observed"]["mean_drfc"]
    assert any("superseded table" in note for note in committed["notes"])
    assert committed["observed"]["mean_drfc_without_unstable"] == pytest.approx(
        published["mean_drfc_committed_without_layer_0"], abs=5e-5)


def test_llama_rederives_and_correlates_with_mistral_beside_the_layer_aware_nulls() -> None:
    claim = get_claim("rfc_instruct_compresses_llama")
    result = rederive(claim, PUBLISHED)
    assert result["passed"] is True and result["observed"]["layers_below"] == claim.published["layers_below"]
    corr = cross_model(claim, PUBLISHED)
    obs, published = corr["observed"], claim.published
    assert corr["kind"] == "robustness" and corr["passed"] is True
    assert obs["pearson_r"] == pytest.approx(published["pearson_r_mistral"], abs=5e-4)
    assert obs["pearson_p_iid"] == pytest.approx(published["pearson_p_mistral"], abs=5e-4)
    assert obs["spearman_rho"] == pytest.approx(published["spearman_rho_mistral"], abs=5e-5)
    expected = FIGURES["correlations"]["llama_vs_mistral"]
    assert obs["pearson_p_circular_shift"] == expected["shift_p"]
    assert obs["pearson_p_block_permutation"] == pytest.approx(expected["block_p"], abs=1e-4)
    assert obs["pearson_p_block_permutation"] > 0.05 > obs["pearson_p_iid"]  # the iid p overstates it (W-B6)


def test_an_altered_vendored_table_fails_the_rederivation(tmp_path: Path) -> None:
    claim = get_claim("rfc_instruct_compresses_llama")
    for name in ("MANIFEST.toml", claim.published["data_file"], "role-conditioning_mistral_detailed_comparison.csv"):
        (tmp_path / name).write_bytes((PUBLISHED / name).read_bytes())
    table = tmp_path / claim.published["data_file"]
    header, first, *rest = table.read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index("rfc_diff")] = "-0.5"  # one cell of layer 0 changed
    table.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(ValueError, match="differs from the copy vendored"):
        rederive(claim, tmp_path)
    table.unlink()
    with pytest.raises(ValueError, match="not found"):
        cross_model(claim, tmp_path)


ROLE_CLAIMS = ("rfc_instruct_compresses_mistral", "rfc_preserved_qwen", "rfc_instruct_compresses_llama",
               "graded_head_ablation")


def published_floats(value: Any) -> list[float]:
    if isinstance(value, list):
        return [f for v in value for f in published_floats(v)]
    return [abs(value)] if isinstance(value, float) else []


def test_no_published_figure_of_the_role_claims_is_written_in_the_harness_code() -> None:
    # Published figures live in claim.toml; a figure with two or more significant digits found in harness/
    # code (e.g. "0.0934") means a number was copied instead of read.
    figures = {repr(v) for claim in ROLE_CLAIMS for v in published_floats(list(get_claim(claim).published.values()))
               if len(repr(v).replace(".", "").strip("0")) >= 2}
    assert "0.0934" in figures and "0.398" in figures  # the search covers the headline figures
    hits = [(str(path.relative_to(ROOT)), figure) for path in sorted((ROOT / "harness").rglob("*.py"))
            for figure in figures if figure in path.read_text(encoding="utf-8")]
    assert not hits, f"published figures written in harness code (read them from claim.toml): {hits}"


@pytest.mark.parametrize(("argv", "status"), [(["replay", "--help"], 0), (["replay", "-h"], 0), (["replay"], 2)],
                         ids=["--help", "-h", "bare"])
def test_replay_help_lists_the_subjects(argv: list[str], status: int) -> None:
    done = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == status
    assert done.stdout.startswith("usage: python -m harness replay <subject> [args]")
    assert "  rfc      RFC/RSI figures from a role-conditioning detailed_comparison CSV" in done.stdout
    assert "unknown subject" not in done.stderr


def test_replay_subject_help_is_argparse_help() -> None:
    done = subprocess.run([sys.executable, "-m", "harness", "replay", "rfc", "--help"], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0 and "usage: python -m harness replay rfc" in done.stdout and "--against" in done.stdout
