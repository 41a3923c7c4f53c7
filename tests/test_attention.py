"""Tests of harness/attention.py: entropy computed inside the attention forward equals the entropy of the
fully materialised eager patterns, for every layer and head of each tiny family, under right padding."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import harness.engine.attention as attention
from harness.engine.attention import EntropyResult, attention_entropy, head_entropy
from harness.engine.models import LoadedModel, load
from harness.engine.specs import get_spec

FAMILIES = ("tiny-mistral", "tiny-qwen2", "tiny-llama")
PROMPTS = (
    "Who created you?",
    "What is photosynthesis and why does it matter to the plants in a garden?",
    "Hi",
    "How tall am I today, really?",
    "Explain gravity in one short sentence, please.",
)
ATOL = 1e-5
SHARPEN = 8.0  # scales q and k projections so that random tiny heads attend less uniformly and differ

# Synthetic attention inputs: batch, query heads, key-head groups, length, head dim.
shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 12),
                   st.integers(1, 8))


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    loaded = load(get_spec(request.param), cache_dir=tmp_path_factory.mktemp(request.param))
    with torch.no_grad():
        for module in loaded.model.modules():
            for name in ("q_proj", "k_proj"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(SHARPEN)
    return loaded


def encode(lm: LoadedModel, prompts: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    encoded = lm.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=lm.spec.bos)
    return dict(encoded)


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Record the positional arguments of every call to `harness.attention.<name>`."""
    calls: list[tuple[Any, ...]] = []
    original = getattr(attention, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, name, recording)
    return calls


def entropies(lm: LoadedModel, batch: dict[str, torch.Tensor], **kwargs: Any) -> EntropyResult:
    with torch.no_grad(), attention_entropy(lm.model, **kwargs) as ent:
        lm.model(**batch)
        return ent.pop().cpu()


def eager_patterns(lm: LoadedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Every layer's post-softmax pattern (batch, head, q, k), from eager attention with output_attentions."""
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return tuple(lm.model(**batch, output_attentions=True).attentions)
    finally:
        lm.model.set_attn_implementation("sdpa")


def reference(pattern: torch.Tensor) -> dict[str, torch.Tensor]:
    """The definitions on one prompt's patterns (..., head, T, T), T its true length, in float64."""
    a = pattern.double()
    smoothed = (a + 1e-8) / (a + 1e-8).sum(-1, keepdim=True)
    h = -(smoothed * smoothed.log()).sum(-1)  # (..., head, q)
    rest = a[..., 2:, 1:] / a[..., 2:, 1:].sum(-1, keepdim=True)  # (..., head, q >= 2, keys >= 1)
    log_q = torch.log(torch.arange(2, a.shape[-1], dtype=torch.float64))
    normalised = (-torch.xlogy(rest, rest).sum(-1) / log_q).mean(-1)
    return {"published": h.mean(-1), "published_sum": h.sum(-1), "normalised": normalised,
            "bos_mass": a[..., 0].mean(-1)}


def assert_matches_patterns(result: EntropyResult, patterns: tuple[torch.Tensor, ...],
                            lengths: torch.Tensor) -> None:
    stacked = torch.stack([patterns[layer] for layer in result.layers])  # (layer, batch, head, q, k)
    for b, n in enumerate(lengths.tolist()):
        for name, value in reference(stacked[:, b, :, :n, :n]).items():  # (layer, head)
            atol = ATOL * n if name.endswith("_sum") else ATOL  # a sum over n queries
            got = getattr(result, name)[:, b].double()
            try:
                torch.testing.assert_close(got, value, atol=atol, rtol=0, equal_nan=True)
            except AssertionError as err:
                raise AssertionError(f"{name}, prompt {b} (index: layer, head): {err}") from None


def test_matches_eager_patterns(lm: LoadedModel) -> None:
    batch = encode(lm, PROMPTS)
    lengths = batch["attention_mask"].sum(-1)
    assert len(set(lengths.tolist())) >= 4, "prompts must differ in length to exercise padding"
    result = entropies(lm, batch)
    assert result.layers == tuple(range(lm.dims.n_layers))
    assert result.published is not None and result.published.shape == (lm.dims.n_layers, len(PROMPTS),
                                                                       lm.dims.n_heads)
    assert result.published.std(-1).mean() > 0.02, "heads too alike for the comparison to discriminate"
    assert result.n_tokens.tolist() == lengths.tolist()
    assert result.n_normalised.tolist() == (lengths - 2).clamp(min=0).tolist()
    assert_matches_patterns(result, eager_patterns(lm, batch), lengths)


def test_batched_equals_one_at_a_time(lm: LoadedModel) -> None:
    batched = entropies(lm, encode(lm, PROMPTS))
    for b, prompt in enumerate(PROMPTS):
        alone = entropies(lm, encode(lm, [prompt]))
        for name in ("published", "normalised", "bos_mass"):
            torch.testing.assert_close(getattr(batched, name)[:, b], getattr(alone, name)[:, 0], atol=ATOL,
                                       rtol=0, equal_nan=True)


def test_logits_unchanged(lm: LoadedModel) -> None:
    batch = encode(lm, PROMPTS)
    with torch.no_grad():
        plain = lm.model(**batch).logits
        with attention_entropy(lm.model) as ent:
            inside = lm.model(**batch).logits
            ent.pop()
    torch.testing.assert_close(inside, plain, atol=ATOL, rtol=0)


def test_only_requested_layers_are_computed(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    last = lm.dims.n_layers - 1
    calls = spy(monkeypatch, "row_statistics")
    batch = encode(lm, PROMPTS)
    subset = entropies(lm, batch, layers=[last, 1, 1])
    assert subset.layers == (1, last)
    assert len(calls) == 2
    assert subset.bos_mass.shape == (2, len(PROMPTS), lm.dims.n_heads)
    full = entropies(lm, batch)
    for name in ("published", "normalised", "bos_mass"):
        torch.testing.assert_close(getattr(subset, name), getattr(full, name)[[1, last]], equal_nan=True)


def test_one_variant_leaves_the_other_out(lm: LoadedModel) -> None:
    result = entropies(lm, encode(lm, PROMPTS), variants=("normalised",))
    assert result.published is None and result.published_sum is None
    assert result.normalised is not None and result.bos_mass is not None


def _state(lm: LoadedModel) -> tuple[object, ...]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())
    return (lm.model.config._attn_implementation, set(AttentionInterface._global_mapping),
            set(AttentionMaskInterface._global_mapping), hooks)


def test_exception_inside_block_restores_model(lm: LoadedModel) -> None:
    batch = encode(lm, PROMPTS)
    before = _state(lm)
    with torch.no_grad():
        plain = lm.model(**batch).logits
        with pytest.raises(KeyError, match="boom"), attention_entropy(lm.model) as ent:
            assert lm.model.config._attn_implementation == ent.name
            lm.model(**batch)
            raise KeyError("boom")
        assert _state(lm) == before
        torch.testing.assert_close(lm.model(**batch).logits, plain, atol=0, rtol=0)


def test_left_padding_is_refused_and_restored(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm.tokenizer, "padding_side", "left")
    before = _state(lm)
    with pytest.raises(ValueError, match="right padding"):
        entropies(lm, encode(lm, PROMPTS))
    assert _state(lm) == before


def test_misuse_fails_with_the_fix(lm: LoadedModel) -> None:
    n = lm.dims.n_layers
    with pytest.raises(ValueError, match=rf"has {n} layers \(0-{n - 1}\)"):
        attention_entropy(lm.model, layers=[n]).__enter__()
    with pytest.raises(ValueError, match="choose one or more"):
        attention_entropy(lm.model, variants=["published", "shannon"]).__enter__()
    batch = encode(lm, PROMPTS[:2])
    with torch.no_grad(), attention_entropy(lm.model) as ent:
        with pytest.raises(RuntimeError, match="before pop"):
            ent.pop()
        lm.model(**batch)
        with pytest.raises(RuntimeError, match="ran twice"):
            lm.model(**batch)
        with pytest.raises(RuntimeError, match="do not nest"), attention_entropy(lm.model):
            pass


def test_an_eager_model_gives_the_entropies_of_sdpa(lm: LoadedModel) -> None:
    """The engine stands in for eager attention too (gemma2 needs it), returning eager's own output."""
    batch = encode(lm, PROMPTS[:3])
    with torch.no_grad():
        logits = lm.model(**batch).logits
    reference = entropies(lm, batch)
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), attention_entropy(lm.model) as ent:
            eager_logits = lm.model(**batch).logits
            result = ent.pop().cpu()
        assert lm.model.config._attn_implementation == "eager"
    finally:
        lm.model.set_attn_implementation("sdpa")
    torch.testing.assert_close(result.published, reference.published, atol=ATOL, rtol=0)
    torch.testing.assert_close(eager_logits, logits, atol=1e-4, rtol=1e-4)


def test_other_attention_implementations_are_refused(lm: LoadedModel) -> None:
    saved = lm.model.config._attn_implementation
    lm.model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match=r"wraps sdpa or eager attention, but the model uses "
                           r"'flash_attention_2': call model.set_attn_implementation"), attention_entropy(lm.model):
            pass
        assert lm.model.config._attn_implementation == "flash_attention_2"
    finally:
        lm.model.config._attn_implementation = saved


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(lm: LoadedModel, dtype: torch.dtype,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    half = LoadedModel(lm.spec, copy.deepcopy(lm.model).to(dtype), lm.tokenizer, lm.weights,
                       lm.resolved_revision, lm.source)
    seen = spy(monkeypatch, "to_blocks")
    result = entropies(half, encode(lm, PROMPTS[1:2]))  # one prompt: no padding, sdpa's causal path
    monkeypatch.undo()
    assert result.published is not None and result.published.dtype == torch.float32
    assert [q.dtype for q, _ in seen] == [dtype] * lm.dims.n_layers
    for layer, (query, key) in enumerate(seen):
        upcast = head_entropy(query.float(), key.float())
        assert upcast.published is not None
        torch.testing.assert_close(result.published[layer], upcast.published[0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    loaded = load(get_spec("tiny-mistral"), cache_dir=tmp_path_factory.mktemp("windowed"))
    loaded.model.config.sliding_window = 4  # shorter than most prompts: the mask has a window
    return loaded


def test_sliding_window_matches_eager(windowed: LoadedModel) -> None:
    batch = encode(windowed, PROMPTS)
    lengths = batch["attention_mask"].sum(-1)
    assert int(lengths.max()) > 2 * windowed.model.config.sliding_window
    result = entropies(windowed, batch)
    assert_matches_patterns(result, eager_patterns(windowed, batch), lengths)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_equal_plain_cuda_and_cpu_and_free_their_memory(lm: LoadedModel) -> None:
    gpu = LoadedModel(lm.spec, copy.deepcopy(lm.model).cuda(), lm.tokenizer, lm.weights, lm.resolved_revision,
                      lm.source)
    batch = encode(lm, PROMPTS)
    on_gpu = {k: v.cuda() for k, v in batch.items()}
    graphed = entropies(gpu, on_gpu)  # the first block also sets up the capture stream's cuBLAS workspace
    before = torch.cuda.memory_allocated()
    graphed = entropies(gpu, on_gpu)
    assert torch.cuda.memory_allocated() == before
    plain, on_cpu = entropies(gpu, on_gpu, cuda_graphs=False), entropies(lm, batch)
    for name in ("published", "normalised", "bos_mass"):
        value = getattr(graphed, name)
        torch.testing.assert_close(value, getattr(plain, name), atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(value, getattr(on_cpu, name), atol=ATOL, rtol=0, equal_nan=True)


# Properties of the reduction, on synthetic queries and keys.

def _qk(batch: int, kv: int, groups: int, length: int, dim: int, seed: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = 3 * torch.randn(batch, kv * groups, length, dim, generator=gen)  # (batch, head, q, dim)
    key = torch.randn(batch, kv, length, dim, generator=gen)  # (batch, kv_head, k, dim)
    return query, key


@settings(max_examples=40, deadline=None, database=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_entropies_lie_in_their_ranges(shape: tuple[int, int, int, int, int], seed: int) -> None:
    result = head_entropy(*_qk(*shape, seed=seed))
    length = shape[3]
    assert result.published is not None and result.normalised is not None
    assert (result.published >= -ATOL).all() and (result.published <= math.log(length) + ATOL).all()
    if length >= 3:
        assert (result.normalised >= -ATOL).all() and (result.normalised <= 1 + ATOL).all()
    else:
        assert result.normalised.isnan().all()
    assert ((result.bos_mass >= 0) & (result.bos_mass <= 1 + ATOL)).all()


@settings(max_examples=20, deadline=None, database=None)
@given(shape=shapes)
def test_uniform_attention_gives_ln_t_factorial_over_t(shape: tuple[int, int, int, int, int]) -> None:
    batch, kv, groups, length, dim = shape
    query = torch.zeros(batch, kv * groups, length, dim)
    key = torch.randn(batch, kv, length, dim)
    result = head_entropy(query, key)
    assert result.published is not None and result.normalised is not None
    expected = torch.full_like(result.published, math.lgamma(length + 1) / length)
    torch.testing.assert_close(result.published, expected, atol=ATOL, rtol=0)
    one = torch.full_like(result.normalised, 1.0 if length >= 3 else math.nan)
    torch.testing.assert_close(result.normalised, one, atol=ATOL, rtol=0, equal_nan=True)
    harmonic = sum(1 / (q + 1) for q in range(length)) / length
    torch.testing.assert_close(result.bos_mass, torch.full_like(result.bos_mass, harmonic), atol=ATOL, rtol=0)


@settings(max_examples=25, deadline=None, database=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_grouped_keys_equal_repeated_keys(shape: tuple[int, int, int, int, int], seed: int) -> None:
    query, key = _qk(*shape, seed=seed)
    grouped = head_entropy(query, key)
    repeated = head_entropy(query, key.repeat_interleave(shape[2], dim=1))  # (batch, head, k, dim)
    for name in ("published", "normalised", "bos_mass"):
        torch.testing.assert_close(getattr(grouped, name), getattr(repeated, name), atol=ATOL, rtol=0,
                                   equal_nan=True)


@settings(max_examples=25, deadline=None, database=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_query_blocks_do_not_change_results(shape: tuple[int, int, int, int, int], seed: int) -> None:
    query, key = _qk(*shape, seed=seed)
    whole, row_by_row = head_entropy(query, key), head_entropy(query, key, chunk_bytes=1)
    for name in ("published", "published_sum", "normalised", "bos_mass"):
        torch.testing.assert_close(getattr(whole, name), getattr(row_by_row, name), atol=ATOL, rtol=0,
                                   equal_nan=True)


def test_padded_batch_equals_each_prompt_alone() -> None:
    query, key = _qk(3, 2, 2, 9, 4, seed=7)
    lengths = torch.tensor([9, 4, 6])
    valid = torch.arange(9)[None] < lengths[:, None]  # (batch, k)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    mask = (causal & valid[:, None, :])[:, None]  # (batch, 1, q, k), as sdpa_mask builds it
    batched = head_entropy(query, key, mask)
    for b, n in enumerate(lengths.tolist()):
        alone = head_entropy(query[b:b + 1, :, :n], key[b:b + 1, :, :n])
        for name in ("published", "published_sum", "normalised", "bos_mass"):
            torch.testing.assert_close(getattr(batched, name)[:, b], getattr(alone, name)[:, 0], atol=ATOL,
                                       rtol=0)
