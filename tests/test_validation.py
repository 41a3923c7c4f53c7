"""Unit tests of harness/engine/validation.py: the checks on load pass on a model whose layout fits, and each
one fails, naming the model and the check, on a layout or an engine that does not fit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import harness.engine.architectures as architectures
import harness.engine.attention as attention
from harness.engine.models import LoadedModel, load
from harness.engine.runner import encode
from harness.engine.specs import get_spec
from harness.engine.validation import (
    PROMPTS,
    ModelValidationError,
    check_batched,
    check_entropy,
    tolerance,
    validate_model,
)

pytestmark = pytest.mark.tiny


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load(get_spec("tiny-qwen2"), cache_dir=tmp_path_factory.mktemp("validation"), validate=False)


def test_a_fitting_layout_passes_with_tiny_errors(lm: LoadedModel) -> None:
    figures = validate_model(lm)
    assert figures["prompts"] == len(PROMPTS) == 2
    assert figures["sites_checked"] == 8 * 2 + lm.dims.n_layers - 2
    assert max(figures["hidden_states_max_rel_error"], figures["entropy_max_abs_error"],
               figures["batched_max_rel_error"]) < 1e-5


def test_load_records_the_figures(tmp_path: Path) -> None:
    loaded = load(get_spec("tiny-llama"), cache_dir=tmp_path)
    assert set(loaded.describe()["validation"]) == {"prompts", "tolerance", "dtype", "sites_checked",
                                                    "hidden_states_max_rel_error", "entropy_max_abs_error",
                                                    "entropy_layers_checked", "batched_max_rel_error"}
    assert loaded.describe()["validation"]["tolerance"] == tolerance(loaded) == 1e-4


@pytest.fixture
def bf16(lm: LoadedModel) -> Iterator[LoadedModel]:
    lm.model.to(torch.bfloat16)
    try:
        yield lm
    finally:
        lm.model.to(torch.float32)


def test_the_half_precision_tolerance_follows_the_dtype(bf16: LoadedModel) -> None:
    """bfloat16 keeps 3 fewer mantissa bits than float16: its tolerance is 8 times wider (32 epsilons)."""
    assert tolerance(bf16) == 32 * torch.finfo(torch.bfloat16).eps == 0.25
    figures = validate_model(bf16)
    assert figures["dtype"] == "bfloat16" and figures["tolerance"] == 0.25


def test_left_padding_fails_the_batched_check_in_bfloat16(bf16: LoadedModel) -> None:
    """The wider tolerance still catches an error of the size of the values (positions shifted by padding). It
    is blunter than float16's: near-uniform attention (random weights) hides a wrong softmax scale in the
    entropy check's 0.25, which the float32 check catches (test_a_wrong_entropy_fails_the_entropy_check)."""
    bf16.tokenizer.padding_side = "left"
    try:
        with pytest.raises(ModelValidationError, match=r"failed the batched check on load"):
            check_batched(bf16)
    finally:
        bf16.tokenizer.padding_side = "right"


def test_swapped_projections_fail_the_site_shape_check(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = replace(architectures.LAYOUTS["qwen2"], qkv=("self_attn.v_proj", "self_attn.k_proj", "self_attn.q_proj"))
    monkeypatch.setitem(architectures.LAYOUTS, "qwen2", wrong)
    width = lm.dims.n_kv_heads * lm.dims.head_dim
    with pytest.raises(ModelValidationError, match=rf"^model 'tiny-qwen2' \(model_type 'qwen2'\) failed the site "
                       rf"shape check on load: blocks.0.attn.q holds \(2, \d+, {width}\), the config implies "
                       r"\(2, \d+, \d+\); the site layout .* does not fit it$"):
        validate_model(lm)


def test_a_wrong_entropy_fails_the_entropy_check(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    original = attention.row_statistics

    def doubled_scale(q, k, bias, out, scaling, variants, step, softcap=None):  # type: ignore[no-untyped-def]
        original(q, k, bias, out, 2 * scaling, variants, step, softcap)

    monkeypatch.setattr(attention, "row_statistics", doubled_scale)
    with pytest.raises(ModelValidationError, match=r"failed the attention entropy check on load: layer 0, prompt "
                       r"\d: in-forward entropy differs from the eager patterns' by"):
        check_entropy(lm, encode(lm, PROMPTS))


def test_left_padding_fails_the_batched_check(lm: LoadedModel) -> None:
    lm.tokenizer.padding_side = "left"
    try:
        with pytest.raises(ModelValidationError, match=r"failed the batched check on load: a batch of 2 prompts "
                           r"differs from one prompt at a time by"):
            check_batched(lm)
    finally:
        lm.tokenizer.padding_side = "right"
