"""Unit tests of harness/claimkit/declare.py and effects.py: what a claim declares, by kind, and how a control
states its effect against the published one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.claimkit.declare import (
    NULL_WEIGHTS,
    NULL_WEIGHTS_PROTOCOL,
    check_skipped,
    declared,
    protocol_kind,
    protocol_of,
)
from harness.claimkit.effects import EffectSpec, paired_effect, stratum_effect, two_sample_effect
from harness.claimkit.registry import ClaimError, get_claim, load_claim
from harness.claimkit.results import protocol_result
from harness.claimkit.verdicts import Declared

RV = get_claim("rv_contraction")
L31 = get_claim("l31_ablation_repetition")


def test_the_tables_kinds_name_the_protocols() -> None:
    assert protocol_of(RV, "token_matched") == "control:token_matched"
    assert protocol_of(RV, "permutation") == "robustness:permutation"
    assert protocol_of(L31, "detector_on_unablated") == "null:detector_on_unablated"
    assert [protocol_kind(RV, p) for p in ("as_published", "as_published_as_stated", "rederive",
                                           "control:n30", NULL_WEIGHTS_PROTOCOL, "measure:downstream")] == [
        "as_published", "as_published", "rederive", "robustness", "null", "measure"]


def test_what_a_claim_declares_for_a_model_and_for_its_published_data() -> None:
    found = declared(L31, skipped=("n20", "random_weights", "nonsense"))
    assert found.controls == ("calibrated_repetition", "layer_specificity", "prompt_specificity")
    assert found.nulls == ("detector_on_unablated", "other_layers", "non_recursive_prompts", NULL_WEIGHTS)
    assert found.robustness == ("n20",) and found.skipped_on_purpose == ("n20", "random_weights")
    assert declared(L31, null_weights=False).nulls == ("detector_on_unablated", "other_layers",
                                                       "non_recursive_prompts")
    assert declared(RV, model_based=False) == Declared(as_published=("rederive",))


def test_a_claim_on_published_data_alone_declares_everything_there_and_no_null_weights() -> None:
    corr = get_claim("rfc_corr_llama_mistral")
    assert corr.needs == "published_data"
    found = declared(corr, model_based=False, skipped=("block_length_sweep",))
    assert found.as_published == ("as_published",) and found.controls == ("layer_autocorrelation",)
    assert found.robustness == ("autocorrelation_nulls", "block_length_sweep", "readme_body_figure")
    assert found.nulls == () and found.null_weights is False
    assert found.skipped_on_purpose == ("block_length_sweep",)
    assert declared(corr).nulls == ()  # no weights, so no null-weights check, whichever way it is asked


def test_declarations_round_trip_through_the_report_and_join() -> None:
    one = declared(RV, skipped=("n30",))
    assert Declared.from_dict(one.as_dict()) == one
    joined = Declared.union([one, declared(RV, skipped=("chat_template",), null_weights=False)])
    assert joined.skipped_on_purpose == ("n30", "chat_template") and joined.null_weights is True
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['extra'\]"):
        Declared.from_dict({**one.as_dict(), "extra": []})


def test_a_skip_of_an_unknown_control_names_the_claim_and_a_hint() -> None:
    check_skipped(RV, ["chat_template", NULL_WEIGHTS])
    with pytest.raises(ClaimError, match=r"rv_contraction.tokens_matched.*did you mean 'token_matched'"):
        check_skipped(RV, ["tokens_matched"])


def test_a_result_whose_kind_contradicts_its_name_or_table_is_refused() -> None:
    criterion = {"p_value": {"lt": 0.05}}
    with pytest.raises(ValueError, match=r"'control:permutation' is of kind 'robustness'"):
        protocol_result(RV, "control:permutation", "control", criterion, {"p_value": 0.01})
    ok = protocol_result(RV, "robustness:permutation", "robustness", criterion, {"p_value": 0.01})
    assert ok["passed"] is True and ok["declared"] == declared(RV, model_based=False).as_dict()  # no model given


def test_an_effect_spec_reads_the_claim_and_says_what_is_missing(tmp_path: Path) -> None:
    spec = EffectSpec.of(RV, "token_matched")
    assert (spec.published, spec.min_fraction, spec.alpha) == (RV.published["separation"], 0.5,
                                                                 RV.protocol["control_alpha"])
    assert spec.confidence == pytest.approx(1 - 2 * spec.alpha)
    assert EffectSpec.of(L31, "calibrated_repetition").published == L31.control("calibrated_repetition")[
        "published_effect"]
    folder = tmp_path / "rv_contraction"
    folder.mkdir()
    text = RV.path.read_text(encoding="utf-8").replace('effect = "separation"\nmin_fraction = 0.5\n'
                                                       'recursive_categories', 'recursive_categories', 1)
    (folder / "claim.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ClaimError, match=r"\[controls.token_matched\] states no effect: add effect, min_fraction"):
        EffectSpec.of(load_claim(folder / "claim.toml"), "token_matched")


def test_effects_follow_the_data_and_carry_n_needed_only_when_underpowered() -> None:
    spec = EffectSpec("separation", 0.2, 0.5, 0.05)
    strong = paired_effect(spec, [1.3, 1.2, 1.25, 1.22, 1.28], [1.0, 1.01, 0.99, 1.0, 1.02])
    assert strong.effect.estimate == pytest.approx(0.246) and strong.n_needed is None
    assert strong.observed["separation_ci_low"] > 0 and strong.observed["effect_floor"] == pytest.approx(0.1)
    vague = two_sample_effect(spec, [1.0, 1.4, 0.7, 1.3], [1.0, 0.8, 1.2, 0.9])
    assert vague.effect.ci_low < 0 < vague.effect.ci_high and vague.n_needed is not None and vague.n_needed > 4
    every = stratum_effect(spec, [[1.0, 1.0, 1.0]] * 5, [0.0] * 5, 500, 0)  # each target collapses patched only
    assert every.effect.estimate == 1.0 and 0 < every.effect.ci_low < 1.0 and every.effect.ci_high == 1.0
    assert not math.isnan(every.observed["separation_se"]) and every.n_needed is None
