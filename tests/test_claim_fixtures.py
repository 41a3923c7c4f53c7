"""The two fixtures that wire a claim's protocols to the plugin (harness/plugin/fixtures.py): `claim_context`
builds a protocol's context on the model under test (with the module's `claim_cache` where the context takes a
cache, and a cache of its own on the null-weights twin), and `verify_claim` records a result, skips a control
the claim dropped on this model, and checks the rest. Run through the real plugin (pytester, in process) on the
demo claim of tests/plugin_runs.py, on two tiny models."""

from __future__ import annotations

import json

import pytest
from plugin_runs import demo_claim, inprocess

MODELS = "tiny-mistral-instruct,tiny-llama-instruct"
BANK = """
[bank]
id = "demo"
version = 1
description = "two prompts for the fixtures' tests"

[categories]
plain = ["The river runs past the mill.", "A kettle whistles in the kitchen."]
"""

CONTEXTS = '''

import dataclasses


@dataclasses.dataclass
class WithCache:
    claim: object
    lm: object
    bank: object
    seed: int
    batch_size: int
    cache: dict


@dataclasses.dataclass
class WithoutCache:
    claim: object
    lm: object
    bank: object
    seed: int
    batch_size: int


def test_contexts(lm, null_lm, claim, prompt_bank, harness_options, claim_cache, claim_context):
    first, second = claim_context(WithCache), claim_context(WithCache)
    assert first.cache is claim_cache and second.cache is claim_cache  # the module's protocols share it
    assert (first.claim, first.lm, first.bank) == (claim, lm, prompt_bank)
    assert (first.seed, first.batch_size) == (harness_options.seed, harness_options.batch_size)
    twin = claim_context(WithCache, null_lm)
    assert twin.lm is null_lm and twin.cache == {} and twin.cache is not claim_cache
    assert claim_context(WithoutCache).lm is lm
'''

VERIFY = '''

def result(claim, model, protocol, **changes):
    base = {"claim": claim.id, "claim_version": claim.version, "protocol": protocol, "kind": "control",
            "model": model, "weights": "tiny", "model_info": None, "passed": True,
            "criterion": claim.control(protocol[8:])["criterion"], "criterion_detail": {}, "published": {},
            "observed": {"x": 1.0}, "tests": {}, "n": {}, "exclusions": {}, "notes": [], "non_diagnostic": False,
            "prompt_banks": [], "protocol_params": dict(claim.protocol), "data": {}}
    return {**base, **changes}


def test_dropped(model_id, claim, verify_claim):
    verify_claim(result(claim, model_id, "control:a", dropped="it would repeat as_published on this model"))


def test_malformed(model_id, claim, verify_claim):
    verify_claim(result(claim, model_id, "control:b", passed="maybe"))
'''


def test_claim_context_hands_the_module_cache_to_the_model_and_a_fresh_one_to_its_twin(
        pytester: pytest.Pytester) -> None:
    (demo_claim(pytester.path, extra=CONTEXTS) / "prompts.toml").write_text(BANK, encoding="utf-8")
    result = inprocess(pytester, "--models", MODELS, "-k", "test_contexts")
    result.assert_outcomes(passed=2)  # one per model


def test_verify_claim_records_then_skips_a_dropped_control_and_fails_a_malformed_result(
        pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path, extra=VERIFY)
    result = inprocess(pytester, "--models", MODELS, "-k", "test_dropped or test_malformed", "-rs")
    result.assert_outcomes(skipped=2, failed=2)
    text = "\n".join(result.outlines)
    assert "control:a dropped on tiny-mistral-instruct: it would repeat as_published on this model" in text
    skips = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skips) == 2 and all("demo_claim/test_demo_claim.py:" in line for line in skips), skips  # the test's line
    assert "passed = 'maybe'; allowed: True, False, None" in text
    report = json.loads((pytester.path / "results" / "claims.json").read_text(encoding="utf-8"))
    recorded = {(r["model"], r["protocol"]): r for r in report["results"]}
    for model in MODELS.split(","):  # both recorded before the skip or the failed check
        assert recorded[(model, "control:a")]["dropped"] == "it would repeat as_published on this model"
        assert recorded[(model, "control:b")]["passed"] == "maybe"
