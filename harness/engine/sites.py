"""Canonical site names -> modules, for every architecture in `harness.engine.architectures`.

Claims name sites (`blocks.27.attn.v`), never module paths. A site is `blocks.{layer}.{point}`; the module
paths below are the Llama layout's (other layouts name their own modules, see architectures.py):

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

Where q, k and v come out of one fused projection (phi3, GPT-2, GPT-NeoX), attn.q/k/v hook that projection's
output and read (or write) their own slice of it (`Part`), so a claim sees the same tensors on every layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.engine.architectures import SUPPORTED, Layout, UnsupportedArchitecture, layout_for
from harness.engine.models import Dims

POINTS: dict[str, str] = {  # point -> hook direction
    "resid_pre": "input",
    "resid_post": "output",
    "attn.q": "output",
    "attn.k": "output",
    "attn.v": "output",
    "attn.z": "input",
    "attn.out": "output",
    "mlp.out": "output",
}
_QKV = ("attn.q", "attn.k", "attn.v")
_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class SiteError(ValueError):
    """A site name that does not resolve on this model."""


@dataclass(frozen=True)
class Part:
    """q, k or v (`which` 0, 1, 2) inside a fused projection's output (batch, seq, width)."""

    layout: str  # "blocked" (q | k | v) or "per_head" (per head: q, k, v side by side)
    which: int
    dims: Dims

    def _blocked_bounds(self) -> tuple[int, int]:
        d = self.dims
        widths = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim, d.n_kv_heads * d.head_dim)
        start = sum(widths[: self.which])
        return start, start + widths[self.which]

    def _per_head(self, fused: torch.Tensor) -> torch.Tensor:
        d = self.dims  # (batch, seq, heads * 3 * head_dim) -> (batch, seq, heads, 3, head_dim)
        return fused.view(*fused.shape[:-1], d.n_heads, 3, d.head_dim)

    def take(self, fused: torch.Tensor) -> torch.Tensor:
        """This part of the fused output, (batch, seq, heads * head_dim)."""
        if self.layout == "blocked":
            start, stop = self._blocked_bounds()
            return fused[..., start:stop]
        return self._per_head(fused)[..., self.which, :].flatten(-2)

    def put(self, fused: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """The fused output with this part replaced by `part` (a new tensor; `fused` is not modified)."""
        if self.layout == "blocked":
            start, stop = self._blocked_bounds()
            return torch.cat([fused[..., :start], part.to(fused.dtype), fused[..., stop:]], dim=-1)
        out = fused.clone()
        self._per_head(out)[..., self.which, :] = part.view(*part.shape[:-1], self.dims.n_heads, -1)
        return out


@dataclass(frozen=True)
class Site:
    name: str
    layer: int
    point: str
    module: nn.Module
    direction: str  # "input" (a pre-hook) or "output" (a forward hook)
    part: Part | None = None  # set when the module is a fused q/k/v projection


def layout_of(model: nn.Module) -> Layout:
    """The layout of a causal LM (or its base model), from `config.model_type`."""
    config: Any = getattr(model, "config", None)
    if config is None:
        raise SiteError(f"{type(model).__name__} has no config, so its architecture is unknown; sites resolve "
                        f"on transformers models of model_type {', '.join(SUPPORTED)}")
    try:
        return layout_for(getattr(config, "model_type", None), type(model).__name__)
    except UnsupportedArchitecture as err:
        raise SiteError(str(err)) from err


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM, or of its base model (`model.base_model`)."""
    path = layout_of(model).layers
    for candidate in (path, path.partition(".")[2]):  # from the causal LM, else from the base model
        try:
            layers = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise SiteError(f"{type(model).__name__} has no decoder layer list at {path!r}, which its model_type "
                    "should have")


def parse(name: str) -> tuple[int, str]:
    match = _SITE.match(name)
    if match is None or match.group(2) not in POINTS:
        raise SiteError(f"site {name!r} is not of the form 'blocks.<layer>.<point>' with point one of "
                        f"{', '.join(POINTS)}")
    return int(match.group(1)), match.group(2)


def module_path(layout: Layout, point: str) -> str:
    """The module a point hooks, relative to a decoder layer ("" is the layer itself)."""
    if point in _QKV:
        return layout.qkv if isinstance(layout.qkv, str) else layout.qkv[_QKV.index(point)]
    return {"resid_pre": "", "resid_post": "", "attn.z": layout.output, "attn.out": layout.attention,
            "mlp.out": layout.mlp}[point]


def resolve(model: nn.Module, name: str, model_name: str = "model") -> Site:
    """Resolve a site on `model`; out-of-range layers fail naming the model and the valid range."""
    layer, point = parse(name)
    layout = layout_of(model)
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise SiteError(f"site {name!r} out of range: {model_name} has {len(layers)} layers "
                        f"(0-{len(layers) - 1})")
    path = module_path(layout, point)
    module = layers[layer].get_submodule(path) if path else layers[layer]
    part = None
    if point in _QKV and layout.fused is not None:
        part = Part(layout.fused, _QKV.index(point), Dims.from_config(model.config))
    return Site(name, layer, point, module, POINTS[point], part)


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
