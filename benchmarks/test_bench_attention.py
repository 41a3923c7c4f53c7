"""Attention entropy for every layer, four ways, on one batch of 40 prompts around 24 tokens:

- `bare_sdpa`: the model's forward (sdpa attention, LM head included), no entropy: the floor;
- `harness_engine`: the same forward inside `harness.attention.attention_entropy` (entropy computed inside
  each layer's attention, patterns dropped), the result popped and moved to the host;
- `eager_materialised`: eager attention with `output_attentions=True`, every pattern kept, then reduced;
- `transformer_lens`: TransformerLens `run_with_cache` on every layer's `hook_pattern`, same architecture,
  random weights, then reduced the same way (the optional `peers` extra; skipped with the reason if absent).

Each round runs the bare forward first (outside any block), then reopens the engine's `attention_entropy`
block and warms it (untimed: a claim keeps one block open across its batches), then times the engine's
call. Its memory call opens a block of its own, so the CUDA graphs and buffers it builds count.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import nn

from benchmarks.entropy_paths import (
    all_layers,
    eager_attention,
    import_transformer_lens,
    peer_version,
    tl_entropy,
    tl_model,
)
from benchmarks.kit import Bench, prompts_near, workload_info
from benchmarks.measure import weight_bytes
from harness.engine.attention import AttentionEntropy, attention_entropy
from harness.engine.models import LoadedModel
from harness.engine.runner import Encoded, encode

GROUP = "entropy"
Batch = tuple[Encoded, dict[str, Any]]  # the encoded prompts and their description


@pytest.fixture(scope="module")
def batch(bench: Bench) -> Batch:
    prompts = prompts_near(bench.lm)
    return encode(bench.lm, prompts), workload_info(bench.lm, prompts)


def bare_sdpa(lm: LoadedModel, enc: Encoded) -> None:
    with torch.no_grad():
        lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)


def engine_entropy(engine: AttentionEntropy, lm: LoadedModel, enc: Encoded) -> torch.Tensor:
    """(layer, batch, head) published entropies on the host."""
    bare_sdpa(lm, enc)
    published = engine.pop().cpu().published
    assert published is not None, "the engine computed no published entropy"
    return published


def eager_entropy(lm: LoadedModel, enc: Encoded) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False,
                       output_attentions=True)
        return all_layers(out.attentions, enc.attention_mask.bool()).cpu()


def test_bare_sdpa(benchmark: BenchmarkFixture, bench: Bench, batch: Batch) -> None:
    enc, info = batch
    bench.time(benchmark, GROUP, "bare_sdpa", lambda: bare_sdpa(bench.lm, enc), info=info,
               weight_bytes=weight_bytes(bench.lm.model))


def test_harness_engine(benchmark: BenchmarkFixture, bench: Bench, batch: Batch) -> None:
    enc, info = batch
    lm = bench.lm
    bench.time(benchmark, GROUP, "harness_engine", lambda engine: engine_entropy(engine, lm, enc),
               baseline=lambda: bare_sdpa(lm, enc), session=lambda: attention_entropy(lm.model), info=info,
               weight_bytes=weight_bytes(lm.model))


def test_eager_materialised(benchmark: BenchmarkFixture, bench: Bench, batch: Batch) -> None:
    enc, info = batch
    lm = bench.lm
    with attention_entropy(lm.model) as engine:
        ours = engine_entropy(engine, lm, enc)
    with eager_attention(lm.model):
        theirs = eager_entropy(lm, enc)
    tolerance = 1e-4 if lm.model.dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance, equal_nan=True,
                               msg="engine and eager entropies differ: the timings would compare unlike work")
    bench.time(benchmark, GROUP, "eager_materialised", lambda _: eager_entropy(lm, enc),
               baseline=lambda: bare_sdpa(lm, enc), session=lambda: eager_attention(lm.model), info=info,
               weight_bytes=weight_bytes(lm.model))


@pytest.fixture(scope="module")
def lens(bench: Bench, batch: Batch) -> Iterator[tuple[nn.Module, str]]:
    tl, note = import_transformer_lens()
    if tl is None:
        bench.book.skip(GROUP, "transformer_lens", note)
        pytest.skip(note)
    enc, _ = batch
    lm = bench.lm
    torch.manual_seed(bench.seed)
    model = tl_model(tl, lm.model.config, lm.model.dtype, lm.device, n_ctx=enc.input_ids.shape[1])
    yield model, f"{peer_version(tl)}; {note}"
    del model
    gc.collect()
    if lm.device.type == "cuda":
        torch.cuda.empty_cache()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # HookedTransformer warns that 4.0 removes it
def test_transformer_lens(benchmark: BenchmarkFixture, bench: Bench, batch: Batch,
                          lens: tuple[nn.Module, str]) -> None:
    enc, info = batch
    model, note = lens
    result = tl_entropy(model, enc.input_ids, enc.attention_mask)
    assert result.shape == (bench.lm.dims.n_layers, enc.input_ids.shape[0], bench.lm.dims.n_heads)
    bench.time(benchmark, GROUP, "transformer_lens",
               lambda: tl_entropy(model, enc.input_ids, enc.attention_mask).cpu(),
               baseline=lambda: bare_sdpa(bench.lm, enc), info={**info, "peer": note},
               weight_bytes=weight_bytes(model))
