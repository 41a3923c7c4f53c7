"""Generation: greedy `generate` of one left-padded batch (40 prompts around 24 tokens, 32 new tokens each)
bare, under the published residual patch (`all_calls`: prefill and every decode step) and under the
published zeroed attention output; every variant is forced to the same length (`min_new_tokens`), so the
ratio is the hooks' cost alone. `harness_generate_patched` is the harness's own path
(`harness.generation.generate`: tokenising, batching, decoding, stopping at end of sequence) with the patch, on
the eager path; `harness_graph_patched` and `harness_graph_ablated` are the same call on the graph path
(`harness.engine.decode`: static KV cache, decode steps replayed from CUDA graphs; on the CPU it falls back to
the eager path and says so in extra_info). The issue-13 target: the graph path at least 4x faster than bare
`generate` (its ratio <= 0.25); `python -m benchmarks.decode_speed` adds the ratio to the memory floor.

Layers, window and source come from the claims' registry entries (residual_patch_collapse,
l31_ablation_repetition), mapped by relative depth to the benchmarked model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.kit import Bench, prompts_near, workload_info
from benchmarks.measure import weight_bytes
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.engine.generation import PromptBatch, encode_left, generate
from harness.engine.interventions import PatchSource, capture_sources, patch_residual, zero_attention_output
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer

NEW_TOKENS = 32
VARIANTS = ("bare_generate", "patched_all_calls", "ablated_attn_zero", "harness_generate_patched",
            "harness_graph_patched", "harness_graph_ablated")


def _layer(claim_id: str, published: int, lm: LoadedModel) -> int:
    return map_layer(published, get_claim(claim_id).published_n_layers, lm.dims.n_layers)


def patch_setup(lm: LoadedModel) -> tuple[int, int, PatchSource]:
    """(layer, window, source): the published patch's first layer and window, its first published source."""
    claim = get_claim("residual_patch_collapse")
    layer = _layer(claim.id, claim.protocol["layers"][0], lm)
    window = int(claim.protocol["window"])
    source_prompt = bank_for(claim).category(claim.protocol["source_category"])[0]
    run = capture_sources(lm, [source_prompt], [layer], window)
    return layer, window, run.sources[layer]


def greedy(lm: LoadedModel, batch: PromptBatch) -> None:
    with torch.no_grad():
        lm.model.generate(  # type: ignore[operator]
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, pad_token_id=lm.tokenizer.pad_token_id)


def variant_fn(variant: str, lm: LoadedModel, prompts: list[str]) -> Callable[[], None]:
    batch = encode_left(lm, prompts)
    layer, window, source = patch_setup(lm)
    ablated = _layer("l31_ablation_repetition", get_claim("l31_ablation_repetition").protocol["layer"], lm)

    def patched(b: PromptBatch) -> AbstractContextManager[Any]:
        return patch_residual(lm.model, layer, source, mode="all_calls", window=window,
                              prompt_mask=b.attention_mask)

    def within(manager: Callable[[], AbstractContextManager[Any]]) -> Callable[[], None]:
        def run() -> None:
            with manager():
                greedy(lm, batch)
        return run

    return {
        "bare_generate": within(nullcontext),
        "patched_all_calls": within(lambda: patched(batch)),
        "ablated_attn_zero": within(lambda: zero_attention_output(lm.model, ablated)),
        "harness_generate_patched": lambda: _harness(lm, prompts, patched, "eager"),
        "harness_graph_patched": lambda: _harness(lm, prompts, patched, "auto"),
        "harness_graph_ablated": lambda: _harness(lm, prompts, lambda _b: zero_attention_output(lm.model, ablated),
                                                  "auto"),
    }[variant]


def _harness(lm: LoadedModel, prompts: list[str], intervention: Callable[[PromptBatch], Any], path: str) -> None:
    generate(lm, prompts, NEW_TOKENS, intervention=intervention, batch_size=len(prompts), path=path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation(benchmark: BenchmarkFixture, bench: Bench, variant: str) -> None:
    lm = bench.lm
    prompts = prompts_near(lm)
    info = {**workload_info(lm, prompts), "new_tokens": NEW_TOKENS}
    if variant.startswith("harness_graph"):
        info["path"] = generate(lm, prompts[:1], 2, path="auto").paths[0]
    baseline = None if variant == "bare_generate" else variant_fn("bare_generate", lm, prompts)
    bench.time(benchmark, "generation", variant, variant_fn(variant, lm, prompts), baseline=baseline,
               heavy=True, info=info, weight_bytes=weight_bytes(lm.model))
