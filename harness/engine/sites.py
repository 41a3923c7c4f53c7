"""Canonical site names -> modules, for the Mistral, Qwen2 and Llama families.

Claims name sites (`blocks.27.attn.v`), never module paths. A site is `blocks.{layer}.{point}`:

| point       | module                    | hooked on | tensor                                   |
|-------------|---------------------------|-----------|------------------------------------------|
| resid_pre   | decoder layer             | input     | (batch, seq, d_model)                    |
| resid_post  | decoder layer             | output    | (batch, seq, d_model)                    |
| attn.q      | self_attn.q_proj          | output    | (batch, seq, n_heads * head_dim)         |
| attn.k      | self_attn.k_proj          | output    | (batch, seq, n_kv_heads * head_dim)      |
| attn.v      | self_attn.v_proj          | output    | (batch, seq, n_kv_heads * head_dim)      |
| attn.z      | self_attn.o_proj          | input     | (batch, seq, n_heads * head_dim)         |
| attn.out    | self_attn                 | output    | (batch, seq, d_model), before the residual add |
| mlp.out     | mlp                       | output    | (batch, seq, d_model)                    |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from harness.engine.models import Dims

POINTS: dict[str, tuple[str, str]] = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn.q": ("self_attn.q_proj", "output"),
    "attn.k": ("self_attn.k_proj", "output"),
    "attn.v": ("self_attn.v_proj", "output"),
    "attn.z": ("self_attn.o_proj", "input"),
    "attn.out": ("self_attn", "output"),
    "mlp.out": ("mlp", "output"),
}
_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class SiteError(ValueError):
    """A site name that does not resolve on this model."""


@dataclass(frozen=True)
class Site:
    name: str
    layer: int
    point: str
    module: nn.Module
    direction: str  # "input" (a pre-hook) or "output" (a forward hook)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM of the supported families."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise SiteError(f"{type(model).__name__} has no .model.layers; supported families: mistral, qwen2, llama")
    return layers


def parse(name: str) -> tuple[int, str]:
    match = _SITE.match(name)
    if match is None or match.group(2) not in POINTS:
        raise SiteError(f"site {name!r} is not of the form 'blocks.<layer>.<point>' with point one of "
                        f"{', '.join(POINTS)}")
    return int(match.group(1)), match.group(2)


def resolve(model: nn.Module, name: str, model_name: str = "model") -> Site:
    """Resolve a site on `model`; out-of-range layers fail naming the model and the valid range."""
    layer, point = parse(name)
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise SiteError(f"site {name!r} out of range: {model_name} has {len(layers)} layers "
                        f"(0-{len(layers) - 1})")
    path, direction = POINTS[point]
    module = layers[layer].get_submodule(path) if path else layers[layer]
    return Site(name, layer, point, module, direction)


def map_layer(layer: int, published_n_layers: int, n_layers: int) -> int:
    """Map a layer index stated for a model of `published_n_layers` to one of `n_layers` by relative depth."""
    if not 0 <= layer < published_n_layers:
        raise SiteError(f"layer {layer} out of range for the published model's {published_n_layers} layers")
    if n_layers == published_n_layers:
        return layer
    return min(n_layers - 1, layer * n_layers // published_n_layers)


def site_width(point: str, dims: Dims) -> int:
    """The last-dimension size of a site's tensor, from the config."""
    if point in ("attn.q", "attn.z"):
        return dims.n_heads * dims.head_dim
    if point in ("attn.k", "attn.v"):
        return dims.n_kv_heads * dims.head_dim
    return dims.d_model
