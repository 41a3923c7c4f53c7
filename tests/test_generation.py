"""Unit tests of harness/generation.py: batched greedy generation with hooks active, on the tiny families.

Cached and uncached generation must give identical tokens with and without every intervention, a left-padded
batch must equal one prompt at a time, and no intervention may leave a hook behind, however its block ends.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest
import torch
from intervention_kit import INTERVENTIONS, NEW_TOKENS, SOURCE, mid, row_edits

from harness.engine.generation import (
    Condition,
    PromptBatch,
    _truncate,
    encode_left,
    eos_ids,
    generate,
    generate_conditions,
)
from harness.engine.hooks import hook_count
from harness.engine.interventions import (
    capture_sources,
    patch_residual,
    zero_attention_output,
)
from harness.engine.models import LoadedModel

PROMPTS = ["The capital city of Japan is", "Watch the watcher watching.",
           "Explain how a kite stays up in a steady breeze."]


@pytest.fixture
def sources(tiny_lm: LoadedModel) -> Any:
    return capture_sources(tiny_lm, [SOURCE], [mid(tiny_lm)], window=16)


def _ids(run: Any) -> list[tuple[int, ...]]:
    return [g.generated_ids for g in run.generations]


def test_encode_left_pads_on_the_left_and_leaves_the_tokenizer_alone(tiny_lm: LoadedModel) -> None:
    side = tiny_lm.tokenizer.padding_side
    batch = encode_left(tiny_lm, PROMPTS)
    assert tiny_lm.tokenizer.padding_side == side
    assert batch.attention_mask[:, -1].all(), "the last column must hold every prompt's last token"
    for row, length in enumerate(batch.lengths):
        expected = [0] * (batch.width - length) + [1] * length
        assert batch.attention_mask[row].tolist() == expected


def test_no_intervention_cached_equals_uncached(tiny_lm: LoadedModel) -> None:
    cached = generate(tiny_lm, PROMPTS, NEW_TOKENS)
    uncached = generate(tiny_lm, PROMPTS, NEW_TOKENS, use_cache=False)
    assert _ids(cached) == _ids(uncached)
    assert cached.calls == [None]


@pytest.mark.parametrize("kind", list(INTERVENTIONS))
def test_cached_equals_uncached_under_each_intervention(tiny_lm: LoadedModel, sources: Any,
                                                        kind: str) -> None:
    intervention = INTERVENTIONS[kind](tiny_lm, sources)
    cached = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=intervention)
    uncached = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=intervention, use_cache=False)
    assert _ids(cached) == _ids(uncached), f"{kind}: cached and uncached generation disagree"
    (cached_log,), (uncached_log,) = cached.calls, uncached.calls
    assert cached_log["edited"] > 0 and uncached_log["edited"] > 0, f"{kind}: the hook never edited"
    steps = max(len(ids) for ids in _ids(cached))
    width = encode_left(tiny_lm, PROMPTS).width
    assert uncached_log["by_seq_len"] == {str(width + k): 1 for k in range(steps)}


@pytest.mark.parametrize("kind", ["none", "zero_attention_output", "patch_all_calls", "patch_no_position_0"])
def test_left_padded_batch_equals_one_prompt_at_a_time(tiny_lm: LoadedModel, sources: Any, kind: str) -> None:
    intervention = INTERVENTIONS[kind](tiny_lm, sources) if kind != "none" else None
    batched = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=intervention)
    alone = [generate(tiny_lm, [p], NEW_TOKENS, intervention=intervention).generations[0] for p in PROMPTS]
    assert _ids(batched) == [g.generated_ids for g in alone]
    assert batched.full_texts == [g.full_text for g in alone]


def test_batches_split_and_keep_prompt_order(tiny_lm: LoadedModel) -> None:
    whole = generate(tiny_lm, PROMPTS, NEW_TOKENS)
    split = generate(tiny_lm, PROMPTS, NEW_TOKENS, batch_size=2)
    assert _ids(split) == _ids(whole)
    assert [g.prompt for g in split.generations] == PROMPTS
    assert len(split.calls) == 2


def test_conditions_in_one_run_equal_each_condition_alone(tiny_lm: LoadedModel, sources: Any) -> None:
    layer, middle = tiny_lm.dims.n_layers - 2, mid(tiny_lm)
    source, edits = sources.sources[middle], row_edits(tiny_lm, sources)
    conditions = [Condition("normal", PROMPTS), Condition("ablated", PROMPTS[:2], edits["ablated"]),
                  Condition("patched", PROMPTS[1:], edits["patched"])]
    runs = generate_conditions(tiny_lm, conditions, NEW_TOKENS, batch_size=4)
    alone_ablated = generate(tiny_lm, PROMPTS[:2], NEW_TOKENS,
                             intervention=lambda _b: zero_attention_output(tiny_lm.model, layer))
    alone_patched = generate(tiny_lm, PROMPTS[1:], NEW_TOKENS, intervention=lambda b: patch_residual(
        tiny_lm.model, middle, source, prompt_mask=b.attention_mask))
    assert _ids(runs["normal"]) == _ids(generate(tiny_lm, PROMPTS, NEW_TOKENS))
    assert _ids(runs["ablated"]) == _ids(alone_ablated)
    assert _ids(runs["patched"]) == _ids(alone_patched)
    # 7 rows in batches of 4: the ablated rows (3, 4) span both batches, the patched rows (5, 6) the second
    assert runs["normal"].calls == [] and len(runs["ablated"].calls) == 2 and len(runs["patched"].calls) == 1


def test_condition_names_must_be_unique(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="unique"):
        generate_conditions(tiny_lm, [Condition("a", PROMPTS), Condition("a", PROMPTS)], NEW_TOKENS)


def test_generation_decodes_as_the_source_did(tiny_lm: LoadedModel) -> None:
    run = generate(tiny_lm, PROMPTS, NEW_TOKENS)
    decode = tiny_lm.tokenizer.decode
    stop = eos_ids(tiny_lm)
    for prompt, gen in zip(PROMPTS, run.generations, strict=True):
        alone = tiny_lm.tokenizer(prompt, add_special_tokens=tiny_lm.spec.bos)["input_ids"]
        assert list(gen.prompt_ids) == alone
        assert 1 <= len(gen.generated_ids) <= NEW_TOKENS
        assert not stop & set(gen.generated_ids[:-1]), "tokens after the end of sequence were kept"
        assert gen.completion == decode(gen.generated_ids, skip_special_tokens=True)
        assert gen.full_text == decode(gen.prompt_ids + gen.generated_ids, skip_special_tokens=True)
        assert gen.source_completion == gen.full_text[len(prompt):]


def test_truncate_keeps_the_first_end_of_sequence_token() -> None:
    assert _truncate([5, 6, 1, 2, 2], frozenset({1})) == (5, 6, 1)
    assert _truncate([5, 6, 7], frozenset({1})) == (5, 6, 7)
    assert _truncate([1, 1], frozenset({1})) == (1,)


@pytest.mark.parametrize(("kwargs", "message"), [({"max_new_tokens": 0}, "max_new_tokens=0"),
                                                  ({"batch_size": 0}, "batch_size=0")])
def test_bad_arguments_name_the_value(tiny_lm: LoadedModel, kwargs: dict[str, int], message: str) -> None:
    args = {"max_new_tokens": NEW_TOKENS, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tiny_lm, PROMPTS, args.pop("max_new_tokens"), **args)


def test_no_prompts_is_an_error(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match="no prompts"):
        generate(tiny_lm, [], NEW_TOKENS)


class Boom(Exception):
    """Raised inside a block to check that the hooks still go."""


@pytest.mark.parametrize("kind", list(INTERVENTIONS))
def test_every_intervention_leaves_no_hook_after_an_exception(tiny_lm: LoadedModel, sources: Any,
                                                              kind: str) -> None:
    batch = encode_left(tiny_lm, PROMPTS)
    with pytest.raises(Boom), INTERVENTIONS[kind](tiny_lm, sources)(batch):
        assert hook_count(tiny_lm.model) > 0
        raise Boom
    assert hook_count(tiny_lm.model) == 0


def test_an_error_inside_a_hook_during_generate_leaves_no_hook(tiny_lm: LoadedModel, sources: Any) -> None:
    wrong_mask = torch.ones(1, 2, dtype=torch.long)  # not the batch's (3, width) mask

    def bad(_batch: PromptBatch) -> AbstractContextManager[Any]:
        return patch_residual(tiny_lm.model, mid(tiny_lm), sources.sources[mid(tiny_lm)],
                              prompt_mask=wrong_mask)

    with pytest.raises(ValueError, match="prompt_mask"):
        generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=bad)
    assert hook_count(tiny_lm.model) == 0


def test_a_mixture_of_experts_model_is_never_recorded_into_a_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device a routed model runs the static loop (no capture attempt: a failed one broke the CUDA
    generator for the rest of the run on Mixtral); a dense model plans the graph; on the CPU both run eager."""
    from types import SimpleNamespace

    from harness.engine import decode
    from harness.engine.generation import _plan

    monkeypatch.setattr(decode, "unsupported", lambda *args: None)

    def lm(device: str, experts: int | None) -> Any:
        config = SimpleNamespace(num_local_experts=experts, num_experts=None)
        return SimpleNamespace(device=torch.device(device), model=SimpleNamespace(config=config))

    batch = SimpleNamespace(width=8)
    path, why = _plan(lm("cuda", 8), batch, 4, True, "auto")  # type: ignore[arg-type]
    assert path == "static" and why is not None and "mixture-of-experts" in why
    assert _plan(lm("cuda", None), batch, 4, True, "auto") == ("graph", None)  # type: ignore[arg-type]
    assert _plan(lm("cpu", 8), batch, 4, True, "auto")[0] == "eager"  # type: ignore[arg-type]
