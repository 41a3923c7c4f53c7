"""The verdict model through the plugin (issue 10 §2): what a run declares, skips on purpose, or leaves out.

A pytest session (pytester, in process) runs a copy of rv_contraction on tiny-mistral-instruct with a planted
effect (tests/planting.py), so that the as-published criterion holds:
- with `-k "as_published or permutation"` the declared controls that did not run make the verdict
  inconclusive and are named (the old rule said "reproduced" here: nothing but the criterion was tested);
- `--skip-control CLAIM.CONTROL` deselects a control and lists it as skipped on purpose, not as missing;
- `--no-null-weights` deselects the null-weights check and the report says it was opted out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import plugin_installed
from harness.claimkit.registry import get_claim
from harness.engine.specs import get_spec
from harness.plugin.fixtures import protocol_dtype

SEED = get_claim("rv_contraction")
CLAIM = "rv_subset"
MODULE = '''
import pytest

from claims.rv_contraction.protocols import PROTOCOLS, SCHEMA
from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.results import check, null_weights_result
from harness.claimkit.rv import Context, as_published
from planting import planted, scenario

pytestmark = pytest.mark.claim("rv_subset", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rv(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    target, exact = scenario("effect", claim, prompt_bank)  # a planted effect: the criterion holds
    ctx = Context(claim, lm, prompt_bank, harness_options.seed, 64, around_run=planted(lm, claim, target, exact))
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)


@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    result = null_weights_result(as_published(Context(claim, null_lm, prompt_bank, harness_options.seed, 64)),
                                 lm, null_lm)
    record_claim(result)
    check(result)
'''
PLUGIN = [] if plugin_installed() else ["-p", "harness.plugin"]


def claim_copy(root: Path) -> None:
    folder = root / CLAIM
    folder.mkdir()
    text = SEED.path.read_text(encoding="utf-8").replace('id = "rv_contraction"', f'id = "{CLAIM}"', 1)
    (folder / "claim.toml").write_text(text, encoding="utf-8")
    (folder / "prompts.toml").write_bytes((SEED.folder / "prompts.toml").read_bytes())
    (folder / f"test_{CLAIM}.py").write_text(MODULE, encoding="utf-8")


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any] | None]:
    claim_copy(pytester.path)
    report = pytester.path / "claims.json"
    result = pytester.runpytest_inprocess(*PLUGIN, "--models", "tiny-mistral-instruct", "--claims-json",
                                          str(report), "--claims-html", "none", "-p", "no:cacheprovider", *args)
    return result, json.loads(report.read_text(encoding="utf-8")) if report.exists() else None


def test_what_did_not_run_what_was_skipped_and_the_null_weights_choice_are_reported(
        pytester: pytest.Pytester) -> None:
    result, document = run(pytester, "-k", "as_published or permutation", "--skip-control",
                           f"{CLAIM}.chat_template", "--no-null-weights")
    assert result.ret == 0 and document is not None
    (found,) = [v for v in document["verdicts"] if v["model"] == "tiny-mistral-instruct"]
    ran = sorted(r["protocol"] for r in document["results"])
    assert ran == ["as_published", "as_published_as_stated", "robustness:permutation"]
    assert found["as_published"] == {"as_published": True, "as_published_as_stated": True}
    assert found["verdict"] == "inconclusive"
    assert found["reasons"] == ["controls not run: token_matched, length_strata, bos_excluded"]
    assert found["not_run"] == ["token_matched", "length_strata", "bos_excluded"]
    assert found["skipped_on_purpose"] == ["chat_template"]
    assert found["null_weights"] == "not run: opted out (--no-null-weights)"
    assert list(found["robustness"]) == ["robustness:permutation"] and found["controls"] == {}
    assert document["run"]["checks"] == {"null_weights": False, "skip_control": [f"{CLAIM}.chat_template"]}
    result.stdout.fnmatch_lines(["*not run: token_matched, length_strata, bos_excluded*skipped on purpose: "
                                 "chat_template*null-weights check not run: opted out*"])


def test_a_skip_of_an_unknown_control_is_one_clear_error(pytester: pytest.Pytester) -> None:
    result, document = run(pytester, "--skip-control", f"{CLAIM}.chat_templat")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and document is None
    result.stderr.fnmatch_lines([f"*--skip-control {CLAIM}.chat_templat: claim '{CLAIM}' has no control "
                                 "'chat_templat' (did you mean 'chat_template'?)*"])


def test_the_protocol_dtype_is_the_claims_not_the_registrys() -> None:
    """Issue 10 §1: rv_contraction on mistral-7b-v0.1 ran in the registry's float32; the protocol says float16."""
    spec = get_spec("mistral-7b-v0.1")
    assert spec.dtype == "float32" and SEED.protocol["dtype"] == "float16"
    assert protocol_dtype(SEED, spec) == "float16"
    assert protocol_dtype(SEED, get_spec("tiny-mistral-instruct")) is None  # tiny stand-ins keep float32
