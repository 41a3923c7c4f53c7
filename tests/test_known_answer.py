"""Known answers through the real plugin path (issue 10 §4): a pytest session (pytester, in process) runs the
rv_contraction protocols and the null-weights check on tiny-mistral-instruct with an R_V planted by
tests/planting.py, and the verdict is read from the JSON report the plugin writes.

- a planted real effect (recursive lower by the published separation) -> reproduced;
- a planted length-only artefact (R_V a function of the token count alone) -> fragile, never reproduced;
- half the published effect with noise (small n for that effect), the published comparison as published ->
  underpowered with the n that would decide it, not fragile;
- an effect planted whatever the weights (the random-weight twin gets it too) -> non_diagnostic.
The robustness checks are skipped on purpose (--skip-control), which the verdicts list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import plugin_installed
from harness.claimkit.registry import get_claim

SEED_CLAIM = get_claim("rv_contraction")
MODEL = "tiny-mistral-instruct"
SCENARIOS = {"rv_planted_effect": "effect", "rv_length_artefact": "length", "rv_half_effect": "half",
             "rv_planted_everywhere": "effect"}
CONTROLS = ("token_matched", "length_strata", "bos_excluded", "chat_template")
SKIPS = [f"{claim}.{name}" for claim in SCENARIOS for name in ("permutation", "n30")]
SKIPS += [f"rv_planted_everywhere.{name}" for name in CONTROLS]  # its verdict rests on the null alone

MODULE = '''
import pytest

from claims.rv_contraction.protocols import PROTOCOLS, SCHEMA
from harness.claimkit.declare import NULL_WEIGHTS_PROTOCOL
from harness.claimkit.results import check, null_weights_result
from harness.claimkit.rv import Context, as_published
from planting import planted, scenario

pytestmark = pytest.mark.claim("{claim}", schema=SCHEMA)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_planted(protocol, lm, claim, prompt_bank, harness_options, record_claim):
    target, exact = scenario("{scenario}", claim, prompt_bank)
    ctx = Context(claim, lm, prompt_bank, harness_options.seed, 64, around_run=planted(lm, claim, target, exact))
    result = PROTOCOLS[protocol](ctx)
    record_claim(result)
    check(result)


@pytest.mark.parametrize("protocol", [NULL_WEIGHTS_PROTOCOL])
def test_null(protocol, lm, null_lm, claim, prompt_bank, harness_options, record_claim):
    target, exact = scenario("{scenario}", claim, prompt_bank)
    plant = planted(null_lm, claim, target, exact) if {plant_null} else None
    ctx = Context(claim, null_lm, prompt_bank, harness_options.seed, 64, around_run=plant)
    result = null_weights_result(as_published(ctx), lm, null_lm)
    record_claim(result)
    check(result)
'''


def claim_folder(root: Path, claim_id: str, scenario: str) -> None:
    """A copy of rv_contraction (its claim.toml and prompt bank) under another id, with a planted test module."""
    folder = root / claim_id
    folder.mkdir()
    text = SEED_CLAIM.path.read_text(encoding="utf-8").replace('id = "rv_contraction"', f'id = "{claim_id}"', 1)
    (folder / "claim.toml").write_text(text, encoding="utf-8")
    (folder / "prompts.toml").write_bytes((SEED_CLAIM.folder / "prompts.toml").read_bytes())
    module = MODULE.format(claim=claim_id, scenario=scenario, plant_null=claim_id == "rv_planted_everywhere")
    (folder / f"test_{claim_id}.py").write_text(module, encoding="utf-8")


def run_planted(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    """One in-process pytest session over the three planted claims; their verdicts by claim id."""
    for claim_id, scenario in SCENARIOS.items():
        claim_folder(pytester.path, claim_id, scenario)
    report = pytester.path / "claims.json"
    args = [] if plugin_installed() else ["-p", "harness.plugin"]
    skips = [arg for name in SKIPS for arg in ("--skip-control", name)]
    run = pytester.runpytest_inprocess(*args, "--models", MODEL, "--claims-json", str(report),
                                       "--claims-html", "none", "-p", "no:cacheprovider", "-q", *skips)
    assert run.ret == 0, run.stdout.str()[-3000:]
    document = json.loads(report.read_text(encoding="utf-8"))
    return {v["claim"]: v for v in document["verdicts"] if v["model"] == MODEL}


def test_known_answers_through_the_plugin(pytester: pytest.Pytester) -> None:
    verdicts = run_planted(pytester)

    effect = verdicts["rv_planted_effect"]  # a planted real effect -> reproduced
    assert effect["verdict"] == "reproduced", effect
    assert set(effect["controls"].values()) == {"pass"} and len(effect["controls"]) == 4
    assert effect["nulls"] == {"null:random_weights": False}
    assert effect["null_weights"] == "ran: the criterion fails on random weights"
    assert effect["skipped_on_purpose"] == ["permutation", "n30"] and effect["robustness"] == {}

    length = verdicts["rv_length_artefact"]  # a length-only artefact -> never reproduced
    assert length["verdict"] == "fragile", length
    assert length["as_published"] == {"as_published": True, "as_published_as_stated": True}
    assert length["controls"]["control:token_matched"] == "fail"
    assert length["controls"]["control:length_strata"] == "fail"

    half = verdicts["rv_half_effect"]  # half the effect, noisy: underpowered with the n needed, not fragile
    assert half["verdict"] == "underpowered", half
    assert "fail" not in half["controls"].values()
    assert half["n_needed"] and all(n > 8 for n in half["n_needed"].values())

    everywhere = verdicts["rv_planted_everywhere"]  # the criterion holds without the trained weights too
    assert everywhere["verdict"] == "non_diagnostic", everywhere
    assert everywhere["nulls"] == {"null:random_weights": True} and everywhere["non_diagnostic"] is True
