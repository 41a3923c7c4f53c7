"""KV-cache surgery: other prompts' keys and values written into a prefilled cache, position by position.

`KVRows.capture` runs source prompts and keeps every layer's keys and values, right-aligned (a source's last
token in the last column). `replace_last` then overwrites each target row's last min(T_target, T_source)
cache positions, at every layer, with its source's last positions: what the n300 source did before sampling
(claims-spec W-A6).

RoPE. Keys are cached after the rotary embedding, so a copied key keeps the rotation of the position it had in
its own prompt (T_source - m + j), while it now sits at the target's position T_target - m + j: the two differ
by T_target - T_source for every copied key (zero when the prompts are equally long). This module copies keys as
they are, as the source did; `replace_last` returns each row's offset so the report can say how far the copied
keys' positions are from their slots. Queries computed after the edit use the target's positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.engine.formatting import RAW, PromptFormat
from harness.engine.generation import encode_left
from harness.engine.models import LoadedModel


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (`cache` in transformers 5, `past_key_values` before)."""
    found = getattr(out, "cache", None) if "cache" in out else None
    return found if found is not None else out["past_key_values"]


def layer_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache, each (batch, n_kv_heads, positions, head_dim)."""
    if hasattr(cache, "layers"):  # transformers 5
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


def _set_kv(cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        cache.layers[layer].keys, cache.layers[layer].values = keys, values
    else:
        cache.key_cache[layer], cache.value_cache[layer] = keys, values


@dataclass(frozen=True)
class KVRows:
    """Source prompts' keys and values at every layer: per layer (n, n_kv_heads, width, head_dim), right-aligned
    (columns before a shorter prompt's first token are zero); `lengths` (n,) their token counts."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor

    @classmethod
    def capture(cls, lm: LoadedModel, prompts: Sequence[str], batch_size: int = 32,
                fmt: PromptFormat = RAW) -> KVRows:
        """Each prompt's cache as it is after reading the prompt (left-padded batches, true positions)."""
        keys: list[list[torch.Tensor]] = []
        values: list[list[torch.Tensor]] = []
        lengths: list[int] = []
        for start in range(0, len(prompts), batch_size):
            batch = encode_left(lm, prompts[start : start + batch_size], start, fmt)
            mask = batch.attention_mask
            with torch.no_grad():
                out = lm.model(input_ids=batch.input_ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                               position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0))
            pad = ~mask.bool()[:, None, :, None]  # (batch, 1, width, 1): zero the padding columns
            found = [(k.masked_fill(pad, 0), v.masked_fill(pad, 0)) for k, v in layer_kv(output_cache(out))]
            keys.append([k for k, _ in found])
            values.append([v for _, v in found])
            lengths.extend(batch.lengths)
        width = max(k[0].shape[2] for k in keys)

        def joined(chunks: list[list[torch.Tensor]], layer: int) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(c[layer], (0, 0, width - c[layer].shape[2], 0))
                              for c in chunks])

        n_layers = len(keys[0])
        return cls([joined(keys, i) for i in range(n_layers)], [joined(values, i) for i in range(n_layers)],
                   torch.tensor(lengths))


def replace_last(cache: Any, mask: torch.Tensor, source: KVRows, source_of: torch.Tensor) -> dict[str, Any]:
    """Overwrite each row's last m = min(T_row, T_source) cache positions, at every layer, with its source's.

    `mask` (rows, width) is the target batch's left-padded attention mask (the cache holds `width` positions);
    `source_of` (rows,) names each row's source (-1: leave the row alone). Returns per row the positions
    written, the RoPE offset of the copied keys (T_row - T_source), and whether the row's whole prompt (its
    first token included) was replaced.
    """
    layers = layer_kv(cache)
    width = mask.shape[1]
    if len(layers) != len(source.keys):
        raise ValueError(f"the cache has {len(layers)} layers, the source {len(source.keys)}: capture the sources "
                         "with the model whose cache is edited")
    if any(k.shape[2] != width for k, _ in layers):
        raise ValueError(f"a cache layer holds {[k.shape[2] for k, _ in layers]} positions for a batch of width "
                         f"{width} (a sliding-window cache?): replace_last needs every position of the prompt")
    device = layers[0][0].device
    chosen = source_of.to(device)
    lengths = mask.to(device).sum(1)  # (rows,)
    src_len = source.lengths.to(device)[chosen.clamp(min=0)]
    m = torch.where(chosen >= 0, torch.minimum(lengths, src_len), 0)  # (rows,)
    from_end = torch.arange(width - 1, -1, -1, device=device)  # (width,) distance of each column from the end
    where = from_end[None] < m[:, None]  # (rows, width)
    src_width = source.keys[0].shape[2]
    column = (src_width - 1 - from_end).clamp(min=0)  # (width,) the source column aligned with each column
    for layer, (keys, values) in enumerate(layers):
        picked = [t.to(device)[chosen.clamp(min=0)][:, :, column] for t in (source.keys[layer], source.values[layer])]
        fill = where[:, None, :, None]  # (rows, 1, width, 1)
        _set_kv(cache, layer, torch.where(fill, picked[0].to(keys.dtype), keys),
                torch.where(fill, picked[1].to(values.dtype), values))
    offset = torch.where(chosen >= 0, lengths - src_len, 0)
    return {"positions_written": m.tolist(), "rope_offset": offset.tolist(),
            "whole_prompt_replaced": ((m == lengths) & (chosen >= 0)).tolist()}
