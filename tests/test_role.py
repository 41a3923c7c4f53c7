"""Tests of harness/claimkit/role.py, role_format.py, role_effects.py, role_controls.py and the graded ablation
on the tiny models.

The in-forward entropies equal the pattern reference (harness/analysis/entropy.py) on eager patterns;
categories are data keys; a model compared with itself gives dRFC exactly 0 and no significant layer, under
every control (the chat-template control included: issue 10 found -0.1006 there); heads are counted from the
config, and capped at 28 only as the source did; a control identical to as_published is dropped; planted
effects get the decision they should (pass, fail, underpowered); graded ablation moves only what follows it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from claims.graded_head_ablation.protocols import PROTOCOLS as ABLATION
from claims.graded_head_ablation.protocols import AblationContext, Target, ablation_effect, map_targets
from harness.analysis.entropy import bos_mass, normalised_head_entropy, published_head_entropy
from harness.analysis.rfc import CONFOUNDER, NEUTRAL, SELF, PromptEntropies
from harness.claimkit.prompts import PromptBank, bank_for, find_bank
from harness.claimkit.registry import get_claim
from harness.claimkit.results import check
from harness.claimkit.role import (
    CategoryRun,
    RoleContext,
    compare_pair,
    entropies,
    measure,
    measure_category,
    published_heads_counted,
    summarise,
)
from harness.claimkit.role_controls import PROTOCOLS, match_token_counts
from harness.claimkit.role_format import MINIMAL_TEMPLATE, ScoredEncoded, chat_format, raw_format
from harness.claimkit.verdicts import Declared, verdict
from harness.engine.attention import EntropyResult, attention_entropy
from harness.engine.models import LoadedModel
from harness.engine.runner import encode
from harness.report.figures import figures_for

FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")
PROMPTS = ["Who created you?", "What is photosynthesis and why does it matter?", "How tall am I?"]
ATOL = 1e-5
SHARPEN = 8.0  # scales q and k so that the random tiny heads attend less uniformly and differ
CATEGORIES = {SELF: ["Who are you?", "Can you think?", "What are you for?"],
              NEUTRAL: ["What is rain?", "Explain gravity, please.", "How do tides work?"],
              CONFOUNDER: ["How tall am I?", "What should I eat?", "Where do I live now?"]}


def sharpened(lm: LoadedModel) -> LoadedModel:
    """A private copy of a tiny model with sharper attention (the shared model stays untouched)."""
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for module in model.modules():
            for name in ("q_proj", "k_proj"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(SHARPEN)
    return LoadedModel(lm.spec, model, lm.tokenizer, lm.weights, lm.resolved_revision, lm.source)


def eager_reference(lm: LoadedModel, prompt: str) -> dict[str, np.ndarray]:
    """(layer, head) values of one unpadded prompt from its materialised eager patterns."""
    ids = lm.tokenizer([prompt], add_special_tokens=lm.spec.bos, return_tensors="pt")
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            patterns = lm.model(**ids, output_attentions=True).attentions  # layer x (1, head, q, k)
    finally:
        lm.model.set_attn_implementation("sdpa")
    return {"published": np.stack([published_head_entropy(a)[0] for a in patterns]),
            "normalised": np.stack([normalised_head_entropy(a)[0] for a in patterns]),
            "bos_mass": np.stack([np.nanmean(bos_mass(a)[0], axis=-1) for a in patterns])}


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_entropies_equal_the_pattern_reference(tiny_models: dict[str, LoadedModel],
                                                      family: str) -> None:
    lm = sharpened(tiny_models[family])
    run = measure_category(lm, PROMPTS, batch_size=2)  # two batches, the first one padded
    assert run.published.shape == (len(PROMPTS), lm.dims.n_layers, lm.dims.n_heads)
    assert run.published.std(axis=-1).mean() > 0.02, "heads too alike for the comparison to discriminate"
    for i, prompt in enumerate(PROMPTS):
        expected = eager_reference(lm, prompt)
        for name, values in expected.items():
            np.testing.assert_allclose(getattr(run, name)[i], values, atol=ATOL, rtol=0,
                                       err_msg=f"{family}, {name}, prompt {i}")
    lengths = [len(lm.tokenizer(p, add_special_tokens=lm.spec.bos)["input_ids"]) for p in PROMPTS]
    assert run.n_tokens.tolist() == lengths
    assert run.n_normalised.tolist() == [n - 2 for n in lengths]


def test_the_engine_averages_only_the_marked_rows(tiny_models: dict[str, LoadedModel]) -> None:
    # By causality a prompt's rows 0..T-2 are those of the prompt without its last token, so the sum over all
    # rows is that prefix's sum plus the last row alone (eps smoothing over T vs T-1 keys: < 1e-5 nats).
    lm = sharpened(tiny_models["tiny-llama"])
    enc = encode(lm, [PROMPTS[1]])
    last = torch.zeros_like(enc.attention_mask, dtype=torch.bool)
    last[0, -1] = True

    def run(ids: torch.Tensor, rows: torch.Tensor | None = None) -> EntropyResult:
        with torch.no_grad(), attention_entropy(lm.model) as engine:
            lm.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            return engine.pop(rows).cpu()

    full, only_last, prefix = run(enc.input_ids), run(enc.input_ids, last), run(enc.input_ids[:, :-1])
    assert (int(full.n_rows[0]), int(only_last.n_rows[0])) == (enc.lengths[0], 1)
    assert only_last.published is not None and full.published_sum is not None and prefix.published_sum is not None
    np.testing.assert_allclose(full.published_sum, prefix.published_sum + only_last.published, atol=1e-5)
    with pytest.raises(ValueError, match="no scored row"):
        run(enc.input_ids, torch.zeros_like(last))


def test_categories_are_data_keys(tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-llama"]
    five = {**CATEGORIES, "third_person": ["How tall is she?"],
            "fifth": ["Name a colour.", "Count to three."]}
    runs = measure(lm, five, batch_size=2)
    assert list(runs) == list(five)
    assert [len(r.prompts) for r in runs.values()] == [len(v) for v in five.values()]
    three = measure(lm, CATEGORIES, batch_size=2)
    for key in CATEGORIES:
        np.testing.assert_array_equal(runs[key].published, three[key].published)
    # the comparison reads the keys it needs and ignores the others
    with_extra = summarise(compare_pair(entropies(runs), entropies(runs), None))
    assert with_extra["mean_drfc"] == 0.0 and with_extra["n_layers"] == lm.dims.n_layers


@pytest.fixture
def bank() -> PromptBank:
    return find_bank("role_conditioning")


def self_pair(lm: LoadedModel, bank: PromptBank, claim_id: str = "rfc_instruct_compresses_mistral"
              ) -> RoleContext:
    """One model as both base and instruct: every difference must vanish."""
    return RoleContext(get_claim(claim_id), lm, lm, bank, seed=3)


def test_a_model_against_itself_gives_zero_and_no_significant_layer(tiny_models: dict[str, LoadedModel],
                                                                    bank: PromptBank) -> None:
    lm = tiny_models["tiny-mistral"]
    ctx = self_pair(lm, bank)
    result = PROTOCOLS["as_published"](ctx)
    check(result)
    obs = result["observed"]
    assert obs["mean_drfc"] == 0.0 and obs["max_drfc"] == 0.0 and obs["min_drfc"] == 0.0
    assert obs["n_significant_rfc"] == 0 and obs["n_significant_rsi"] == 0 and obs["n_bonferroni_rfc"] == 0
    assert obs["layers_near_zero"] == obs["n_layers"] == lm.dims.n_layers
    assert result["passed"] is False  # "instruct compresses" needs mean dRFC < 0
    assert any("same weights" in note for note in result["notes"])
    heat = np.array(result["data"]["entropy_diff"]["values"])
    assert heat.shape == (lm.dims.n_layers, lm.dims.n_heads) and not heat.any()
    boot = PROTOCOLS["control:prompt_level_ci"](ctx)
    assert boot["kind"] == "robustness" and "decision" not in boot
    assert boot["observed"]["mean_drfc_ci_low"] == boot["observed"]["mean_drfc_ci_high"] == 0.0
    assert boot["observed"]["n_fdr_significant"] == 0 and boot["data"]["flip_p"] == [1.0] * lm.dims.n_layers


def test_chat_template_control_of_one_model_against_itself_is_zero(tiny_models: dict[str, LoadedModel],
                                                                  bank: PromptBank) -> None:
    # Issue 10 section 1: with only the instruct arm templated, one tiny model as base and instruct (true effect
    # 0) gave dRFC = -0.1006 here, about the published Mistral effect, while as_published gave 0.0000; the
    # control "passed" the compression claims with no effect. Both arms are now templated and scored on the
    # same rows, so every figure is exactly 0 and the control cannot pass.
    ctx = self_pair(tiny_models["tiny-mistral"], bank)
    assert PROTOCOLS["as_published"](ctx)["observed"]["mean_drfc"] == 0.0
    result = PROTOCOLS["control:chat_template"](ctx)
    check(result)
    obs = result["observed"]
    assert (obs["mean_drfc"], obs["mean_drfc_ci_low"], obs["mean_drfc_ci_high"]) == (0.0, 0.0, 0.0)
    assert (obs["did_drfc"], obs["did_drfc_ci_low"], obs["did_drfc_ci_high"]) == (0.0, 0.0, 0.0)
    assert obs["mean_tokens_templated"] > obs["mean_tokens_raw"] and obs["mean_rows_scored"] < obs[
        "mean_tokens_templated"]
    assert result["decision"] == "fail" and result["passed"] is False  # CI [0, 0]: no compression at all


def test_result_data_is_drawn_by_the_report(tiny_models: dict[str, LoadedModel], bank: PromptBank) -> None:
    lm = tiny_models["tiny-qwen2"]
    result = PROTOCOLS["as_published"](self_pair(lm, bank, "rfc_preserved_qwen"))
    profile = result["data"]["rfc_by_layer"]
    assert profile["kind"] == "layer_profile" and profile["layers"] == list(range(lm.dims.n_layers))
    assert set(profile["series"]) == {"base", "instruct"}
    assert len(profile["diff"]["ci_low"]) == lm.dims.n_layers
    drawn = figures_for(result)
    assert not drawn.problems, drawn.problems
    assert {"rfc_by_layer", "rsi_by_layer", "entropy_diff"} <= drawn.used
    assert len(drawn.figures) == 3


CAP = get_claim("rfc_instruct_compresses_mistral").protocol["published_heads_counted"]


def test_heads_counted_as_published_caps_at_the_sources_count_only() -> None:
    assert published_heads_counted(CAP + 4, CAP) == (CAP, None)
    assert published_heads_counted(CAP, CAP) == (CAP, None)
    counted, note = published_heads_counted(9, CAP)
    assert counted == 9 and note is not None and "only 9 query heads" in note
    with pytest.raises(ValueError, match="n_heads=0"):
        published_heads_counted(0, CAP)


def test_all_heads_counts_the_config_and_as_published_the_first_28() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 12, 10).astype(float)
    cats = {k: PromptEntropies(rng.uniform(0.5, 1.5, (10, 3, 32)), tokens)
            for k in (SELF, NEUTRAL, CONFOUNDER)}
    shifted = {k: PromptEntropies(c.head_means * (0.9 if k == SELF else 1.0), tokens)
               for k, c in cats.items()}
    capped = summarise(compare_pair(cats, shifted, published_heads_counted(32, CAP)[0]))
    everything = summarise(compare_pair(cats, shifted, None))
    assert (capped["heads_counted"], everything["heads_counted"]) == (CAP, 32)
    assert capped["mean_drfc"] != everything["mean_drfc"]


def with_control(ctx: RoleContext, name: str, **changes: object) -> RoleContext:
    """The context with [controls.<name>] (or [protocol] for name "protocol") changed, the claim file untouched."""
    claim = ctx.claim
    if name == "protocol":
        claim = dataclasses.replace(claim, protocol={**claim.protocol, **changes})
    else:
        claim = dataclasses.replace(claim, controls={**claim.controls, name: {**claim.control(name), **changes}})
    return dataclasses.replace(ctx, claim=claim)


def test_all_heads_is_dropped_where_it_would_repeat_as_published(tiny_models: dict[str, LoadedModel],
                                                                 bank: PromptBank) -> None:
    lm = tiny_models["tiny-llama"]
    ctx = self_pair(lm, bank, "rfc_instruct_compresses_llama")
    result = PROTOCOLS["control:all_heads"](ctx)  # the tiny model has < 28 heads: as_published counts all
    assert result["dropped"] and f"{lm.dims.n_heads} query heads" in result["dropped"]
    assert result["passed"] is None and "decision" not in result and result["notes"][0].startswith("dropped")
    capped = with_control(ctx, "protocol", published_heads_counted=2)  # the source's cap below the model's heads
    counted = PROTOCOLS["control:all_heads"](capped)
    check(counted)
    assert "dropped" not in counted and counted["observed"]["heads_counted"] == lm.model.config.num_attention_heads
    assert counted["observed"]["heads_dropped_as_published"] == lm.dims.n_heads - 2
    assert PROTOCOLS["as_published"](capped)["observed"]["heads_counted"] == 2


def test_raw_format_scores_every_row_and_the_template_only_the_prompt(tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-mistral"]
    assert not getattr(lm.tokenizer, "chat_template", None)
    template = chat_format(lm)
    assert "no chat template" in template.note and repr(MINIMAL_TEMPLATE) in template.note
    encode, name = template.encoder("prompt")
    enc = encode(lm, ["Who are you?", "What is rain?"])
    assert isinstance(enc, ScoredEncoded) and name == "minimal_template/prompt"
    first = enc.input_ids[0, : enc.lengths[0]]
    text = lm.tokenizer.decode(first, skip_special_tokens=True)
    assert text.replace(" ", "") == MINIMAL_TEMPLATE.format(prompt="Who are you?").replace(" ", "")
    assert int(first[0]) == lm.tokenizer.bos_token_id
    scored = lm.tokenizer.decode(first[enc.rows[0, : enc.lengths[0]]], skip_special_tokens=True)
    assert scored.strip() == "Who are you?" and bool(enc.rows[0, 0])  # BOS and the prompt, no scaffolding
    raw, _ = raw_format(lm).encoder("prompt")
    assert raw(lm, ["Who are you?"]).rows.all()  # a raw prompt's rows are all the prompt's


def test_the_tokenizers_chat_template_writes_bos_once_and_scores_the_content(
        tiny_models: dict[str, LoadedModel]) -> None:
    base = tiny_models["tiny-mistral"]
    tokenizer = copy.deepcopy(base.tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<s>[INST] {{ m['content'] }} [/INST]{% endfor %}"
    lm = LoadedModel(base.spec, base.model, tokenizer, base.weights, base.resolved_revision, base.source)
    template = chat_format(lm)
    assert "the tokenizer's chat template" in template.note and template.prefix == "<s>[INST] "
    enc = template.encoder("prompt")[0](lm, ["Who are you?", "What is rain?"])
    assert (enc.input_ids[:, 0] == tokenizer.bos_token_id).all()
    assert (enc.input_ids[:, 1] != tokenizer.bos_token_id).all()
    for i, prompt in enumerate(["Who are you?", "What is rain?"]):
        rows = enc.rows[i, 1:]
        assert lm.tokenizer.decode(enc.input_ids[i, 1:][rows]).strip() == prompt
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] | replace('?', '!') }}]{% endfor %}"
    with pytest.raises(ValueError, match=r"does not place the prompt 'Who\?' verbatim"):
        chat_format(lm).text("Who?")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="wrote the user content 2 times"):
        chat_format(lm)


def test_match_token_counts_over_any_keys() -> None:
    counts = {"a": [3, 5, 4, 9], "b": [5, 3, 3, 4], "c": [4, 3, 5, 5], "d": [3, 4, 5, 7]}
    matched = match_token_counts(counts, "a")
    assert matched == {"a": [0, 1, 2], "b": [1, 0, 3], "c": [1, 2, 0], "d": [0, 2, 1]}
    for key, index in matched.items():
        assert [counts[key][i] for i in index] == [3, 5, 4]
    with pytest.raises(ValueError, match="anchor category 'z'"):
        match_token_counts(counts, "z")


def test_graded_ablation_moves_only_what_follows(tiny_models: dict[str, LoadedModel]) -> None:
    lm = sharpened(tiny_models["tiny-mistral"])
    clean = measure(lm, {SELF: CATEGORIES[SELF], NEUTRAL: CATEGORIES[NEUTRAL]})
    target = Target((2, 1), 2, 1)
    unchanged = ablation_effect(lm, clean, target, 1.0)
    assert unchanged.ablated_layer_change == 0.0 and not unchanged.delta_entropy.any()
    assert not unchanged.delta_rfc.any()
    zeroed = ablation_effect(lm, clean, target, 0.0)
    assert zeroed.downstream == tuple(range(3, lm.dims.n_layers))
    assert zeroed.ablated_layer_change == 0.0  # its own attention runs before the o_proj edit
    assert np.abs(zeroed.delta_entropy).max() > 1e-6 and np.abs(zeroed.delta_rfc).max() > 0
    last = ablation_effect(lm, clean, Target((0, 0), lm.dims.n_layers - 1, 0), 0.0)
    assert last.downstream == () and last.record()["downstream_layers"] == 0


def test_graded_ablation_is_measured_never_reproduced(tiny_models: dict[str, LoadedModel], bank: PromptBank) -> None:
    # Issue 10 section 1: never run by its source and with no published figure, it showed "reproduced 1/1".
    claim = get_claim("graded_head_ablation")
    claim = dataclasses.replace(claim, protocol={**claim.protocol, "prompts_per_category": 3})
    ctx = AblationContext(claim, tiny_models["tiny-mistral"], bank)
    assert set(ABLATION) == {"measure", "measure:random_heads"}
    results = [ABLATION[name](ctx) for name in ABLATION]
    for result in results:
        check(result)
        assert result["kind"] == "measure" and result["passed"] is True and result["non_diagnostic"]
    assert verdict(results, Declared(controls=tuple(claim.controls))).verdict == "measured"


def test_targets_map_by_depth_and_modulo_heads(tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-mistral"]
    claim = get_claim("graded_head_ablation")
    targets, notes = map_targets(claim, lm)
    assert [t.published for t in targets] == [tuple(x) for x in claim.protocol["targets"]]
    assert all(0 <= t.layer < lm.dims.n_layers and 0 <= t.head < lm.dims.n_heads for t in targets)
    assert [t.head for t in targets] == [h % lm.dims.n_heads for _, h in claim.protocol["targets"]]
    assert notes and f"modulo {lm.dims.n_heads}" in notes[0]


def test_fixture_claims_name_existing_banks() -> None:
    for claim_id in ("rfc_instruct_compresses_mistral", "rfc_preserved_qwen",
                     "rfc_instruct_compresses_llama"):
        claim = get_claim(claim_id)
        for name in claim.control("token_matched")["banks"]:
            assert Path(find_bank(name, claim.folder).path).is_file()
        assert set(claim.protocol["categories"]) <= set(bank_for(claim).categories)


def planted_pair(tiny_models: dict[str, LoadedModel], bank: PromptBank, self_factor: float, noise: float = 0.0,
                 prompts: int | None = None) -> RoleContext:
    """A base and a stand-in "instruct" whose measured entropies are synthetic: the instruct self-prompt
    entropies (both variants) are the base's times `self_factor`, times 1 + noise * z per prompt (z standard
    normal, centred so that the sample effect is the planted one). Layer 0's published neutral entropy is
    near 0 in both (an unstable RFC denominator). The runs go into the context's cache, so no forward runs;
    `prompts` shortens each category."""
    base = tiny_models["tiny-mistral"]
    instruct = dataclasses.replace(base, spec=dataclasses.replace(base.spec, id="planted-instruct"),
                                   resolved_revision="planted")
    ctx = RoleContext(get_claim("rfc_instruct_compresses_mistral"), instruct, base, bank, seed=1)
    if prompts is not None:
        ctx = with_control(ctx, "protocol", prompts_per_category=prompts)
    rng = np.random.default_rng(5)
    categories = ctx.categories()
    shape = (len(categories[SELF]), base.dims.n_layers, base.dims.n_heads)
    runs = {}
    for name, texts in categories.items():
        values = rng.uniform(1.0, 2.0, shape)
        normalised = values * 0.5
        if name == NEUTRAL:
            values[:, 0] = 0.02
        tokens = rng.integers(5, 12, shape[0]).astype(float)
        runs[name] = CategoryRun(tuple(texts), tuple(range(shape[1])), values, normalised,
                                 np.full(shape, 0.3), tokens, tokens - 2, tokens)
    z = rng.standard_normal(shape[0])
    factor = self_factor * (1 + noise * (z - z.mean()))[:, None, None]
    planted = {k: dataclasses.replace(r, published=r.published * factor, normalised=r.normalised * factor)
               if k == SELF else r for k, r in runs.items()}
    for lm, measured in ((base, runs), (instruct, planted)):
        ctx.cache[RoleContext.key(lm, categories)] = measured
    return ctx


PLANTED = ("control:all_heads", "control:normalised_entropy", "control:unstable_layers_excluded")


@pytest.mark.parametrize(("self_factor", "decision"), [(1.1, "pass"), (0.9, "fail")])
def test_a_planted_compression_gets_its_decision(tiny_models: dict[str, LoadedModel], bank: PromptBank,
                                                 self_factor: float, decision: str) -> None:
    # Higher instruct entropy on self prompts lowers its RFC = 1 - H_self/H_neutral: dRFC < 0, "compression".
    ctx = with_control(planted_pair(tiny_models, bank, self_factor), "protocol", published_heads_counted=2)
    published = PROTOCOLS["as_published"](ctx)
    check(published)
    assert published["passed"] is (decision == "pass")
    for protocol in PLANTED:
        result = PROTOCOLS[protocol](ctx)
        check(result)
        assert result["decision"] == decision and result["passed"] is (decision == "pass"), (
            protocol, result["decision_reason"])
        effect = result["effect"]
        assert effect["published"] == ctx.claim.published["mean_drfc"] and effect["estimate"] == result[
            "observed"]["mean_drfc"]
        assert (effect["ci_high"] < 0) is (decision == "pass") and (effect["ci_low"] > 0) is (decision == "fail")
    unstable = PROTOCOLS["control:unstable_layers_excluded"](ctx)["observed"]
    assert unstable["n_excluded_layers"] == 1 and unstable["n_layers_kept"] == ctx.base.dims.n_layers - 1


def test_half_the_published_effect_on_few_prompts_is_underpowered(tiny_models: dict[str, LoadedModel],
                                                                  bank: PromptBank) -> None:
    # Issue 10 section 4: a real effect at half the published size with small n must read `underpowered`,
    # with the n that would tell, never `fragile`.
    half = abs(get_claim("rfc_instruct_compresses_mistral").published["mean_drfc"]) / 2
    ctx = planted_pair(tiny_models, bank, 1 + half, noise=0.2, prompts=8)
    results = [PROTOCOLS[p](ctx) for p in ("as_published", "control:normalised_entropy",
                                            "control:unstable_layers_excluded")]
    for result in results:
        check(result)
    controls = results[1:]
    assert [r["decision"] for r in controls] == ["underpowered", "underpowered"], [r["decision_reason"]
                                                                                   for r in controls]
    assert all(r["n_needed"] > 8 and "underpowered" in " ".join(r["notes"]) for r in controls)
    declared = Declared(as_published=("as_published",),
                        controls=("normalised_entropy", "unstable_layers_excluded"))
    assert verdict(results, declared).verdict == "underpowered"
    assert verdict(results, dataclasses.replace(declared, controls=("all_heads", *declared.controls))
                   ).verdict == "inconclusive"  # a declared control that did not run


def test_too_few_token_matched_prompts_is_inconclusive(tiny_models: dict[str, LoadedModel],
                                                       bank: PromptBank) -> None:
    ctx = self_pair(tiny_models["tiny-qwen2"], bank, "rfc_preserved_qwen")
    control = {**ctx.claim.control("token_matched"), "min_matched": 10_000}
    ctx.claim = dataclasses.replace(ctx.claim, controls={**ctx.claim.controls, "token_matched": control})
    result = PROTOCOLS["control:token_matched"](ctx)
    check(result)
    assert result["passed"] is None and result["notes"][0].startswith("inconclusive")
    assert result["exclusions"]["no_token_matched_partner"] < len(bank.category(SELF)) * 2
