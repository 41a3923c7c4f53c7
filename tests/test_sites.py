"""Unit tests of harness/sites.py: site names, their modules on each tiny family, widths and layer maps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.engine.hooks import capture
from harness.engine.models import Dims, LoadedModel
from harness.engine.runner import encode
from harness.engine.sites import POINTS, SiteError, decoder_layers, map_layer, parse, resolve, site_width

# The module path under the decoder layer and the hook direction of each point, written out independently.
EXPECTED = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn.q": ("self_attn.q_proj", "output"),
    "attn.k": ("self_attn.k_proj", "output"),
    "attn.v": ("self_attn.v_proj", "output"),
    "attn.z": ("self_attn.o_proj", "input"),
    "attn.out": ("self_attn", "output"),
    "mlp.out": ("mlp", "output"),
}
# d_model differs from n_heads * head_dim, and n_kv_heads from n_heads, so each width has one right answer.
ODD_DIMS = Dims(n_layers=4, n_heads=9, n_kv_heads=3, head_dim=8, d_model=80)

published_depths = st.integers(min_value=2, max_value=96)


def test_points_are_the_documented_set() -> None:
    assert set(POINTS) == set(EXPECTED)
    assert all(POINTS[point] == direction for point, (_, direction) in EXPECTED.items())


# --- parse ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", sorted(EXPECTED))
def test_parse_each_point(point: str) -> None:
    assert parse(f"blocks.27.{point}") == (27, point)


@pytest.mark.parametrize(
    "name",
    [
        "blocks.x.attn.v",
        "block.1.attn.v",
        "blocks.1.attn.w",
        "blocks.-1.attn.v",
        "blocks.1",
        "",
        "blocks.1.attn.v ",
        "model.layers.1.self_attn.v_proj",
        "blocks.1.attn",
        "blocks..attn.v",
    ],
)
def test_malformed_names_list_the_points(name: str) -> None:
    with pytest.raises(
        SiteError,
        match=r"is not of the form 'blocks.<layer>.<point>' with point one of "
        r"resid_pre, resid_post, attn.q, .*mlp.out",
    ) as err:
        parse(name)
    assert repr(name) in str(err.value)


# --- resolve on each tiny family --------------------------------------------------------------------------


@pytest.mark.parametrize("point", sorted(EXPECTED))
def test_resolve_each_point_on_each_family(tiny_lm: LoadedModel, point: str) -> None:
    layers = tiny_lm.model.model.layers
    for layer in (0, len(layers) - 1):
        site = resolve(tiny_lm.model, f"blocks.{layer}.{point}", tiny_lm.id)
        path, direction = EXPECTED[point]
        assert site.module is (layers[layer].get_submodule(path) if path else layers[layer])
        assert (site.name, site.layer, site.point, site.direction) == (
            f"blocks.{layer}.{point}",
            layer,
            point,
            direction,
        )


def test_resolve_accepts_the_base_model_too(tiny_lm: LoadedModel) -> None:
    """forward_capture runs the decoder alone (model.base_model); sites resolve to the same modules."""
    on_lm = resolve(tiny_lm.model, "blocks.1.attn.v").module
    assert resolve(tiny_lm.model.base_model, "blocks.1.attn.v").module is on_lm
    assert decoder_layers(tiny_lm.model) is decoder_layers(tiny_lm.model.base_model)


def test_out_of_range_names_site_model_and_range(tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-mistral"]
    with pytest.raises(
        SiteError,
        match=r"^site 'blocks.16.attn.v' out of range: tiny-mistral has 16 layers "
        r"\(0-15\)$",
    ):
        resolve(lm.model, "blocks.16.attn.v", lm.id)
    with pytest.raises(
        SiteError,
        match=r"^site 'blocks.31.resid_post' out of range: tiny-llama has 12 layers "
        r"\(0-11\)$",
    ):
        resolve(tiny_models["tiny-llama"].model, "blocks.31.resid_post", "tiny-llama")


def test_a_module_without_a_config_names_the_supported_model_types() -> None:
    with pytest.raises(
        SiteError, match=r"^Linear has no config, so its architecture is unknown; sites resolve on transformers "
        r"models of model_type llama, mistral, qwen2, .*phi3, gpt2, gpt_neox$"
    ):
        resolve(torch.nn.Linear(2, 2), "blocks.0.attn.v")


def test_an_unsupported_model_type_is_named_with_the_supported_list() -> None:
    module = torch.nn.Linear(2, 2)
    module.config = SimpleNamespace(model_type="bloom")  # type: ignore[assignment]
    with pytest.raises(SiteError, match=r"^Linear has model_type 'bloom', which claim-harness does not support; "
                       r"supported model_types: llama, .*gpt_neox"):
        resolve(module, "blocks.0.attn.v")


# --- widths -----------------------------------------------------------------------------------------------


def test_site_width_from_dims() -> None:
    widths = {point: site_width(point, ODD_DIMS) for point in EXPECTED}
    assert widths == {
        "attn.q": 72,
        "attn.z": 72,
        "attn.k": 24,
        "attn.v": 24,
        "resid_pre": 80,
        "resid_post": 80,
        "attn.out": 80,
        "mlp.out": 80,
    }


def test_captured_width_of_every_point_matches_site_width(tiny_lm: LoadedModel) -> None:
    dims, enc = tiny_lm.dims, encode(tiny_lm, ["The capital of France is"])
    sites = [f"blocks.1.{point}" for point in EXPECTED]
    with torch.no_grad(), capture(tiny_lm.model, sites, model_name=tiny_lm.id) as acts:
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    for name in sites:
        (tensor,) = acts[name]
        assert tensor.shape == (1, enc.lengths[0], site_width(parse(name)[1], dims)), name


def test_gqa_value_width_is_kv_heads_times_head_dim_not_d_model(tiny_lm: LoadedModel) -> None:
    dims, config = tiny_lm.dims, tiny_lm.model.config
    assert dims.n_kv_heads == config.num_key_value_heads < dims.n_heads == config.num_attention_heads
    enc = encode(tiny_lm, ["Water boils at a temperature of"])
    with torch.no_grad(), capture(tiny_lm.model, ["blocks.0.attn.v"]) as acts:
        tiny_lm.model(input_ids=enc.input_ids)
    width = acts["blocks.0.attn.v"][0].shape[-1]
    assert width == config.num_key_value_heads * dims.head_dim
    assert width != dims.d_model


# --- map_layer --------------------------------------------------------------------------------------------


def test_map_layer_sends_published_layers_to_distinct_tiny_layers() -> None:
    mapped = [map_layer(layer, 32, 16) for layer in (5, 24, 27, 31)]
    assert mapped == [2, 12, 13, 15]


@given(published_depths, st.integers(min_value=1, max_value=96))
def test_map_layer_keeps_order_and_ends(published: int, n_layers: int) -> None:
    mapped = [map_layer(layer, published, n_layers) for layer in range(published)]
    assert mapped == sorted(mapped)
    assert mapped[0] == 0 and all(0 <= m < n_layers for m in mapped)
    if n_layers <= published:
        assert mapped[-1] == n_layers - 1


@given(published_depths)
def test_map_layer_is_identity_at_the_published_depth(published: int) -> None:
    assert [map_layer(layer, published, published) for layer in range(published)] == list(range(published))


@pytest.mark.parametrize("layer", [-1, 32])
def test_map_layer_rejects_a_layer_outside_the_published_model(layer: int) -> None:
    with pytest.raises(SiteError, match=rf"layer {layer} out of range for the published model's 32 layers"):
        map_layer(layer, 32, 16)
