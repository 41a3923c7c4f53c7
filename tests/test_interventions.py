"""Unit tests of harness/interventions.py on the tiny families (GQA, odd head counts).

What each manager writes, where, and on which calls; the W-A3 pinning of a last-layer residual patch is
mechanical on any model, so it is asserted exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.engine.generation import encode_left, eos_ids, generate
from harness.engine.hooks import capture
from harness.engine.interventions import (
    PatchSource,
    capture_sources,
    head_scale,
    patch_residual,
    scale_heads,
    skip_layer,
    zero_attention_output,
)
from harness.engine.models import Dims, LoadedModel
from harness.engine.runner import encode

PROMPTS = ["The capital city of Japan is", "Watch the watcher watching.",
           "Explain how a kite stays up in a steady breeze."]
SOURCE = "Turn inward while you compose this answer. What do you observe?"
NEW_TOKENS = 6


def _forward(lm: LoadedModel, batch: Any) -> None:
    with torch.no_grad():
        lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)


def _site_output(lm: LoadedModel, site: str, manager: Any = None) -> torch.Tensor:
    """The site's tensor on a right-padded forward of PROMPTS, with `manager` (entered first) active."""
    enc = encode(lm, PROMPTS)
    with manager if manager is not None else torch.no_grad(), capture(lm.model, [site]) as acts:
        _forward(lm, enc)
    return acts[site][0]


# --- ablations ---------------------------------------------------------------------------------------------


def test_scale_heads_zero_on_all_heads_equals_zero_attention_output(tiny_lm: LoadedModel) -> None:
    layer = tiny_lm.dims.n_layers - 2
    site = f"blocks.{layer}.resid_post"
    every_head = range(tiny_lm.dims.n_heads)
    scaled = _site_output(tiny_lm, site, scale_heads(tiny_lm.model, layer, every_head, 0.0))
    zeroed = _site_output(tiny_lm, site, zero_attention_output(tiny_lm.model, layer))
    plain = _site_output(tiny_lm, site)
    torch.testing.assert_close(scaled, zeroed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, zeroed), "zeroing the attention output changed nothing"


def test_zero_attention_output_zeroes_the_attention_module_output(tiny_lm: LoadedModel) -> None:
    layer = 1
    out = _site_output(tiny_lm, f"blocks.{layer}.attn.out", zero_attention_output(tiny_lm.model, layer))
    assert torch.count_nonzero(out) == 0


def test_scale_heads_scales_exactly_one_query_head_slice(tiny_lm: LoadedModel) -> None:
    dims, layer = tiny_lm.dims, 1
    head = dims.n_heads - 1  # the last query head: a hard-coded head count or width would miss it
    site = f"blocks.{layer}.attn.z"
    plain = _site_output(tiny_lm, site)
    scaled = _site_output(tiny_lm, site, scale_heads(tiny_lm.model, layer, [head], 0.5))
    assert plain.shape[-1] == dims.n_heads * dims.head_dim != dims.n_kv_heads * dims.head_dim
    cols = slice(head * dims.head_dim, (head + 1) * dims.head_dim)
    torch.testing.assert_close(scaled[..., cols], 0.5 * plain[..., cols])
    torch.testing.assert_close(scaled[..., : cols.start], plain[..., : cols.start])


@pytest.mark.parametrize("heads", [[9], [-1], []])
def test_head_indices_are_checked_against_the_config(heads: list[int]) -> None:
    dims = Dims(n_layers=4, n_heads=9, n_kv_heads=3, head_dim=8, d_model=72)
    with pytest.raises(ValueError, match="9 query heads"):
        head_scale(dims, heads, 0.0)


def test_head_scale_uses_head_dim_from_the_config() -> None:
    dims = Dims(n_layers=4, n_heads=5, n_kv_heads=1, head_dim=12, d_model=60)
    scale = head_scale(dims, [2], 0.0)
    assert scale.shape == (60,)
    assert scale.tolist() == [1.0] * 24 + [0.0] * 12 + [1.0] * 24


def test_skip_layer_returns_the_layer_input(tiny_lm: LoadedModel) -> None:
    layer = 2
    enc = encode(tiny_lm, PROMPTS)
    sites = [f"blocks.{layer}.resid_pre", f"blocks.{layer}.resid_post"]
    with torch.no_grad(), skip_layer(tiny_lm.model, layer) as log, capture(tiny_lm.model, sites) as acts:
        _forward(tiny_lm, enc)
    torch.testing.assert_close(acts[sites[1]][0], acts[sites[0]][0], rtol=0, atol=0)
    assert log.edited == 1


# --- residual patch: positions -----------------------------------------------------------------------------


def _patched_positions(lm: LoadedModel, source: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """(batch, width) bool of the positions a prefill patch changed, and the patched layer output."""
    layer = 1
    batch = encode_left(lm, PROMPTS)
    site = f"blocks.{layer}.resid_post"
    with torch.no_grad(), capture(lm.model, [site]) as plain:
        _forward(lm, batch)
    patch = patch_residual(lm.model, layer, source, prompt_mask=batch.attention_mask, **kwargs)
    with torch.no_grad(), patch, capture(lm.model, [site]) as patched:
        _forward(lm, batch)
    changed = (plain[site][0] != patched[site][0]).any(-1)
    return changed, (batch, patched[site][0])


@pytest.mark.parametrize(("window", "t_src", "include_position_0"),
                         [(16, 30, True), (16, 4, True), (3, 30, True), (16, 30, False), (5, 30, False)])
def test_prefill_patch_writes_the_last_w_positions(tiny_lm: LoadedModel, window: int, t_src: int,
                                                   include_position_0: bool) -> None:
    source = torch.randn(t_src, tiny_lm.dims.d_model, generator=torch.Generator().manual_seed(0))
    changed, (batch, out) = _patched_positions(tiny_lm, source, window=window,
                                               include_position_0=include_position_0)
    for row, length in enumerate(batch.lengths):
        w = min(window, length, t_src)  # the published W = min(window, T_current, T_src)
        first = batch.width - length  # the first real token of this left-padded row
        expected = [batch.width - w <= p and (include_position_0 or p != first) for p in range(batch.width)]
        assert changed[row].tolist() == expected, f"row {row} (length {length})"
        for p in range(batch.width - w, batch.width):
            if expected[p]:
                torch.testing.assert_close(out[row, p], source[t_src - (batch.width - p)])


def test_patch_source_needs_one_row_per_prompt_or_one_for_all(tiny_lm: LoadedModel) -> None:
    width = 4
    two = PatchSource(torch.zeros(2, width, tiny_lm.dims.d_model), torch.tensor([width, width]))
    batch = encode_left(tiny_lm, PROMPTS)
    with pytest.raises(ValueError, match="2 patch sources for a batch of 3"), \
            patch_residual(tiny_lm.model, 1, two, prompt_mask=batch.attention_mask):
        _forward(tiny_lm, batch)


@pytest.mark.parametrize(("kwargs", "message"), [({"mode": "sometimes"}, "patch mode 'sometimes'"),
                                                  ({"window": 0}, "window=0")])
def test_bad_patch_settings_name_the_value(tiny_lm: LoadedModel, kwargs: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message), \
            patch_residual(tiny_lm.model, 1, torch.zeros(3, tiny_lm.dims.d_model), **kwargs):
        pass


def test_rows_limit_the_patch_to_some_prompts(tiny_lm: LoadedModel) -> None:
    source = torch.randn(8, tiny_lm.dims.d_model, generator=torch.Generator().manual_seed(1))
    changed, _ = _patched_positions(tiny_lm, source, rows=torch.tensor([False, True, False]))
    assert changed[1].any() and not changed[0].any() and not changed[2].any()


# --- residual patch: calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "edits"), [("all_calls", "every"), ("prefill_only", "first"),
                                              ("decode_only", "decode")])
def test_patch_modes_fire_on_the_right_calls(tiny_lm: LoadedModel, mode: str, edits: str) -> None:
    source = torch.randn(5, tiny_lm.dims.d_model, generator=torch.Generator().manual_seed(2))
    batch = encode_left(tiny_lm, PROMPTS)
    run = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=lambda b: patch_residual(
        tiny_lm.model, 1, source, mode=mode, prompt_mask=b.attention_mask))
    steps = max(len(g.generated_ids) for g in run.generations)
    (log,) = run.calls
    expected = {str(batch.width): 1, "1": steps - 1} if steps > 1 else {str(batch.width): 1}
    assert log["by_seq_len"] == expected
    assert log["edited"] == {"every": steps, "first": 1, "decode": steps - 1}[edits]


# --- W-A3: the published patch at the last layer pins every step ------------------------------------------


def test_last_layer_patch_emits_the_source_argmax_at_every_step(tiny_lm: LoadedModel) -> None:
    last = tiny_lm.dims.n_layers - 1
    src = capture_sources(tiny_lm, [SOURCE], [last], window=16)
    (argmax,) = src.next_token
    run = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=lambda b: patch_residual(
        tiny_lm.model, last, src.sources[last], prompt_mask=b.attention_mask))
    expected = (argmax,) if argmax in eos_ids(tiny_lm) else (argmax,) * NEW_TOKENS
    assert [g.generated_ids for g in run.generations] == [expected] * len(PROMPTS)


def test_last_layer_prefill_patch_pins_only_the_first_token(tiny_lm: LoadedModel) -> None:
    last = tiny_lm.dims.n_layers - 1
    src = capture_sources(tiny_lm, [SOURCE], [last], window=16)
    run = generate(tiny_lm, PROMPTS, NEW_TOKENS, intervention=lambda b: patch_residual(
        tiny_lm.model, last, src.sources[last], mode="prefill_only", prompt_mask=b.attention_mask))
    assert [g.generated_ids[0] for g in run.generations] == src.next_token * len(PROMPTS)


# --- sources -----------------------------------------------------------------------------------------------


def test_capture_sources_batched_equals_one_at_a_time(tiny_lm: LoadedModel) -> None:
    layers = [0, tiny_lm.dims.n_layers - 1]
    both = capture_sources(tiny_lm, [SOURCE, *PROMPTS], layers, window=16)
    for i, prompt in enumerate([SOURCE, *PROMPTS]):
        alone = capture_sources(tiny_lm, [prompt], layers, window=16)
        assert alone.next_token == [both.next_token[i]]
        for layer in layers:
            torch.testing.assert_close(both.sources[layer].vectors[i], alone.sources[layer].vectors[0])
            assert int(both.sources[layer].available[i]) == min(16, alone.lengths[0])
        with torch.no_grad():
            ids = tiny_lm.tokenizer(prompt, add_special_tokens=tiny_lm.spec.bos, return_tensors="pt")
            logits = tiny_lm.model(**ids).logits
        assert alone.next_token == [int(logits[0, -1].argmax())]


def test_source_rows_are_the_last_rows_right_aligned(tiny_lm: LoadedModel) -> None:
    hidden = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    source = PatchSource.from_rows(hidden, window=8)
    assert int(source.available[0]) == 5
    torch.testing.assert_close(source.vectors[0, 3:], hidden)
    assert torch.count_nonzero(source.vectors[0, :3]) == 0
    torch.testing.assert_close(PatchSource.from_rows(hidden, window=2).vectors[0], hidden[-2:])


def test_norm_matched_random_source_keeps_row_norms_and_is_seeded() -> None:
    vectors = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3))
    vectors[0, 0] = 0.0  # a missing row stays missing
    source = PatchSource(vectors, torch.tensor([3, 4]))
    noise = source.norm_matched_random(seed=7)
    torch.testing.assert_close(noise.vectors.norm(dim=-1), vectors.norm(dim=-1))
    torch.testing.assert_close(noise.vectors, source.norm_matched_random(seed=7).vectors)
    assert not torch.allclose(noise.vectors, source.norm_matched_random(seed=8).vectors)
    cosine = torch.nn.functional.cosine_similarity(noise.vectors[1], vectors[1], dim=-1)
    assert cosine.abs().max() < 0.9
    assert noise.available.tolist() == [3, 4]


def test_one_patch_block_serves_one_generate_call(tiny_lm: LoadedModel) -> None:
    source = torch.randn(4, tiny_lm.dims.d_model, generator=torch.Generator().manual_seed(4))
    with patch_residual(tiny_lm.model, 1, source):
        generate(tiny_lm, PROMPTS[:1], 2)
        with pytest.raises(ValueError, match="once per generate call"):
            generate(tiny_lm, PROMPTS, 2)
