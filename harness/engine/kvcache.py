"""A KV cache of fixed shape, and the attention of one decode step over it, for `harness.engine.decode`.

transformers' sdpa attention repeats every KV head for its query heads (`repeat_kv`) whenever a mask is given:
over a static cache that copies the whole cache four times (Mistral: 32 query heads, 8 KV heads) at every layer
of every step, more bytes than the weights at batch 256. `grouped_decode_attention` is transformers' eager
attention computed per KV head instead: each KV head's query heads are the rows of one matrix product, so the
cache is read once and nothing is copied. It runs only while `decode_attention` is entered (a decode step of
the static path); the prefill, and everything else, keeps the model's own attention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

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


def grouped_decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **_kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention with query (batch, n_heads, q, head_dim) and key/value (batch, n_kv_heads, length, head_dim),
    query head h reading KV head h // (n_heads / n_kv_heads) as transformers' `repeat_kv` pairs them; the mask is
    boolean (True: seen) or additive, (batch, 1, q, length). Returns (batch, q, n_heads, head_dim)."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, (heads // kv_heads) * q_len, head_dim)
    scale = scaling if scaling is not None else head_dim**-0.5
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scale  # (batch, kv_heads, group * q, length)
    scores = scores.view(batch, kv_heads, heads // kv_heads, q_len, -1)
    if attention_mask is not None:
        mask = attention_mask[:, :, None]  # (batch, 1, 1, q, length)
        scores = (scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool
                  else scores + mask)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.view(batch, kv_heads, -1, key.shape[2]), value)  # (batch, kv_heads, group * q, d)
    return out.view(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), None


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
