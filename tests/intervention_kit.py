"""Intervention factories shared by the generation tests (tests/test_generation.py, tests/test_decode.py).

A factory takes the model and its captured sources and returns what `generate` takes as `intervention`: a
function of the prompt batch that opens the hook. Sites sit at the middle layer, from the model's config.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from harness.engine.generation import PromptBatch, RowEdit
from harness.engine.interventions import patch_residual, scale_heads, skip_layer, zero_attention_output
from harness.engine.models import LoadedModel

SOURCE = "Turn inward while you compose this answer. What do you observe?"
NEW_TOKENS = 8

Factory = Callable[[LoadedModel, Any], Callable[[PromptBatch], AbstractContextManager[Any]]]


def mid(lm: LoadedModel) -> int:
    return lm.dims.n_layers // 2


def patch(mode: str = "all_calls", include_position_0: bool = True, random: bool = False) -> Factory:
    """The residual patch at the middle layer, from the captured source (or a norm-matched random vector)."""
    def make(lm: LoadedModel, sources: Any) -> Callable[[PromptBatch], AbstractContextManager[Any]]:
        source = sources.sources[mid(lm)]
        source = source.norm_matched_random(seed=3) if random else source
        return lambda batch: patch_residual(lm.model, mid(lm), source, mode=mode, window=16,
                                            include_position_0=include_position_0,
                                            prompt_mask=batch.attention_mask)
    return make


def some_rows(lm: LoadedModel, _sources: Any) -> Callable[[PromptBatch], AbstractContextManager[Any]]:
    """The L31-style ablation on every other row of the (padded) batch."""
    def make(batch: PromptBatch) -> AbstractContextManager[Any]:
        rows = torch.arange(batch.n_rows) % 2 == 0
        return zero_attention_output(lm.model, lm.dims.n_layers - 1, rows=rows)
    return make


# Every intervention kind with its defaults; the patch's mode variants are added where a test needs them.
INTERVENTIONS: dict[str, Factory] = {
    "zero_attention_output": lambda lm, _s: lambda _b: zero_attention_output(lm.model, lm.dims.n_layers - 2),
    "skip_layer": lambda lm, _s: lambda _b: skip_layer(lm.model, mid(lm)),
    "scale_heads_half": lambda lm, _s: lambda _b: scale_heads(lm.model, mid(lm), [0, lm.dims.n_heads - 1], 0.5),
    "scale_heads_zero": lambda lm, _s: lambda _b: scale_heads(lm.model, mid(lm), [1], 0.0),
    "patch_all_calls": patch(),
    "patch_prefill_only": patch("prefill_only"),
    "patch_decode_only": patch("decode_only"),
    "patch_no_position_0": patch(include_position_0=False),
    "patch_random_vector": patch(random=True),
}


def row_edits(lm: LoadedModel, sources: Any) -> dict[str, RowEdit]:
    """Row edits for `generate_conditions`: "ablated" zeroes attention at the second-to-last layer, "patched"
    writes the captured source at the middle layer, each on its condition's rows only."""
    layer, middle = lm.dims.n_layers - 2, mid(lm)
    source = sources.sources[middle]

    def ablate(_batch: PromptBatch, index: torch.Tensor) -> AbstractContextManager[Any]:
        return zero_attention_output(lm.model, layer, rows=index >= 0)

    def patched(batch: PromptBatch, index: torch.Tensor) -> AbstractContextManager[Any]:
        return patch_residual(lm.model, middle, source, prompt_mask=batch.attention_mask, rows=index >= 0)

    return {"ablated": ablate, "patched": patched}
