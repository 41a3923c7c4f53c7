"""Models sharded across GPUs (issue 7): captures and patched generation equal the single-GPU run.

Runs under `pytest -m gpu` on a machine with at least two GPUs, at full size with random weights (the
weights are drawn once on the first GPU, then moved, so both placements hold identical weights).
"""

from __future__ import annotations

import pytest
import torch

from harness.engine.generation import generate
from harness.engine.interventions import capture_sources, patch_residual
from harness.engine.models import load, place
from harness.engine.runner import Window, forward_capture
from harness.engine.sites import decoder_layers
from harness.engine.specs import get_spec

pytestmark = pytest.mark.gpu

MODEL = "mistral-7b-instruct-v0.2"
PROMPTS = ["Watch yourself forming this very answer. What stands out?", "The largest ocean on Earth is",
           "Describe the one who is describing this description.", "Light travels at a speed of"]
SITES = ["blocks.5.attn.v", "blocks.27.attn.v", "blocks.31.resid_post"]


def _observe(lm):
    cap = forward_capture(lm, PROMPTS, SITES, Window(16), batch_size=4)
    source = capture_sources(lm, PROMPTS[:1], [27], 16)
    with torch.no_grad():
        run = generate(lm, PROMPTS[1:], 12, intervention=lambda batch: patch_residual(
            lm.model, 27, source.sources[27], mode="all_calls", prompt_mask=batch.attention_mask))
    return {s: w.float().cpu() for s, w in cap.windows.items()}, [g.generated_ids for g in run.generations]


def test_sharded_model_equals_single_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, {torch.cuda.device_count()} visible")
    lm = load(get_spec(MODEL), weights="random", device="cuda:0")
    single_windows, single_tokens = _observe(lm)
    lm.model = place(lm.model.to("cpu"), ["cuda:0", "cuda:1"])
    devices = {next(layer.parameters()).device for layer in decoder_layers(lm.model)}
    assert devices == {torch.device("cuda:0"), torch.device("cuda:1")}
    sharded_windows, sharded_tokens = _observe(lm)
    for site in SITES:
        torch.testing.assert_close(sharded_windows[site], single_windows[site], atol=2e-2, rtol=2e-2)
    agree = sum(a == b for x, y in zip(sharded_tokens, single_tokens, strict=True) for a, b in zip(x, y, strict=False))
    total = sum(len(x) for x in single_tokens)
    assert agree / total >= 0.9, f"patched generation agrees on {agree}/{total} tokens"
