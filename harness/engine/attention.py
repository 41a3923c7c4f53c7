"""Per-layer, per-head attention entropy computed inside the attention forward, without keeping patterns.

How: `attention_entropy(model, layers)` registers a uniquely named function with transformers'
`AttentionInterface` (and the same name with `AttentionMaskInterface`, mapped to the model's own mask
builder) and points `model.config._attn_implementation` at it. Each layer's call returns what the model's own
attention (sdpa, or eager where a family needs it: gemma2's logit soft-capping) returns, so logits are
unchanged; for requested layers (`module.layer_idx`) it also recomputes softmax(cap(q k^T * scaling) + mask)
in float32 from the query and un-repeated key states (cap: the `softcap` the layer passes, if any,
c * tanh(x / c)), reduces each query row
to three numbers and drops the probabilities there: only (layer, 3, batch, head, q) outlives a layer. Long
inputs go in blocks of query rows (float32 temporaries under `chunk_bytes`). The reduction is a dozen small
kernels, more CPU than GPU time at the published sizes, so on CUDA it is captured once per input shape as a
CUDA graph and replayed per layer. `finally` restores the config and registries and frees the graphs.

Masks, padding, GQA: the mask is the one sdpa gets: None (causal), boolean (batch, 1, q, k) with True =
attend, or (transformers 4.x) additive float; it becomes one float32 bias per forward, so padding, causality
and sliding windows are the model's own. A token is valid when the mask lets it attend to itself (the
diagonal); padding must be on the right (left padding raises); T_b = valid tokens of prompt b and q is the
position in the prompt. Padded queries are left out of every mean; padded keys get probability 0. The query
heads sharing a key head (n_heads // n_kv_heads, from the tensor shapes) are multiplied by it as one block,
which equals repeating the key heads: head h uses key head h // groups. Full forwards only (no KV cache).

Definitions (layer, prompt b, head h; p = attention row of query q):
- published: H_q = -sum_k p'_k ln p'_k, p' = (p + 1e-8) / (1 + T_b 1e-8) over all T_b keys (future keys at
  p = 0 included); the mean of H_q over q = 0 .. T_b - 1. `published_sum` (over q) and `n_tokens` (T_b)
  pool it token-weighted over prompts, as aggregation (b) does.
- normalised: for q >= 2, drop key 0 (BOS where there is one), renormalise over keys 1..q (no epsilon):
  G_q = H'_q / ln(q), ln(q) being the largest entropy over q keys, so G_q is in [0, 1] and 1 for uniform
  attention at every q (dividing by ln(q + 1) would leave ln(q)/ln(q + 1), a length trend). The mean over
  q = 2 .. T_b - 1, NaN under 3 tokens; `normalised_sum` and `n_normalised` pool it.
- bos_mass: the mean over q = 0 .. T_b - 1 of p_q[0].
- rows: `pop(rows=...)` (batch, q) restricts every mean over q to the rows marked True (e.g. the user-content
  tokens of a chat-templated prompt); keys are untouched. `n_rows` counts the rows averaged (published, bos_mass)
  and `n_normalised` those with q >= 2 among them. Without `rows`, every valid row is averaged (n_rows = T_b).

Limitations: right padding; no cached prefix; ln(q) is the maximum only while keys 1..q are all visible
(not past a sliding window); dropout-free probabilities (eval mode).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

try:  # transformers >= 4.53 builds masks through this registry
    from transformers.masking_utils import AttentionMaskInterface as _MaskInterface

    _MASK_REGISTRY: dict[str, Any] | None = _MaskInterface._global_mapping
except ImportError:  # pragma: no cover - transformers 4.48 - 4.52 build an additive mask for custom names
    _MASK_REGISTRY = None

VARIANTS = ("published", "normalised")
EPS = 1e-8
DEFAULT_CHUNK_BYTES = 64 * 2**20
_GRAPH_MAX_BYTES = 64 * 2**20  # CUDA graphs only for layers whose buffers fit in this
_BOS, _PUBLISHED, _NOBOS = 0, 1, 2  # rows of the per-query statistics
_NAME_PREFIX = "harness_entropy"
_names = itertools.count()
_FLOAT_FIELDS = ("published", "published_sum", "normalised", "normalised_sum", "bos_mass")
WRAPPED = ("sdpa", "eager")  # the attention implementations the engine can stand in for


def eager_forward(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The eager attention function of a module's own modeling file (each family defines its own)."""
    found = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if found is None:
        raise TypeError(f"{type(module).__name__} ({type(module).__module__}) defines no eager_attention_forward; "
                        "load the model with sdpa attention")
    return found


@dataclass(frozen=True)
class EntropyResult:
    """Entropies of one forward. Per-head fields are (layer, batch, head) float32; layer i is `layers[i]`."""

    layers: tuple[int, ...]
    bos_mass: torch.Tensor
    n_tokens: torch.Tensor  # (batch,) T_b
    n_normalised: torch.Tensor  # (batch,) queries with q >= 2 (among the scored rows)
    n_rows: torch.Tensor | None = None  # (batch,) query rows averaged; None: all T_b
    published: torch.Tensor | None = None
    published_sum: torch.Tensor | None = None
    normalised: torch.Tensor | None = None
    normalised_sum: torch.Tensor | None = None

    @property
    def n_heads(self) -> int:
        return int(self.bos_mass.shape[-1])

    def index(self, layer: int) -> int:
        """The position of `layer` along the first axis of every per-head field."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not computed; computed layers: {list(self.layers)}")
        return self.layers.index(layer)

    def cpu(self) -> EntropyResult:
        """The same result on the CPU, moved in one transfer for all layers and fields."""
        present = [name for name in _FLOAT_FIELDS if getattr(self, name) is not None]
        packed = torch.stack([getattr(self, name) for name in present]).cpu()  # (field, layer, batch, head)
        rows = self.n_tokens if self.n_rows is None else self.n_rows
        counts = torch.stack([self.n_tokens, self.n_normalised, rows]).cpu()  # (3, batch)
        moved: dict[str, Any] = dict(zip(present, packed.unbind(0), strict=True))
        return replace(self, n_tokens=counts[0], n_normalised=counts[1], n_rows=counts[2], **moved)


def check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(variants))
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise ValueError(f"entropy variants {list(chosen)} invalid; choose one or more of {list(VARIANTS)}")
    return chosen


def mask_bias(mask: torch.Tensor | None, batch: int, length: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive float32 bias (batch|1, 1, q, k) and valid tokens (batch, k) of a square sdpa mask."""
    neg = torch.finfo(torch.float32).min
    if mask is None:  # sdpa's is_causal path: no padding
        causal = torch.full((length, length), neg, device=device).triu(1)
        return causal[None, None], torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (length, length):
        raise ValueError(f"attention mask has shape {tuple(mask.shape)}, expected (batch, 1, {length}, "
                         f"{length}): attention_entropy needs a full forward without a cached prefix")
    if mask.dtype == torch.bool:
        bias = torch.full(mask.shape, neg, dtype=torch.float32, device=mask.device).masked_fill_(mask, 0.0)
        valid = mask[:, 0].diagonal(dim1=-2, dim2=-1)  # (batch, k)
    else:
        bias = mask.to(torch.float32)
        valid = mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0
    valid = valid.expand(batch, length)
    if not bool((valid[:, 1:] <= valid[:, :-1]).all()):
        raise ValueError("attention_entropy needs right padding (tokens, then padding), but the mask has "
                         "padding before a token: set tokenizer.padding_side = 'right'")
    return bias, valid


def grouped(query: torch.Tensor, n_kv: int) -> torch.Tensor:
    """A view of query (batch, head, q, dim) as (batch, kv, q, group, dim): head h = kv * group + g."""
    batch, n_heads, n_q, dim = query.shape
    if n_heads % n_kv:
        raise ValueError(f"query has {n_heads} heads and key {n_kv}: query heads must be a multiple of those")
    return query.view(batch, n_kv, n_heads // n_kv, n_q, dim).transpose(2, 3)


def to_blocks(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 copies laid out for a matmul per key head: (batch, kv, q, group, dim), (batch, kv, k, dim)."""
    contiguous = torch.contiguous_format
    return (grouped(query, key.shape[1]).to(torch.float32, memory_format=contiguous),
            key.to(torch.float32, memory_format=contiguous))


def _row_shape(query: torch.Tensor, key: torch.Tensor) -> tuple[int, ...]:
    """One layer's per-query statistics, (3, batch, kv, q, group), for query (batch, head, q, dim)."""
    batch, n_heads, n_q, _ = query.shape
    return (3, batch, key.shape[1], n_q, n_heads // key.shape[1])


def rows_per_block(query: torch.Tensor, n_keys: int, chunk_bytes: int) -> int:
    """Query rows per block so that two float32 (batch, head, rows, k) temporaries fit in chunk_bytes."""
    return max(1, chunk_bytes // (2 * 4 * query.shape[0] * query.shape[1] * n_keys))


def layer_rows(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, scaling: float,
               variants: tuple[str, ...], chunk_bytes: int, softcap: float | None = None) -> None:
    """Per-query statistics of one layer from query (batch, head, q, dim) and key (batch, kv, k, dim)."""
    q_blocks, k_blocks = to_blocks(query, key)
    step = rows_per_block(query, key.shape[2], chunk_bytes)
    row_statistics(q_blocks, k_blocks, bias, out, scaling, variants, step, softcap)


def row_statistics(q_blocks: torch.Tensor, k_blocks: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   scaling: float, variants: tuple[str, ...], step: int, softcap: float | None = None) -> None:
    """Statistics of each query row of softmax(cap(q k^T * scaling) + bias) into out (3, batch, kv, q, group).

    Row _BOS: p[0]; row _PUBLISHED: sum_k entr(p_k + eps) over all keys; row _NOBOS: the entropy over keys
    >= 1 after renormalising. q_blocks and k_blocks come from `to_blocks`; bias is (batch|1, 1, q, k).
    """
    batch, n_kv, n_q, groups, dim = q_blocks.shape
    n_keys = k_blocks.shape[2]
    keys_t = k_blocks.transpose(-1, -2)  # (batch, kv, dim, k)
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        n_rows = stop - start
        # (batch, kv, q, group, dim) -> (batch, kv, q * group, dim): one matmul per key head
        rows = q_blocks[:, :, start:stop].reshape(batch, n_kv, n_rows * groups, dim)
        scores = torch.matmul(rows, keys_t).view(batch, n_kv, n_rows, groups, n_keys)  # (b, kv, q, group, k)
        if softcap is not None:  # gemma2: logits capped at +-softcap before the mask
            scores = torch.tanh(scores * (scaling / softcap)) * softcap
            scores = scores + bias[:, :, start:stop].unsqueeze(3)
        else:
            scores = torch.add(bias[:, :, start:stop].unsqueeze(3), scores, alpha=scaling)  # scale + mask
        _reduce_block(scores, out[:, :, :, start:stop], variants)
        del scores


def _reduce_block(scores: torch.Tensor, out: torch.Tensor, variants: tuple[str, ...]) -> None:
    """Per-row statistics of masked scores (batch, kv, q, group, k) into out (3, batch, kv, q, group)."""
    if "normalised" in variants:
        if scores.shape[-1] > 1:
            rest = torch.softmax(scores[..., 1:], dim=-1)  # (batch, kv, q, group, k - 1)
            torch.sum(torch.special.entr(rest, out=rest), dim=-1, out=out[_NOBOS])
            del rest
        else:
            out[_NOBOS].zero_()
    probs = torch.softmax(scores, dim=-1)  # (batch, kv, q, group, k)
    out[_BOS].copy_(probs[..., 0])
    if "published" in variants:
        smoothed = probs.add_(EPS)
        torch.sum(torch.special.entr(smoothed, out=smoothed), dim=-1, out=out[_PUBLISHED])


_Rows = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (query, key, bias, out)
_Forward = tuple[tuple[torch.Size, torch.Size], tuple[torch.Tensor, ...], _Rows]  # shapes, layer slots, run
_capture_streams: dict[torch.device, torch.cuda.Stream] = {}


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for graph capture, reused so that cuBLAS sets up its workspace once."""
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device=device)
    return _capture_streams[device]


class _GraphedRows:
    """`row_statistics` for one input shape as a CUDA graph: four launches per layer instead of a dozen."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor, run: _Rows) -> None:
        self.query, self.key = to_blocks(query, key)
        batch, _, n_q, _ = query.shape
        self.bias = query.new_zeros((batch, 1, n_q, key.shape[2]), dtype=torch.float32)
        self.bias_source: torch.Tensor | None = None
        self.out = query.new_empty(_row_shape(query, key), dtype=torch.float32)
        self.graph = torch.cuda.CUDAGraph()
        stream = _capture_stream(query.device)
        stream.wait_stream(torch.cuda.current_stream(query.device))
        with torch.cuda.stream(stream):  # capture_begin directly: torch.cuda.graph() would empty the cache
            run(self.query, self.key, self.bias, self.out)  # warm-up on the same stream, outside the capture
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                run(self.query, self.key, self.bias, self.out)
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream(query.device).wait_stream(stream)

    def __call__(self, query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
        self.query.copy_(grouped(query, key.shape[1]))  # casts to float32 in the same pass
        self.key.copy_(key)
        if bias is not self.bias_source:
            self.bias.copy_(bias)
            self.bias_source = bias
        self.graph.replay()
        out.copy_(self.out)


def scored_rows(valid: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(batch, q) rows to average: the valid ones, restricted to `rows` where given (each prompt keeps >= 1)."""
    if rows is None:
        return valid
    if rows.shape != valid.shape:
        raise ValueError(f"rows has shape {tuple(rows.shape)} but the forward had {tuple(valid.shape)} "
                         "(batch, q); pass one flag per token of the encoded batch")
    scored = valid & rows.to(device=valid.device, dtype=torch.bool)
    empty = torch.nonzero(scored.sum(-1) == 0).flatten().tolist()
    if empty:
        raise ValueError(f"prompts {empty} of the batch have no scored row; mark >= 1 real token per prompt")
    return scored


def reduce_rows(stats: torch.Tensor, valid: torch.Tensor, layers: tuple[int, ...], variants: tuple[str, ...],
                rows: torch.Tensor | None = None) -> EntropyResult:
    """Pool per-query statistics (layer, 3, batch, kv, q, group) into per-prompt, per-head values; `rows`
    (batch, q) limits the means to those query rows (keys are unaffected)."""
    n_layers, _, batch, n_kv, length, groups = stats.shape
    # (layer, 3, batch, kv, group, q) -> (layer, 3, batch, head, q); head h uses key head h // groups
    per_row = stats.transpose(-1, -2).reshape(n_layers, 3, batch, n_kv * groups, length)
    scored = scored_rows(valid, rows)
    n_tokens, n_rows = valid.sum(-1), scored.sum(-1)  # (batch,)
    weight = scored.to(torch.float32)[:, None, :]  # (batch, 1, q)
    position = torch.arange(length, device=valid.device)
    late = scored & (position >= 2)  # (batch, q)
    n_late = late.sum(-1)
    out: dict[str, Any] = {"bos_mass": (per_row[:, _BOS] * weight).sum(-1) / n_rows[:, None]}
    if "published" in variants:
        tokens = n_tokens.to(torch.float32)[:, None, None]  # (batch, 1, 1): keys per row, eps over all T_b
        z = 1 + tokens * EPS
        entropy = torch.log(z) + (per_row[:, _PUBLISHED] + (length - tokens) * (EPS * math.log(EPS))) / z
        out["published_sum"] = torch.where(scored[:, None, :], entropy, 0.0).sum(-1)  # (layer, batch, head)
        out["published"] = out["published_sum"] / n_rows[:, None]
    if "normalised" in variants:
        inv_log = 1 / torch.log(position.clamp(min=2).to(torch.float32))  # (q,)
        out["normalised_sum"] = torch.where(late[:, None, :], per_row[:, _NOBOS] * inv_log, 0.0).sum(-1)
        out["normalised"] = out["normalised_sum"] / n_late[:, None]
    return EntropyResult(layers=layers, n_tokens=n_tokens, n_normalised=n_late, n_rows=n_rows, **out)


def head_entropy(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 scaling: float | None = None, variants: Iterable[str] = VARIANTS,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> EntropyResult:
    """Entropies of one attention layer from query (batch, head, q, dim) and key (batch, kv_head, q, dim).

    `attention_mask` is sdpa-style: None (causal) or boolean (batch, 1, q, q). The result's layer is 0.
    """
    chosen = check_variants(variants)
    bias, valid = mask_bias(attention_mask, query.shape[0], key.shape[2], query.device)
    out = query.new_empty((1, *_row_shape(query, key)), dtype=torch.float32)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.no_grad():
        layer_rows(query, key, bias, out[0], scale, chosen, chunk_bytes)
    return reduce_rows(out, valid, (0,), chosen)


class AttentionEntropy:
    """The engine behind `attention_entropy`: computes the requested layers in each forward; `pop()` them."""

    def __init__(self, model: torch.nn.Module, layers: Iterable[int] | None = None,
                 variants: Iterable[str] = VARIANTS, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 cuda_graphs: bool = True) -> None:
        config: Any = getattr(model, "config", None)
        if config is None or not hasattr(config, "num_hidden_layers"):
            raise TypeError(f"attention_entropy needs a transformers causal LM, got {type(model).__name__}")
        self.config = config
        n_layers = int(self.config.num_hidden_layers)
        chosen = tuple(range(n_layers)) if layers is None else tuple(sorted(set(layers)))
        bad = [layer for layer in chosen if not 0 <= layer < n_layers]
        if bad or not chosen:
            raise ValueError(f"layers {bad or '[]'} invalid: the model has {n_layers} layers "
                             f"(0-{n_layers - 1})")
        self.layers, self.variants = chosen, check_variants(variants)
        self.chunk_bytes, self.cuda_graphs = chunk_bytes, cuda_graphs
        self.name = f"{_NAME_PREFIX}_{next(_names)}"
        self._slot = {layer: i for i, layer in enumerate(chosen)}
        self._done: set[int] = set()
        self._stats: torch.Tensor | None = None  # (layer, 3, batch, kv, q, group) of the current forward
        self._graphs: dict[tuple[Any, ...], _GraphedRows] = {}
        self._forward: _Forward | None = None  # set at the first requested layer of each forward
        self._mask: tuple[torch.Tensor | None, tuple[int, int], torch.Tensor, torch.Tensor] | None = None
        self._saved: str | None = None

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """The registered attention function: the model's own attention output, plus the row statistics of
        requested layers."""
        layer = getattr(module, "layer_idx", None)
        if layer in self._slot:
            with torch.no_grad():
                self._record(int(layer), query, key, attention_mask, kwargs.get("scaling"), kwargs.get("softcap"))
        attend = sdpa_attention_forward if self._saved == "sdpa" else eager_forward(module)
        output, _ = attend(module, query, key, value, attention_mask, **kwargs)
        return output, None

    def _bias(self, mask: torch.Tensor | None, batch: int, length: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias and valid tokens of `mask`, converted once per forward (layers share one mask object)."""
        if self._mask is None or self._mask[0] is not mask or self._mask[1] != (batch, length):
            self._mask = (mask, (batch, length), *mask_bias(mask, batch, length, device))
        return self._mask[2], self._mask[3]

    def _record(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                scaling: float | None, softcap: float | None = None) -> None:
        if layer in self._done:
            raise RuntimeError(f"layer {layer} ran twice before pop(): call pop() after each forward "
                               "(generate() and cached decoding are not supported)")
        if key.shape[2] != query.shape[2]:
            raise ValueError(f"layer {layer}: {query.shape[2]} queries but {key.shape[2]} keys; attention_"
                             "entropy needs a full forward without a cached prefix (no generate())")
        if self._forward is None:  # the first requested layer of this forward
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            self._forward = self._start(query, key, scale, softcap)
        shapes, slots, run = self._forward
        if shapes != (query.shape, key.shape):
            raise RuntimeError(f"layer {layer}: query {tuple(query.shape)} and key {tuple(key.shape)} differ "
                               f"from earlier layers' {shapes}: call pop() after each forward")
        bias, _ = self._bias(mask, query.shape[0], key.shape[2], query.device)
        run(query, key, bias, slots[self._slot[layer]])
        self._done.add(layer)

    def _start(self, query: torch.Tensor, key: torch.Tensor, scale: float, softcap: float | None) -> _Forward:
        """Allocate this forward's statistics and pick how layers compute them (all layers share shapes)."""
        self._stats = query.new_empty((len(self.layers), *_row_shape(query, key)), dtype=torch.float32)
        variants, chunk_bytes = self.variants, self.chunk_bytes

        def eager(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
            layer_rows(q, k, bias, out, scale, variants, chunk_bytes, softcap)

        graphed = self._graphed(query, key, scale, softcap)
        return (query.shape, key.shape), self._stats.unbind(0), graphed or eager

    def _graphed(self, query: torch.Tensor, key: torch.Tensor, scale: float, softcap: float | None
                 ) -> _GraphedRows | None:
        """A CUDA graph where launches dominate (small layers in one block of rows); None otherwise."""
        if not (self.cuda_graphs and query.is_cuda) or torch.cuda.is_current_stream_capturing():
            return None
        n_keys, variants = key.shape[2], self.variants
        footprint = 4 * (query.numel() + key.numel() + 3 * query.shape[0] * query.shape[1] * n_keys ** 2)
        if rows_per_block(query, n_keys, self.chunk_bytes) < n_keys or footprint > _GRAPH_MAX_BYTES:
            return None
        signature = (tuple(query.shape), tuple(key.shape), scale, softcap, query.device)
        if signature not in self._graphs:

            def run(q_blocks: torch.Tensor, k_blocks: torch.Tensor, b: torch.Tensor, o: torch.Tensor) -> None:
                row_statistics(q_blocks, k_blocks, b, o, scale, variants, n_keys, softcap)

            self._graphs[signature] = _GraphedRows(query, key, run)
        return self._graphs[signature]

    def pop(self, rows: torch.Tensor | None = None) -> EntropyResult:
        """The entropies of the last forward, on its device; clears them for the next forward. `rows`
        (batch, q) boolean: average only those query rows (default: every real token)."""
        missing = [layer for layer in self.layers if layer not in self._done]
        if missing or self._stats is None or self._mask is None:
            raise RuntimeError(f"no attention was computed for layers {missing}: run one model forward "
                               "inside the `with attention_entropy(...)` block before pop()")
        try:
            result = reduce_rows(self._stats, self._mask[3], self.layers, self.variants, rows)
        finally:
            self._clear()
        return result

    def _clear(self) -> None:
        self._done.clear()
        self._stats = self._mask = self._forward = None

    def install(self) -> None:
        current = self.config._attn_implementation
        if isinstance(current, str) and current.startswith(_NAME_PREFIX):
            raise RuntimeError("attention_entropy is already active on this model and blocks do not nest; "
                               "request all the layers you need in one block")
        if current not in WRAPPED:
            raise ValueError(f"attention_entropy wraps sdpa or eager attention, but the model uses {current!r}: "
                             "call model.set_attn_implementation('sdpa') first (harness.engine.models.load "
                             "gives sdpa, or eager where the family needs it)")
        AttentionInterface.register(self.name, self)
        if _MASK_REGISTRY is not None:
            _MASK_REGISTRY[self.name] = _MASK_REGISTRY[current]
        self._saved = current
        self.config._attn_implementation = self.name

    def remove(self) -> None:
        if self._saved is not None:
            self.config._attn_implementation = self._saved
            self._saved = None
        AttentionInterface._global_mapping.pop(self.name, None)
        if _MASK_REGISTRY is not None:
            _MASK_REGISTRY.pop(self.name, None)
        self._clear()
        self._graphs.clear()


@contextmanager
def attention_entropy(model: torch.nn.Module, layers: Iterable[int] | None = None,
                      variants: Iterable[str] = VARIANTS, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      cuda_graphs: bool = True) -> Iterator[AttentionEntropy]:
    """Compute the attention entropies of `layers` (default: all) in each forward run inside the block.

    Call `pop()` after each forward. Open one block around a loop of batches: on CUDA each block captures
    one graph per input shape (`cuda_graphs=False` computes every layer eagerly instead).

    >>> with attention_entropy(model, layers=[0, 5]) as ent:
    ...     model(input_ids=ids, attention_mask=mask)
    ...     result = ent.pop().cpu()  # EntropyResult; result.published is (layer, batch, head)
    """
    engine = AttentionEntropy(model, layers, variants, chunk_bytes=chunk_bytes, cuda_graphs=cuda_graphs)
    try:
        engine.install()
        yield engine
    finally:
        engine.remove()
