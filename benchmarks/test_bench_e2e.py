"""End to end: every protocol of every claim (as published and every control) once, on the benchmarked
model, after loading (the load time is recorded apart, in the ratios JSON's run.load_s).

Claims are found through their claim tests (benchmarks/claim_suites.py); one whose test or protocols do not
exist yet is skipped with the reason. Each claim runs on this one model whether or not the claim suite would
pair them: the benchmark measures cost, not verdicts. Per-protocol seconds go into extra_info; the sum over
claims is the `end_to_end/all_claims` figure (target: at most 30 s for one 7B model). Claims that compare
an instruct model with its base (role conditioning) run where the benchmarked model names a base in the
registry (e.g. --models mistral-7b-instruct-v0.1); the base is loaded before timing (`run.base_load_s`).

Under `--benchmark-disable` (the CI smoke run) each claim runs its first protocol only: that keeps the
discovery, the contexts and the recording working in seconds, and the full protocols already run in the
claims suite. Its figure is then not a measurement (the ratios JSON says `benchmark_disabled`).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.claim_suites import ContextError, Suite, discover
from benchmarks.kit import Bench
from benchmarks.measure import synchronize, weight_bytes
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import load_claims


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "claim_id" in metafunc.fixturenames:
        claims = load_claims()
        metafunc.parametrize("claim_id", sorted(claims))


def context_for(suite: Suite, bench: Bench, harness_options: Any, model_cache: Any) -> Any:
    """The suite's context on the benchmarked model; a base model it needs is loaded now, outside timing."""
    if bench.lm.spec.base is not None:
        start = time.perf_counter()
        model_cache.get(bench.lm.spec.base)
        bench.book.run.setdefault("base_load_s", time.perf_counter() - start)
    bank = bank_for(suite.claim, harness_options.prompt_banks)
    pool = {"lm": bench.lm, "bank": bank, "seed": bench.seed, "batch_size": bench.batch_size,
            "load": model_cache.get, "cache": {}, "measured": {}}
    return suite.build(pool)


def run_protocols(suite: Suite, ctx: Any, names: list[str], bench: Bench, protocol_s: dict[str, float]
                  ) -> None:
    """The named protocols once, in order; each one's seconds into `protocol_s`."""
    for name in names:
        start = time.perf_counter()
        suite.protocols[name](ctx)
        synchronize(bench.device)
        protocol_s[name] = time.perf_counter() - start


def test_end_to_end(benchmark: BenchmarkFixture, bench: Bench, harness_options: Any, model_cache: Any,
                    claim_id: str) -> None:
    suite = discover(load_claims()[claim_id])
    try:
        if isinstance(suite, str):
            raise ContextError(suite)
        ctx = context_for(suite, bench, harness_options, model_cache)
    except ContextError as err:
        bench.book.skip("end_to_end", claim_id, str(err))
        pytest.skip(str(err))
    names = list(suite.protocols) if benchmark.enabled else list(suite.protocols)[:1]
    protocol_s: dict[str, float] = {}
    info = {"protocols": protocol_s, "module": suite.module, "context": suite.context.__name__,
            "all_protocols": len(names) == len(suite.protocols)}
    bench.time(benchmark, "end_to_end", claim_id, lambda: run_protocols(suite, ctx, names, bench, protocol_s),
               once=True, info=info, weight_bytes=weight_bytes(bench.lm.model))
