"""Capture: what it costs to keep a claim's activations, against a bare forward of the same batch.

Every variant starts from text (tokenising is part of `forward_capture`, so the bare variants tokenise too)
and runs the decoder stack without the LM head, as `forward_capture` does. The claim's sites are the R_V
claim's two v sites with its 16-token window. `forward_capture` stops after the deepest site, so it is
compared with a bare forward that stops there too (`bare_to_deepest`); the hooks alone are measured on two
full forwards (`claim_sites_full` against `bare_full`). `every_site` keeps every layer's residual and v whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.kit import Bench, prompts_near, workload_info
from benchmarks.measure import weight_bytes
from harness.claimkit.registry import get_claim
from harness.claimkit.rv import layers_for
from harness.engine.hooks import StopForward, capture, stop_after
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, encode, forward_capture
from harness.engine.sites import parse

VARIANTS = ("bare_full", "bare_to_deepest", "claim_sites", "claim_sites_full", "every_site")


def claim_sites(lm: LoadedModel) -> tuple[list[str], Window]:
    """The R_V claim's sites on this model (early and late v, mapped by depth) and its window."""
    claim = get_claim("rv_contraction")
    point = claim.protocol["site"]
    return [f"blocks.{layer}.{point}" for layer in layers_for(claim, lm)], Window(claim.protocol["window"])


def _forward(lm: LoadedModel, prompts: Sequence[str], sites: Sequence[str] = (), window: Window | None = None,
             stop_at: int | None = None) -> None:
    """Tokenise, then run the decoder stack with `sites` captured (window-gathered if a window is given)."""
    enc = encode(lm, prompts)
    reduce = (lambda t: window.gather(t, enc.lengths)) if window is not None else None
    stop = stop_after(lm.model, stop_at, lm.id) if stop_at is not None else nullcontext()
    with torch.no_grad(), capture(lm.model, sites, reduce, model_name=lm.id), stop, suppress(StopForward):
        lm.model.base_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)


def variant_fn(variant: str, lm: LoadedModel, prompts: list[str]) -> Callable[[], None]:
    sites, window = claim_sites(lm)
    deepest = max(parse(site)[0] for site in sites)
    every = [f"blocks.{i}.{point}" for i in range(lm.dims.n_layers) for point in ("resid_post", "attn.v")]
    return {
        "bare_full": lambda: _forward(lm, prompts),
        "bare_to_deepest": lambda: _forward(lm, prompts, stop_at=deepest),
        "claim_sites": lambda: _harness(lm, prompts, sites, window),
        "claim_sites_full": lambda: _forward(lm, prompts, sites, window),
        "every_site": lambda: _forward(lm, prompts, every),
    }[variant]


def _harness(lm: LoadedModel, prompts: list[str], sites: list[str], window: Window) -> None:
    forward_capture(lm, prompts, sites, window, batch_size=len(prompts))


@pytest.fixture(scope="module")
def batch(bench: Bench) -> list[str]:
    return prompts_near(bench.lm)


@pytest.mark.parametrize("variant", VARIANTS)
def test_capture(benchmark: BenchmarkFixture, bench: Bench, batch: list[str], variant: str) -> None:
    lm = bench.lm
    sites, window = claim_sites(lm)
    info = {**workload_info(lm, batch), "sites": sites, "window": window.size}
    baseline = None if variant == "bare_full" else variant_fn("bare_full", lm, batch)
    bench.time(benchmark, "capture", variant, variant_fn(variant, lm, batch), baseline=baseline, info=info,
               weight_bytes=weight_bytes(lm.model))
