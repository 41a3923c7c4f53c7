"""The generation claims' protocols run directly on the tiny models (harness/l31_ablation.py,
harness/residual_patch.py, harness/generation_claims.py): what they compute, and what the report makes of it.

The published repetition criterion is a tautology (W-A2) and the published patch pins the last layer (W-A3):
both hold on any model, so both are asserted here exactly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claims.l31_ablation_repetition.protocols import PROTOCOLS as L31
from claims.l31_ablation_repetition.protocols import control_layers
from claims.residual_patch_collapse.protocols import PROTOCOLS as PATCH
from harness.analysis.textmetrics import published_repetition
from harness.claimkit.gen import GenContext
from harness.claimkit.prompts import PromptBank, bank_for
from harness.claimkit.published import verified_table
from harness.claimkit.registry import get_claim
from harness.claimkit.results import check
from harness.engine.models import LoadedModel
from harness.report.document import aggregate, summary_rows
from harness.resources import published_dir

PUBLISHED = published_dir()  # the vendored tables (fixtures/published, checked against MANIFEST.toml)
L31_ID, PATCH_ID = "l31_ablation_repetition", "residual_patch_collapse"


def _ctx(claim_id: str, lm: LoadedModel, bank: PromptBank | None = None,
         cache: dict[Any, Any] | None = None) -> GenContext:
    claim = get_claim(claim_id)
    return GenContext(claim, lm, bank or bank_for(claim), seed=0, cache={} if cache is None else cache)


@given(st.text(min_size=1).filter(lambda text: bool(text.split())))
def test_the_claims_detector_accepts_any_text_with_a_word(text: str) -> None:
    p = get_claim(L31_ID).protocol
    assert published_repetition(text, p["detector"], p["detector_ratio"], p["loop_phrases"][p["detector"]]).fired


def test_the_l31_criterion_holds_under_its_nulls_so_the_verdict_is_non_diagnostic(tiny_lm: LoadedModel) -> None:
    """Issue 10 §1: the detector's nulls were controls that could never pass (`< 0.5` on an always-firing
    detector). They are nulls now: the published criterion holds there, so the verdict is non_diagnostic."""
    ctx = _ctx(L31_ID, tiny_lm)
    names = ("as_published", "null:detector_on_unablated", "null:other_layers")
    results = {name: L31[name](ctx) for name in names}
    for res in results.values():
        check(res)
    assert [results[name]["kind"] for name in names] == ["as_published", "null", "null"]
    assert all(res["passed"] is True for res in results.values())
    paths = results["as_published"]["data"]["generation_paths"]  # which generation path ran, in every result
    assert paths["batches"] == {"eager": 1} and "CUDA" in paths["reasons"][0] and paths["graphs_recorded"] == 0
    for row in results["as_published"]["data"]["prompts"]:  # the tautology, prompt by prompt, on both texts
        assert "repetition" in row["detector_normal"] and "repetition" in row["detector_ablated"]
        assert row["normal"].startswith(row["prompt"][:5]) and row["ablated"] != ""
    (summary,) = aggregate(list(results.values()))
    assert summary["verdict"] == "non_diagnostic" and summary["non_diagnostic"] is True
    assert summary["nulls"] == {"null:detector_on_unablated": True, "null:other_layers": True}
    assert "published criterion non-diagnostic" in summary_rows([summary])[1]


def test_the_published_patch_pins_the_last_layer_in_the_claim(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(PATCH_ID, tiny_lm)
    assert ctx.layer(31) == tiny_lm.dims.n_layers - 1, "the published L31 must map onto the last layer"
    res = PATCH["control:argmax_token"](ctx)
    check(res)
    assert res["observed"]["argmax_fraction_L31"] == 1.0
    collapsed_at_31 = [row["collapse"] for row in res["data"]["generations"] if row["layer"] == 31]
    assert collapsed_at_31 and all(collapsed_at_31)
    assert res["passed"] is False, "a fully pinned generation must fail the argmax control"
    for calls in res["data"]["hook_calls"].values():
        assert calls["by_seq_len"].get("1", 0) > 0, "the patch must fire at the decode steps"


def test_residual_as_published_keeps_texts_side_by_side(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(PATCH_ID, tiny_lm)
    res = PATCH["as_published"](ctx)
    check(res)
    rows = res["data"]["pairs"]
    assert [row["layer"] for row in rows] == ctx.claim.protocol["layers"]
    for row in rows:
        assert {"normal", "patched", "random_vector", "completion", "collapse", "argmax_fraction"} <= set(row)
        assert row["normal"].startswith(row["target"][:5]) and row["patched"].startswith(row["target"][:5])
    assert res["n"] == {"sources": 1, "targets": 1, "layers": 3}


def test_other_layers_are_mapped_without_the_target_and_seeded(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(L31_ID, tiny_lm)
    layers, notes = control_layers(ctx)
    target = ctx.layer(ctx.claim.protocol["layer"])
    assert target not in layers and len(set(layers)) == len(layers)
    assert all(0 <= layer < tiny_lm.dims.n_layers for layer in layers)
    assert control_layers(ctx) == (layers, notes)
    if len({ctx.layer(p) for p in ctx.claim.control("other_layers")["layers"]} - {target}) < 3:
        assert notes, "collapsed layer mappings must be noted"


@pytest.mark.parametrize(("claim_id", "protocol"), [(L31_ID, "robustness:n20"), (PATCH_ID, "control:grid")])
def test_too_small_a_bank_is_inconclusive_with_a_reason(tiny_lm: LoadedModel, claim_id: str,
                                                        protocol: str) -> None:
    real = bank_for(get_claim(claim_id))
    small = PromptBank("small", 1, {k: v[:2] for k, v in real.categories.items()}, real.path, "0" * 64)
    res = (L31 if claim_id == L31_ID else PATCH)[protocol](_ctx(claim_id, tiny_lm, small))
    check(res)
    assert res["passed"] is None and res["notes"][0].startswith("inconclusive")


@pytest.mark.parametrize(("claim_id", "section_keys"), [
    (L31_ID, {"detection_rate": "detection_rate", "prompts_tested": "prompts_tested"}),
    (PATCH_ID, {"collapse_rate": "collapse_rate", "layers_tested": "layers_tested"}),
])
def test_published_figures_match_the_published_data(claim_id: str, section_keys: dict[str, str]) -> None:
    claim = get_claim(claim_id)
    path = verified_table(PUBLISHED, claim.published["data_file"])
    section = json.loads(path.read_text(encoding="utf-8"))[claim.published["data_section"]]
    for ours, theirs in section_keys.items():
        assert claim.published[ours] == section[theirs]
    if claim_id == PATCH_ID:
        assert claim.protocol["layers"] == section["layers_tested"]


def test_keyed_runs_are_generated_once_and_equal_a_fresh_batch(tiny_lm: LoadedModel,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """GenContext.run_keyed: a condition another protocol generated on the same prompts is reused, only the
    missing ones run, and a reused run equals the same condition generated in a different batch."""
    from harness.engine.interventions import zero_attention_output

    def ablate(_batch, index):  # type: ignore[no-untyped-def]
        return zero_attention_output(tiny_lm.model, 1, rows=index >= 0)

    calls: list[tuple[str, ...]] = []
    original = GenContext.run

    def counted(self, *conditions):  # type: ignore[no-untyped-def]
        calls.append(tuple(c.name for c in conditions))
        return original(self, *conditions)

    monkeypatch.setattr(GenContext, "run", counted)
    shared: dict = {}
    ctx = _ctx(L31_ID, tiny_lm, cache=shared)
    prompts = ctx.prompts([ctx.claim.protocol["prompt_category"]], 3)
    first = ctx.run_keyed(prompts, {"normal": None})
    second = _ctx(L31_ID, tiny_lm, cache=shared)
    both = second.run_keyed(prompts, {"normal": None, "ablate 1": ablate})
    assert calls == [("normal",), ("ablate 1",)]  # the second protocol generated only what was missing
    # its report still names how every run it used was made: the reused one's batches and its own
    assert all(any(p is q for q in second.paths) for p in first["normal"].paths + both["ablate 1"].paths)
    assert both["normal"] is first["normal"]
    fresh = _ctx(L31_ID, tiny_lm).run_keyed(prompts, {"normal": None, "ablate 1": ablate})  # its own cache
    assert [g.generated_ids for g in fresh["normal"].generations] == \
        [g.generated_ids for g in first["normal"].generations]
    assert [g.generated_ids for g in fresh["ablate 1"].generations] == \
        [g.generated_ids for g in both["ablate 1"].generations]
