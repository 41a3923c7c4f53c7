"""Unit tests of harness/engine/decode.py and kvcache.py: the static-cache decode loop and its graph path.

On the CPU the loop runs step by step (`path="static"`): it must give the tokens and hook call counts of
transformers' `generate` (`path="eager"`) on every tiny family under every intervention mode. The same
comparison with the decode steps replayed from CUDA graphs (`path="graph"`) runs where a GPU is visible
(tests/test_decode_gpu.py, and here under `-m gpu`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from intervention_kit import INTERVENTIONS as KIT_INTERVENTIONS
from intervention_kit import NEW_TOKENS, SOURCE, Factory, mid, patch, row_edits, some_rows

from harness.engine import decode
from harness.engine.generation import (
    PATH_VARIABLE,
    Condition,
    PromptBatch,
    _greedy,
    encode_left,
    eos_ids,
    generate,
    generate_conditions,
)
from harness.engine.hooks import capture
from harness.engine.interventions import (
    capture_sources,
    patch_residual,
    scale_heads,
    zero_attention_output,
)
from harness.engine.kvcache import decode_attention, decode_kernels, grouped_decode_attention, rms_norms
from harness.engine.models import LoadedModel

PROMPTS = ["The capital city of Japan is", "Watch the watcher watching.",
           "Explain how a kite stays up in a steady breeze.", "Rain", "List three uses of copper wire."]
# 5 prompts: the decode loop pads the batch to its bucket of 6 with a copy of the last prompt

# Every kit intervention, the ablation on some rows, and the patch's modes without position 0.
INTERVENTIONS: dict[str, Factory | None] = {
    "none": None,
    **{kind: make for kind, make in KIT_INTERVENTIONS.items() if kind != "patch_no_position_0"},
    "zero_attention_some_rows": some_rows,
    **{f"patch_{mode}_no_position_0": patch(mode, include_position_0=False)
       for mode in ("all_calls", "prefill_only", "decode_only")},
}


@pytest.fixture
def sources(tiny_lm: LoadedModel) -> Any:
    return capture_sources(tiny_lm, [SOURCE], [mid(tiny_lm)], window=16)


def _ids(run: Any) -> list[tuple[int, ...]]:
    return [g.generated_ids for g in run.generations]


def _compare(lm: LoadedModel, sources: Any, kind: str, path: str) -> list[dict[str, Any]]:
    """Generate on `path` and on the eager path; the tokens and the hooks' call counts must agree."""
    factory = INTERVENTIONS[kind]
    intervention = factory(lm, sources) if factory is not None else None
    eager = generate(lm, PROMPTS, NEW_TOKENS, intervention=intervention, path="eager")
    other = generate(lm, PROMPTS, NEW_TOKENS, intervention=intervention, path=path)
    assert _ids(other) == _ids(eager), f"{kind}: the {path} path and the eager path disagree"
    assert other.calls == eager.calls, f"{kind}: the hooks counted different calls on the {path} path"
    return other.paths


@pytest.mark.parametrize("kind", list(INTERVENTIONS))
def test_static_path_equals_eager_under_every_intervention(tiny_lm: LoadedModel, sources: Any, kind: str) -> None:
    (record,) = _compare(tiny_lm, sources, kind, "static")
    assert record["path"] == "static" and record["batch_bucket"] == decode.batch_bucket(len(PROMPTS))
    assert record["length_bucket"] % decode.LENGTH_STEP == 0 and record["replays"] == 0


def test_interventions_change_the_static_path_tokens(tiny_lm: LoadedModel, sources: Any) -> None:
    """The comparison above can fail: a patch changes what the loop generates."""
    bare = generate(tiny_lm, PROMPTS, NEW_TOKENS, path="static")
    patched = generate(tiny_lm, PROMPTS, NEW_TOKENS, path="static",
                       intervention=patch(random=True)(tiny_lm, sources))
    assert _ids(bare) != _ids(patched)


def test_conditions_across_padded_batches_equal_eager(tiny_lm: LoadedModel, sources: Any) -> None:
    """7 rows in batches of 5 and 2: the first is padded to 6; the ablated rows span both batches."""
    edits = row_edits(tiny_lm, sources)
    conditions = [Condition("normal", PROMPTS[:1]), Condition("ablated", PROMPTS, edits["ablated"]),
                  Condition("patched", PROMPTS[4:], edits["patched"])]
    eager = generate_conditions(tiny_lm, conditions, NEW_TOKENS, batch_size=5, path="eager")
    static = generate_conditions(tiny_lm, conditions, NEW_TOKENS, batch_size=5, path="static")
    for name in eager:
        assert _ids(static[name]) == _ids(eager[name]), name
        assert static[name].calls == eager[name].calls, name
    assert [p["batch_bucket"] for p in static["ablated"].paths] == [6, 2]  # 5 rows padded to 6, then 2
    assert [p["batch_bucket"] for p in static["normal"].paths] == [6]  # its one row sits in the first batch


def test_end_of_sequence_stops_and_pads_as_generate_does(tiny_lm: LoadedModel) -> None:
    """Make a token that row 0 generates mid-way an end-of-sequence id: the static loop must stop row 0 there,
    fill the rest of the row with the pad id and keep generating the other rows, exactly as `generate`."""
    batch = encode_left(tiny_lm, PROMPTS)
    first = _greedy(tiny_lm, batch, NEW_TOKENS, use_cache=True)[0, batch.width :].tolist()
    step = next(k for k in range(1, NEW_TOKENS - 1) if first[k] not in first[:k])
    stop_token = first[step]
    config = tiny_lm.model.generation_config
    before = config.eos_token_id
    config.eos_token_id = [stop_token]
    try:
        eager = _greedy(tiny_lm, batch, NEW_TOKENS, use_cache=True)
        static, _ = decode.greedy(tiny_lm, batch.input_ids, batch.attention_mask, NEW_TOKENS, eos_ids(tiny_lm),
                                  int(tiny_lm.tokenizer.pad_token_id), capture=False)
    finally:
        config.eos_token_id = before
    assert int(eager[0, batch.width + step]) == stop_token
    assert (eager[0, batch.width + step + 1 :] == tiny_lm.tokenizer.pad_token_id).all()
    assert torch.equal(static, eager)


def test_auto_takes_the_eager_path_on_the_cpu_and_says_why(tiny_lm: LoadedModel) -> None:
    run = generate(tiny_lm, PROMPTS, 2)
    (record,) = run.paths
    assert record["path"] == "eager" and "CUDA" in record["reason"] and record["batch_bucket"] == len(PROMPTS)


def test_a_hook_that_is_not_graph_safe_sends_the_batch_to_eager(tiny_lm: LoadedModel) -> None:
    with capture(tiny_lm.model, [f"blocks.{mid(tiny_lm)}.resid_post"]) as kept:
        run = generate(tiny_lm, PROMPTS, 3, path="static")
    (record,) = run.paths
    assert record["path"] == "eager" and "not graph-safe" in record["reason"]
    assert len(kept[f"blocks.{mid(tiny_lm)}.resid_post"]) == 3  # prefill and two decode steps, all seen
    assert _ids(run) == _ids(generate(tiny_lm, PROMPTS, 3, path="eager"))


def test_uncached_generation_stays_eager(tiny_lm: LoadedModel) -> None:
    (record,) = generate(tiny_lm, PROMPTS, 2, use_cache=False, path="static").paths
    assert record["path"] == "eager" and "use_cache=False" in record["reason"]


def test_the_path_comes_from_the_environment_and_is_checked(tiny_lm: LoadedModel,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PATH_VARIABLE, "static")
    assert generate(tiny_lm, PROMPTS[:1], 2).paths[0]["path"] == "static"
    monkeypatch.setenv(PATH_VARIABLE, "fast")
    with pytest.raises(ValueError, match=f"'fast'.*{PATH_VARIABLE}=fast.*auto, eager, static, graph"):
        generate(tiny_lm, PROMPTS[:1], 2)
    with pytest.raises(ValueError, match="'quick' \\(from path=quick\\)"):
        generate(tiny_lm, PROMPTS[:1], 2, path="quick")


@given(st.integers(1, 5000))
def test_batch_buckets_hold_the_batch_and_waste_at_most_half(rows: int) -> None:
    size = decode.batch_bucket(rows)
    assert rows <= size <= 1.5 * rows
    assert decode.batch_bucket(size) == size


@given(st.integers(1, 5000))
def test_length_buckets_are_multiples_of_the_step(tokens: int) -> None:
    size = decode.length_bucket(tokens)
    assert tokens <= size < tokens + decode.LENGTH_STEP and size % decode.LENGTH_STEP == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.sampled_from([(4, 2), (6, 3), (4, 4), (5, 1)]), st.integers(1, 2), st.integers(1, 9),
       st.booleans(), st.integers(0, 2**16))
def test_grouped_attention_equals_repeated_kv_attention(batch: int, heads: tuple[int, int], q_len: int,
                                                        length: int, additive: bool, seed: int) -> None:
    """Against sdpa over KV heads repeated as transformers repeats them; masked keys never count. The inputs are
    float64; the softmax runs in float32, as transformers' eager attention runs it, hence the tolerance."""
    n_heads, n_kv = heads
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, n_heads, q_len, 8, generator=gen, dtype=torch.float64)
    key, value = (torch.randn(batch, n_kv, length, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    seen = torch.rand(batch, 1, q_len, length, generator=gen) < 0.7
    seen[..., 0] = True  # every query sees at least one key
    mask = torch.zeros(seen.shape, dtype=torch.float64).masked_fill(~seen, torch.finfo(torch.float64).min)
    out, _ = grouped_decode_attention(torch.nn.Module(), query, key, value, mask if additive else seen)
    groups = n_heads // n_kv
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=seen)
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_decode_attention_is_replaced_inside_the_block_only() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    before = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    with decode_attention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is grouped_decode_attention
        assert ALL_ATTENTION_FUNCTIONS.get("eager") is grouped_decode_attention
    assert ALL_ATTENTION_FUNCTIONS._local_mapping == before
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not grouped_decode_attention


def test_fused_rms_norm_equals_the_model_s_own_and_is_undone(tiny_lm: LoadedModel) -> None:
    norms = rms_norms(tiny_lm.model)
    assert len(norms) == 2 * tiny_lm.dims.n_layers + 1  # two per layer and the final one
    hidden = torch.randn(3, 5, tiny_lm.dims.d_model, generator=torch.Generator().manual_seed(1)) * 4
    own = [norm(hidden) for norm in norms]
    with torch.no_grad():
        for norm in norms:
            norm.weight.mul_(1.5)  # not all ones: the weight must be applied
        before = [norm(hidden) for norm in norms]
        with decode_kernels(norms):
            fused = [norm(hidden) for norm in norms]
        after = [norm(hidden) for norm in norms]
        for norm in norms:
            norm.weight.div_(1.5)
    for a, b, c in zip(before, fused, after, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        assert torch.equal(a, c), "the model's own RMSNorm must be back after the block"
    assert not torch.allclose(own[0], before[0])
    assert all("forward" not in vars(norm) for norm in norms)


def test_buckets_are_kept_per_model_and_released(tiny_lm: LoadedModel) -> None:
    generate(tiny_lm, PROMPTS, 2, path="static")
    kept = decode.buckets_of(tiny_lm.model).kept
    assert any(key.batch == decode.batch_bucket(len(PROMPTS)) for key in kept)
    decode.release(tiny_lm.model)
    assert not decode.buckets_of(tiny_lm.model).kept


# --- the graph path (a CUDA device; `pytest -m gpu tests/test_decode.py`) ---------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the graph path needs one")
TINY_FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")


@pytest.fixture(scope="module")
def cuda_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[LoadedModel, Any]]:
    """The tiny families on the GPU, each with its patch source."""
    from harness.engine.models import load
    from harness.engine.specs import get_spec

    cache = tmp_path_factory.mktemp("tiny-cuda")
    found = {}
    for model_id in TINY_FAMILIES:
        lm = load(get_spec(model_id), cache_dir=cache, device="cuda")
        found[model_id] = (lm, capture_sources(lm, [SOURCE], [mid(lm)], window=16))
    return found


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("kind", list(INTERVENTIONS))
def test_graph_path_equals_eager_under_every_intervention(cuda_models: dict[str, tuple[LoadedModel, Any]],
                                                          family: str, kind: str) -> None:
    lm, sources = cuda_models[family]
    decode.release(lm.model)
    first = _compare(lm, sources, kind, "graph")  # records the graph
    again = _compare(lm, sources, kind, "graph")  # replays it
    assert [r["path"] for r in first + again] == ["graph", "graph"], first + again
    assert first[0]["captured"] and first[0]["replays"] == NEW_TOKENS - 2
    assert not again[0]["captured"] and again[0]["replays"] == NEW_TOKENS - 1


def _variants(lm: LoadedModel, sources: Any) -> dict[str, list[Callable[[PromptBatch], AbstractContextManager[Any]]]]:
    """Interventions of one structure whose tensors differ: a reused graph must read each one's own."""
    source = sources.sources[mid(lm)]
    last = lm.dims.n_layers - 1

    def patch(src: Any) -> Callable[[PromptBatch], AbstractContextManager[Any]]:
        return lambda b: patch_residual(lm.model, mid(lm), src, prompt_mask=b.attention_mask)

    def rows(parity: int) -> Callable[[PromptBatch], AbstractContextManager[Any]]:
        return lambda b: zero_attention_output(lm.model, last, rows=torch.arange(b.n_rows) % 2 == parity)

    def scale(factor: float) -> Callable[[PromptBatch], AbstractContextManager[Any]]:
        return lambda _b: scale_heads(lm.model, mid(lm), [0, 1], factor)

    return {"patch": [patch(source), patch(source.norm_matched_random(5)), patch(source.norm_matched_random(6))],
            "rows": [rows(0), rows(1)], "scale": [scale(0.5), scale(0.0), scale(2.0)]}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_reused_graph_reads_each_batch_s_own_tensors(cuda_models: dict[str, tuple[LoadedModel, Any]],
                                                       family: str) -> None:
    lm, sources = cuda_models[family]
    decode.release(lm.model)
    for name, variants in _variants(lm, sources).items():
        outputs = []
        for index, intervention in enumerate(variants):
            graph = generate(lm, PROMPTS, NEW_TOKENS, intervention=intervention, path="graph")
            eager = generate(lm, PROMPTS, NEW_TOKENS, intervention=intervention, path="eager")
            assert _ids(graph) == _ids(eager), f"{name} variant {index}: the reused graph read stale tensors"
            assert graph.paths[0]["captured"] is (index == 0), graph.paths
            outputs.append(_ids(graph))
        assert len({tuple(o) for o in outputs}) > 1, f"{name}: the variants do not change the tokens"


def test_static_path_equals_eager_with_eager_attention(tiny_lm: LoadedModel, sources: Any) -> None:
    """A model loaded with eager attention gets an additive mask, in the prefill and in every decode step."""
    tiny_lm.model.set_attn_implementation("eager")
    try:
        assert tiny_lm.model.config._attn_implementation == "eager"
        (record,) = _compare(tiny_lm, sources, "patch_all_calls", "static")
    finally:
        tiny_lm.model.set_attn_implementation("sdpa")
        decode.release(tiny_lm.model)
    assert record["path"] == "static"
    assert tiny_lm.model.config._attn_implementation == "sdpa"
