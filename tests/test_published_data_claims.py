"""Claims judged on the published data alone (`needs = "published_data"`), through the plugin.

A pytest session (pytester, in process) runs a copy of rfc_corr_llama_mistral. No model is selected for it,
whatever `--models` says; its as-published test, re-derivation and control all land on `published-data`, and
the verdict is judged there by the model rules: the full run is `underpowered` (its control's CI covers 0 and
half the published r), and a run without the control is `inconclusive`, naming it, never `rederived`.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from harness import plugin_installed
from harness.claimkit.registry import get_claim
from harness.plugin.collection import applicable_models
from harness.plugin.options import Options

SEED = get_claim("rfc_corr_llama_mistral")
PLUGIN = [] if plugin_installed() else ["-p", "harness.plugin"]


def run(pytester: pytest.Pytester, *args: str, report: str = "claims.json") -> tuple[int, dict[str, Any]]:
    """Run the copied claim (copied on the first call) and return pytest's exit code and the JSON report."""
    if not (pytester.path / SEED.id).exists():
        shutil.copytree(SEED.folder, pytester.path / SEED.id, ignore=shutil.ignore_patterns("__pycache__"))
    path = pytester.path / report
    result = pytester.runpytest_inprocess(*PLUGIN, "--models", "tiny-llama-instruct", "--claims-json", str(path),
                                          "--claims-html", "none", "-p", "no:cacheprovider", *args)
    return result.ret, json.loads(path.read_text(encoding="utf-8"))


def test_a_claim_on_published_data_runs_on_no_model() -> None:
    opts = Options.__new__(Options)  # applicable_models returns before it reads any option
    assert applicable_models(SEED, opts) == []


def test_its_verdict_is_judged_on_the_published_data(pytester: pytest.Pytester) -> None:
    ret, document = run(pytester)
    assert ret == 0
    assert {r["model"] for r in document["results"]} == {"published-data"}
    (found,) = document["verdicts"]
    assert (found["model"], found["verdict"]) == ("published-data", "underpowered")
    assert found["as_published"] == {"as_published": True, "rederive": True}
    assert found["null_weights"] == "not applicable (no model)"
    assert found["n_needed"]["control:layer_autocorrelation"] > SEED.published["n_layers"]


def test_without_its_control_it_is_inconclusive_not_rederived(pytester: pytest.Pytester) -> None:
    ret, document = run(pytester, "-k", "not control")
    (found,) = document["verdicts"]
    assert ret == 0 and found["verdict"] == "inconclusive"
    assert found["reasons"] == ["controls not run: layer_autocorrelation"]
    ret, document = run(pytester, "--skip-control", f"{SEED.id}.layer_autocorrelation", report="skipped.json")
    (found,) = document["verdicts"]
    assert ret == 0 and found["verdict"] == "inconclusive"
    assert found["skipped_on_purpose"] == ["layer_autocorrelation"]
    assert found["reasons"] == ["no control ran: reproduced needs at least one diagnostic control"]
