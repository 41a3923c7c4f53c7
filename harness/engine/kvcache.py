"""A KV cache of fixed shape, and the kernels of one decode step over it, for `harness.engine.decode`.

transformers' sdpa attention repeats every KV head for its query heads (`repeat_kv`) whenever a mask is given:
over a static cache that copies the whole cache four times (Mistral: 32 query heads, 8 KV heads) at every layer
of every step, more bytes than the weights at batch 256. `grouped_decode_attention` hands sdpa each KV head's
query heads as that head's query rows instead, so the cache is read once, by one fused kernel. A decode step
at batch 40 is otherwise bound by its ~1,400 small kernels (~3 us each inside a graph): the RMSNorm, eight
elementwise kernels in transformers' code, runs as one fused `torch.rms_norm` kernel. Both apply only inside
`decode_kernels` (a decode step of the static and graph paths); the prefill and everything else keep the
model's own code. They compute the same functions; rounding may differ in the last bit (tests/test_decode.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from harness.engine.models import Dims

_OVERRIDDEN = ("sdpa", "eager")


class StaticKV:
    """A KV cache of fixed shape (batch, n_kv_heads, length, head_dim) per layer, duck-typed for transformers'
    attention layers: `update` writes a call's keys and values at `slots` and returns the whole cache. Slots
    never written hold zeros and are masked out; the mask is always given as 4D, so no cache sizes are asked."""

    is_compileable = True  # what transformers asks of a cache of fixed shape

    def __init__(self, dims: Dims, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, dims.n_kv_heads, length, dims.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(dims.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(dims.n_layers)]
        self.slots = torch.zeros(1, dtype=torch.long, device=device)  # where the next call writes

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_args: Any,
               **_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer_idx].index_copy_(2, self.slots, key_states)
        self.values[layer_idx].index_copy_(2, self.slots, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        raise RuntimeError("StaticKV has no host-side length: pass position_ids and a 4D attention mask")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def grouped_decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             **_kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention with query (batch, n_heads, q, head_dim) and key/value (batch, n_kv_heads, length, head_dim),
    query head h reading KV head h // (n_heads / n_kv_heads) as transformers' `repeat_kv` pairs them; the mask is
    boolean (True: seen) or additive, (batch, 1, q, length). Returns (batch, q, n_heads, head_dim)."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, groups * q_len, head_dim)  # rows: (query head in group, position)
    mask = attention_mask
    if mask is not None and q_len > 1:
        mask = mask[:, :, None].expand(batch, 1, groups, q_len, length).reshape(batch, 1, groups * q_len, length)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    # reshape, not view: on a GPU the fused kernel may return its output in a transposed layout
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def fused_rms_norm(norm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm (weight * x / rms(x), eps from the module) as one kernel."""
    weight: torch.Tensor = norm.weight  # type: ignore[assignment]
    return torch.rms_norm(hidden, (hidden.shape[-1],), weight, float(norm.variance_epsilon))  # type: ignore[arg-type]


def rms_norms(model: nn.Module) -> list[nn.Module]:
    """The model's RMSNorm modules of transformers' form (a weight and a variance_epsilon)."""
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")
            and "forward" not in vars(m)]


@contextmanager
def decode_attention() -> Iterator[None]:
    """transformers' sdpa and eager attention replaced by `grouped_decode_attention` inside the block."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    before = {name: local[name] for name in _OVERRIDDEN if name in local}
    try:
        for name in _OVERRIDDEN:
            ALL_ATTENTION_FUNCTIONS[name] = grouped_decode_attention
        yield
    finally:
        for name in _OVERRIDDEN:
            local.pop(name, None)
        local.update(before)


@contextmanager
def decode_kernels(norms: list[nn.Module]) -> Iterator[None]:
    """Inside the block: `decode_attention`, and each of `norms` (from `rms_norms`) runs `fused_rms_norm`."""
    with decode_attention():
        try:
            for norm in norms:
                norm.forward = lambda hidden, norm=norm: fused_rms_norm(norm, hidden)
            yield
        finally:
            for norm in norms:
                vars(norm).pop("forward", None)
