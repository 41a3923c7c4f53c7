"""Greedy decoding on a static KV cache, each decode step replayed from a CUDA graph.

The eager path (`generation._greedy`, transformers' `generate`) launches every kernel of every decode step from
Python: at batch 40 a 7B model's step costs ~27 ms of launches against ~3 ms of weight reads. Here a decode
step reads and writes only buffers of fixed shape, so it is recorded once as a CUDA graph and replayed:

- the KV cache (`kvcache.StaticKV`) holds `length` slots per row; a call writes its keys and values at the
  slots in `StaticKV.slots`, a device tensor, so the write position moves without the host; a decode step's
  attention reads it once per KV head, and its RMSNorms run fused (`kvcache.decode_kernels`);
- the next token, the position ids, the visible-key mask and the stop flags live in device buffers that the
  step updates in place (`Bucket`); the host looks at the stop flags only every `CHECK_EVERY` steps;
- the harness's interventions stay inside the graph: every hook on the model must declare itself graph-safe
  (`hooks.GraphSafe`); its decode-step tensor ops are recorded with the step, and a later batch whose hooks
  have the same structure replays the same graph after copying its own tensors (patch rows, masks, scales)
  into the ones the graph reads.

Graphs are few: a batch of `n` rows is padded to a bucket of `BATCH_BUCKETS` (extra rows repeat the last
prompt and are dropped), and the cache length is the prompt width plus the new tokens rounded up to
`LENGTH_STEP`. A bucket owns its buffers; its graphs are keyed by the hooks' structure.

Without capture (`capture=False`, the `static` path) the same loop runs step by step: that is how the CPU tests
check it against the eager path. Which path ran, and why not the graph path, is a `PathRecord`.
"""

from __future__ import annotations

import inspect
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.engine.hooks import GraphEdit, graph_edits
from harness.engine.kvcache import StaticKV, decode_kernels, rms_norms
from harness.engine.models import LoadedModel

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
LENGTH_STEP = 32
CHECK_EVERY = 8  # decode steps between looks at the stop flags on the graph path (one host sync each)
MAX_BUCKETS = 3  # buckets (KV caches and their graphs) kept per model
BUCKET_SHARE = 0.3  # of the device's memory that a model's kept buckets may hold
ATTENTION = ("sdpa", "eager")
# generation-config fields whose non-default values change greedy decoding (logits processors, stops)
PLAIN_GREEDY = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                "forced_eos_token_id": (None,), "sequence_bias": (None,), "min_length": (None, 0),
                "min_new_tokens": (None, 0), "encoder_repetition_penalty": (None, 1.0),
                "exponential_decay_length_penalty": (None,), "stop_strings": (None,)}


@dataclass(frozen=True)
class PathRecord:
    """How one batch was generated: `eager` (transformers' generate), `static` (this loop, step by step) or
    `graph` (this loop, decode steps replayed); `reason` says why it is not `graph`."""

    path: str
    reason: str | None = None
    batch_bucket: int | None = None
    length_bucket: int | None = None
    captured: bool = False  # a graph was recorded for this batch (else one was reused, or none was needed)
    replays: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason, "batch_bucket": self.batch_bucket,
                "length_bucket": self.length_bucket, "captured": self.captured, "replays": self.replays}


def batch_bucket(rows: int) -> int:
    """The padded batch size of a batch of `rows` prompts (multiples of 256 beyond the table)."""
    for size in BATCH_BUCKETS:
        if rows <= size:
            return size
    return -(-rows // 256) * 256


def length_bucket(tokens: int) -> int:
    """The KV-cache length for `tokens` positions (prompt width + new tokens), a multiple of LENGTH_STEP."""
    return -(-tokens // LENGTH_STEP) * LENGTH_STEP


@dataclass
class Captured:
    graph: Any  # torch.cuda.CUDAGraph
    tensors: list[dict[str, torch.Tensor]]  # what each edit's recorded ops read, in graph_edits order


@dataclass(frozen=True)
class BucketKey:
    batch: int
    length: int
    additive: bool  # the attention mask is additive (eager attention), not boolean (sdpa)
    stop: tuple[int, ...]
    pad: int


@dataclass
class Bucket:
    """The device buffers of one (batch, length) bucket, and the graphs recorded on them."""

    kv: StaticKV
    seq: torch.Tensor  # (batch, length) token ids: the prompt, then the generated tokens
    visible: torch.Tensor  # (batch, length) which keys each row sees: bool (sdpa) or additive 0 / min (eager)
    positions: torch.Tensor  # (batch, 1) the position id of the token fed at the current step
    slot: torch.Tensor  # (1,) the column of the token fed at the current step
    finished: torch.Tensor  # (batch,) bool: the row has emitted an end-of-sequence token
    stop: torch.Tensor  # (n,) the end-of-sequence ids
    pad: int  # the id written after a row's end of sequence
    norms: list[nn.Module]  # the model's RMSNorm modules, fused inside a decode step
    graphs: dict[tuple[Any, ...], Captured] = field(default_factory=dict)

    @classmethod
    def allocate(cls, lm: LoadedModel, shape: BucketKey) -> Bucket:
        device, dtype = lm.device, lm.model.dtype
        visible = torch.zeros(shape.batch, shape.length, device=device, dtype=dtype if shape.additive else torch.bool)
        return cls(StaticKV(lm.dims, shape.batch, shape.length, dtype, device),
                   torch.zeros(shape.batch, shape.length, dtype=torch.long, device=device), visible,
                   torch.zeros(shape.batch, 1, dtype=torch.long, device=device),
                   torch.zeros(1, dtype=torch.long, device=device),
                   torch.zeros(shape.batch, dtype=torch.bool, device=device),
                   torch.tensor(shape.stop, dtype=torch.long, device=device), shape.pad, rms_norms(lm.model))

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + sum(t.numel() * t.element_size() for t in (self.seq, self.visible))


class Buckets:
    """A model's buckets, least recently used first; the memory pool its graphs share."""

    def __init__(self) -> None:
        self.kept: OrderedDict[BucketKey, Bucket] = OrderedDict()
        self.pool: Any = None
        self.failed: dict[tuple[Any, ...], str] = {}  # hook structures whose step could not be recorded

    def get(self, lm: LoadedModel, key: BucketKey) -> Bucket:
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        self._make_room(lm, key.batch, key.length)
        try:
            bucket = Bucket.allocate(lm, key)
        except torch.cuda.OutOfMemoryError:  # what other buckets hold may be what is missing: once more
            self.kept.clear()
            torch.cuda.empty_cache()
            bucket = Bucket.allocate(lm, key)
        self.kept[key] = bucket
        return bucket

    def _make_room(self, lm: LoadedModel, batch: int, length: int) -> None:
        dims = lm.dims
        needed = 2 * dims.n_layers * batch * dims.n_kv_heads * length * dims.head_dim * lm.model.dtype.itemsize
        limit = (torch.cuda.get_device_properties(lm.device).total_memory * BUCKET_SHARE
                 if lm.device.type == "cuda" else float("inf"))
        while self.kept and (len(self.kept) >= MAX_BUCKETS
                             or sum(b.nbytes for b in self.kept.values()) + needed > limit):
            self.kept.popitem(last=False)


_BUCKETS: weakref.WeakKeyDictionary[nn.Module, Buckets] = weakref.WeakKeyDictionary()


def buckets_of(model: nn.Module) -> Buckets:
    """The buckets kept for `model` (made on first use; dropped with the model, or by `release`)."""
    if model not in _BUCKETS:
        _BUCKETS[model] = Buckets()
    return _BUCKETS[model]


def release(model: nn.Module | None = None) -> None:
    """Drop the buffers and graphs kept for `model` (for every model when None)."""
    if model is None:
        _BUCKETS.clear()
    else:
        _BUCKETS.pop(model, None)


def _cache_argument(model: nn.Module) -> str | None:
    """The keyword the model's forward takes its cache by (transformers renamed it), None if neither."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def unsupported(lm: LoadedModel, use_cache: bool, width: int, max_new_tokens: int) -> str | None:
    """Why this loop cannot run this batch (None: it can). The reason goes into the PathRecord."""
    model, config = lm.model, lm.model.config
    impl = getattr(config, "_attn_implementation", None)
    devices = set(getattr(model, "hf_device_map", {}).values())
    window = getattr(config, "sliding_window", None)
    sliding = window is not None and ("sliding_attention" in (getattr(config, "layer_types", None) or [])
                                      or config.model_type == "mistral")
    generation = getattr(model, "generation_config", None)
    changed = [k for k, plain in PLAIN_GREEDY.items() if getattr(generation, k, None) not in plain]
    params = inspect.signature(model.forward).parameters
    checks = [
        (not use_cache, "use_cache=False re-reads the whole sequence at every step"),
        (len(devices) > 1, f"the model is sharded over {len(devices)} devices"),
        (impl not in ATTENTION, f"attention implementation {impl!r} (supported: {', '.join(ATTENTION)})"),
        (sliding and window is not None and width + max_new_tokens > window,
         f"sliding-window attention ({window}) shorter than the {width + max_new_tokens} positions"),
        (bool(changed), f"generation config sets {changed}, which change greedy decoding"),
        (_cache_argument(model) is None or "logits_to_keep" not in params,
         f"{type(model).__name__}.forward takes no cache or logits_to_keep argument"),
    ]
    return next((why for failed, why in checks if failed), None)


def unsafe_hooks(model: nn.Module) -> str | None:
    """Why the hooks now on `model` cannot be recorded into a graph (None: all of them can)."""
    _, others = graph_edits(model)
    return f"hooks that are not graph-safe: {'; '.join(others[:3])}" if others else None


def _forward(lm: LoadedModel, kv: StaticKV, input_ids: torch.Tensor, mask: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
    """(batch, vocab) logits of each row's last position."""
    cache = {_cache_argument(lm.model) or "past_key_values": kv}
    out = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **cache)
    return out.logits[:, -1]


def _prefill_mask(bucket: Bucket, width: int) -> torch.Tensor:
    """(batch, 1, width, length): causal over the prompt and its padding; a padding row sees itself."""
    length = bucket.visible.shape[1]
    keys = torch.arange(length, device=bucket.seq.device)[None]
    queries = torch.arange(width, device=bucket.seq.device)[:, None]
    seen = bucket.visible.bool() if bucket.visible.dtype == torch.bool else bucket.visible == 0
    allowed = ((keys <= queries)[None] & seen[:, None]) | (keys == queries)[None]
    if bucket.visible.dtype == torch.bool:
        return allowed[:, None]
    return torch.zeros_like(allowed, dtype=bucket.visible.dtype).masked_fill(
        ~allowed, torch.finfo(bucket.visible.dtype).min)[:, None]


def _prefill(lm: LoadedModel, bucket: Bucket, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Run the prompt (hooks see call 0), fill the buffers, write the first new token at column `width`."""
    width = input_ids.shape[1]
    bucket.seq.fill_(0)
    bucket.seq[:, :width] = input_ids
    bucket.visible.fill_(False if bucket.visible.dtype == torch.bool else torch.finfo(bucket.visible.dtype).min)
    bucket.visible[:, :width] = mask.bool() if bucket.visible.dtype == torch.bool else torch.where(
        mask.bool(), 0.0, torch.finfo(bucket.visible.dtype).min)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    bucket.kv.slots = torch.arange(width, device=input_ids.device)
    logits = _forward(lm, bucket.kv, input_ids, _prefill_mask(bucket, width), positions)
    first = logits.argmax(-1)
    bucket.seq[:, width] = first
    bucket.finished.copy_((first[:, None] == bucket.stop[None]).any(-1))
    bucket.positions.copy_(mask.long().sum(1, keepdim=True))
    bucket.slot.fill_(width)
    bucket.kv.slots = bucket.slot


def _step(lm: LoadedModel, bucket: Bucket) -> None:
    """One decode step on the bucket's buffers alone: no host value is read, so it can be recorded."""
    visible = bucket.visible
    visible.index_fill_(1, bucket.slot, True if visible.dtype == torch.bool else 0.0)
    token = bucket.seq.index_select(1, bucket.slot)
    with decode_kernels(bucket.norms):
        logits = _forward(lm, bucket.kv, token, visible[:, None, None, :], bucket.positions)
    chosen = logits.argmax(-1).masked_fill(bucket.finished, bucket.pad)  # finished rows: pad, as generate does
    bucket.seq.index_copy_(1, bucket.slot + 1, chosen[:, None])
    bucket.finished.logical_or_((chosen[:, None] == bucket.stop[None]).any(-1))
    bucket.slot.add_(1)
    bucket.positions.add_(1)


def _structure(edits: list[GraphEdit], tensors: list[dict[str, torch.Tensor]]) -> tuple[Any, ...]:
    return tuple((edit.key, tuple((name, tuple(t.shape), t.dtype, str(t.device)) for name, t in sorted(ts.items())))
                 for edit, ts in zip(edits, tensors, strict=True))


def _warm_up(lm: LoadedModel, step: Callable[[], None]) -> None:
    """One real decode step on a side stream, as capture asks (libraries set up their workspaces)."""
    side = torch.cuda.Stream(device=lm.device)
    side.wait_stream(torch.cuda.current_stream(lm.device))
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream(lm.device).wait_stream(side)


def _record(buckets: Buckets, edits: list[GraphEdit], step: Callable[[], None]) -> Captured:
    """The step recorded (not run) as a graph; the edits' logs are left as they were."""
    counts = [(Counter(e.log.by_seq_len), e.log.edited) for e in edits]
    tensors = [e.safe.tensors() for e in edits]  # read by the recorded ops: kept with the graph
    if buckets.pool is None:
        buckets.pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=buckets.pool):
            step()
    finally:  # recording ran the hooks' Python, not a step: their logs go back to what they were
        for edit, (by_seq_len, edited) in zip(edits, counts, strict=True):
            edit.log.by_seq_len.clear()
            edit.log.by_seq_len.update(by_seq_len)
            edit.log.edited = edited
    return Captured(graph, tensors)


def _graph_for(lm: LoadedModel, bucket: Bucket, buckets: Buckets,
               edits: list[GraphEdit]) -> tuple[Captured | None, bool, str | None]:
    """(graph to replay, whether it was recorded now (one real step ran), why there is none)."""
    tensors = [e.safe.tensors() for e in edits]
    key = _structure(edits, tensors)
    if key in buckets.failed:
        return None, False, buckets.failed[key]
    graph = bucket.graphs.get(key)
    if graph is not None:
        for old, new in zip(graph.tensors, tensors, strict=True):
            for name, tensor in new.items():
                old[name].copy_(tensor)
        return graph, False, None
    _warm_up(lm, lambda: _step(lm, bucket))
    try:
        graph = bucket.graphs[key] = _record(buckets, edits, lambda: _step(lm, bucket))
    except RuntimeError as err:  # an op that cannot be recorded: this structure runs step by step
        why = buckets.failed[key] = f"capture failed: {str(err).splitlines()[0]}"
        return None, True, why
    return graph, True, None


def greedy(lm: LoadedModel, input_ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
           stop_ids: frozenset[int], pad: int, capture: bool) -> tuple[torch.Tensor, PathRecord]:
    """(batch, width + generated) token ids as transformers' greedy `generate` returns them (rows that
    finished are filled with `pad`), and how they were made. `input_ids` is a whole, padded bucket."""
    rows, width = input_ids.shape
    length = length_bucket(width + max_new_tokens)
    buckets = buckets_of(lm.model)
    additive = getattr(lm.model.config, "_attn_implementation", None) == "eager"
    bucket = buckets.get(lm, BucketKey(rows, length, additive, tuple(sorted(stop_ids)), pad))
    edits, _ = graph_edits(lm.model)
    on_device = torch.cuda.device(lm.device) if lm.device.type == "cuda" else nullcontext()
    with torch.no_grad(), on_device:  # streams and graphs are made on the current device: the model's
        _prefill(lm, bucket, input_ids, mask)
        why: str | None = "capture not asked for"
        steps, graph, done = max_new_tokens - 1, None, 0
        if capture and steps > 0:
            graph, warmed, why = _graph_for(lm, bucket, buckets, edits)
            done = int(warmed)
        check_every = CHECK_EVERY if graph is not None else 1
        replays = 0
        while done < steps and not (done % check_every == 0 and bool(bucket.finished.all())):
            if graph is not None:
                graph.graph.replay()
                for edit in edits:
                    edit.count_decode_step()
                replays += 1
            else:
                _step(lm, bucket)
            done += 1
        out = bucket.seq[:, : width + 1 + done].clone()
    captured = graph is not None and replays < done
    return out, PathRecord("graph" if graph is not None else "static", why, rows, length, captured, replays)
