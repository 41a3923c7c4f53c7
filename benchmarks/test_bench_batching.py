"""Batching: the R_V measurement of 120 prompts of mixed lengths, batched against one prompt at a time.

`batched` is `harness.rv.measure` as the claim runs it (right-padded batches of --claim-batch-size, one
batched SVD on the device, one host transfer). `one_at_a_time` is the sources' loop: each prompt alone
through the same function, so each has its own forward, SVD and host transfer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.kit import Bench, mixed_prompts, workload_info
from benchmarks.measure import weight_bytes
from harness.claimkit.registry import get_claim
from harness.claimkit.rv import measure
from harness.engine.runner import Window

VARIANTS = ("batched", "one_at_a_time")


def variant_fn(variant: str, bench: Bench, prompts: list[str]) -> Callable[[], None]:
    claim = get_claim("rv_contraction")
    window = Window(claim.protocol["window"])

    def batched() -> None:
        measure(bench.lm, claim, prompts, window, bench.batch_size)

    def one_at_a_time() -> None:
        for prompt in prompts:
            measure(bench.lm, claim, [prompt], window, batch_size=1)

    return {"batched": batched, "one_at_a_time": one_at_a_time}[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_batching(benchmark: BenchmarkFixture, bench: Bench, variant: str) -> None:
    prompts = mixed_prompts()
    info = {**workload_info(bench.lm, prompts), "batch_size": bench.batch_size if variant == "batched" else 1}
    baseline = None if variant == "batched" else variant_fn("batched", bench, prompts)
    bench.time(benchmark, "batching", variant, variant_fn(variant, bench, prompts), baseline=baseline,
               heavy=True, info=info, weight_bytes=weight_bytes(bench.lm.model))
