"""Ablations and residual patches as context managers, each a named specialisation of `hooks.edit_site`.

Every manager yields the `CallLog` of its hook (calls counted by sequence length, and how many it edited) and
removes its hooks in `finally`. Each per-call edit is one tensor op on tensors built once, so the hooks cost
next to nothing per decode step and never synchronise with the host. Each declares what it reads at a decode step
(`hooks.GraphSafe`), so the graph decode path (`harness.engine.decode`) records it into its CUDA graph.

Residual patch (claims-spec A.4, W-A3). The source's rows are aligned to the END of the target: the target's
last W positions receive the source's last W rows, W = min(window, T_target, T_src), as published. Inside a
cached `generate` the published hook therefore overwrites the prompt's last W positions at prefill and, at
every decode step (T_current = 1, so W = 1), the new token with the source's LAST row. The patch here is
defined by those positions, so it also gives the same result when generation runs without a cache and every
call re-reads the whole sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from harness.engine.formatting import RAW, PromptFormat
from harness.engine.hooks import MODES, Call, CallLog, GraphSafe, capture, edit_site
from harness.engine.models import Dims, LoadedModel
from harness.engine.runner import encode
from harness.engine.sites import decoder_layers


def _device(model: nn.Module, layer: int) -> torch.device:
    """Where decoder layer `layer` runs (layers of a sharded model sit on different GPUs)."""
    return next(decoder_layers(model)[layer].parameters()).device


@contextmanager
def zero_attention_output(model: nn.Module, layer: int,
                          rows: torch.Tensor | None = None) -> Iterator[CallLog]:
    """The published L31 ablation: the attention module's output is zeroed before the residual add, at
    prefill and at every decode step; the layer's MLP still runs. `rows` (batch,) bool limits it to some
    prompts of the batch (None: all)."""
    chosen = rows.to(_device(model, layer))[:, None, None] if rows is not None else None  # moved once, here

    def zero(out: torch.Tensor, _call: Call) -> torch.Tensor:  # out: (batch, seq, d_model)
        return torch.zeros_like(out) if chosen is None else out.masked_fill(chosen, 0.0)

    safe = GraphSafe(("zero_attention_output", chosen is None),
                     (lambda: {"rows": chosen}) if chosen is not None else dict)
    with edit_site(model, f"blocks.{layer}.attn.out", zero, graph=safe) as log:
        yield log


@contextmanager
def skip_layer(model: nn.Module, layer: int) -> Iterator[CallLog]:
    """The decoder layer returns its input unchanged (it still runs, and still fills its own KV cache)."""
    held: list[torch.Tensor] = []

    def keep(hidden: torch.Tensor, _call: Call) -> None:
        held[:] = [hidden]

    with edit_site(model, f"blocks.{layer}.resid_pre", keep, graph=GraphSafe(("skip_layer_keep",), dict, False)), \
            edit_site(model, f"blocks.{layer}.resid_post", lambda _out, _call: held.pop(),
                      graph=GraphSafe(("skip_layer_return",))) as log:
        yield log


def head_scale(dims: Dims, heads: Sequence[int], factor: float) -> torch.Tensor:
    """(n_heads * head_dim,) multipliers of the o_proj input: `factor` on each listed query head's slice."""
    bad = [h for h in heads if not 0 <= h < dims.n_heads]
    if bad or not heads:
        raise ValueError(f"query heads {list(heads)} invalid: the model has {dims.n_heads} query heads "
                         f"(0-{dims.n_heads - 1}; {dims.n_kv_heads} KV heads); list heads in that range")
    scale = torch.ones(dims.n_heads, dims.head_dim)  # (head, head_dim)
    scale[list(heads)] = factor
    return scale.flatten()


@contextmanager
def scale_heads(model: nn.Module, layer: int, heads: Sequence[int], factor: float) -> Iterator[CallLog]:
    """Scale query heads' contributions by `factor` (0.0 ablates) through slices of the o_proj input.

    Query heads are counted per query, never per KV head: under GQA the o_proj input holds n_heads slices of
    head_dim, both read from the model config.
    """
    flat = head_scale(Dims.from_config(model.config), heads, factor)
    cast: dict[str, torch.Tensor] = {}

    def scale(z: torch.Tensor, _call: Call) -> torch.Tensor:  # z: (batch, seq, n_heads * head_dim)
        if "scale" not in cast:
            cast["scale"] = flat.to(z.device, z.dtype)
        return z * cast["scale"]

    with edit_site(model, f"blocks.{layer}.attn.z", scale,
                   graph=GraphSafe(("scale_heads",), lambda: {"scale": cast["scale"]})) as log:
        yield log


@dataclass(frozen=True)
class PatchSource:
    """Source rows for a residual patch, right-aligned: row j of a source is its (window - j)-th last token.

    `vectors` is (n_sources, window, d_model); a source with fewer than `window` tokens has zeros in front.
    `available` (n_sources,) is min(window, T_src). One source serves every prompt; n sources serve n prompts.
    """

    vectors: torch.Tensor
    available: torch.Tensor

    @classmethod
    def from_rows(cls, hidden: torch.Tensor, window: int) -> PatchSource:
        """One source from a (T_src, d_model) layer output captured on another prompt."""
        if hidden.ndim != 2 or hidden.shape[0] < 1:
            raise ValueError(f"source must be (T_src, d_model) with T_src >= 1, got {tuple(hidden.shape)}")
        rows = hidden[-window:]
        pad = hidden.new_zeros(window - rows.shape[0], hidden.shape[1])
        return cls(torch.cat([pad, rows])[None], torch.tensor([rows.shape[0]], device=hidden.device))

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def select(self, rows: slice | torch.Tensor) -> PatchSource:
        """The sources of some prompts, by slice or index tensor (a single source serves them all)."""
        return self if len(self) == 1 else PatchSource(self.vectors[rows], self.available[rows])

    def norm_matched_random(self, seed: int) -> PatchSource:
        """Gaussian directions with each row's norm equal to the source row's norm (seeded, CPU generator)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(self.vectors.shape, generator=gen, dtype=torch.float32)
        noise = noise / noise.norm(dim=-1, keepdim=True)
        norms = self.vectors.float().norm(dim=-1, keepdim=True).cpu()
        return PatchSource((noise * norms).to(self.vectors.device, self.vectors.dtype), self.available)


@dataclass(frozen=True)
class _Plan:
    """Everything a patch writes, built once at prefill for a (batch, width) left-padded prompt batch."""

    where: torch.Tensor  # (batch, width, 1) bool: the prompt positions to overwrite
    aligned: torch.Tensor  # (batch or 1, width, d_model): the source row aligned to each prompt position
    last: torch.Tensor  # (batch, 1, d_model): the source's last row, written at every generated position
    chosen: torch.Tensor  # (batch, 1, 1) bool: the rows this patch writes
    width: int


def _plan(source: PatchSource, mask: torch.Tensor, window: int, include_position_0: bool,
          rows: torch.Tensor | None, like: torch.Tensor) -> _Plan:
    batch, width = mask.shape
    if len(source) not in (1, batch):
        raise ValueError(f"{len(source)} patch sources for a batch of {batch} prompts; give one source "
                         "for all prompts or one per prompt")
    device = like.device
    lengths = mask.to(device).sum(1, keepdim=True)  # (batch, 1) true prompt lengths
    from_end = torch.arange(width - 1, -1, -1, device=device)[None]  # (1, width): distance from the end
    span = torch.minimum(lengths.clamp(max=window), source.available.to(device)[:, None])  # W per row
    where = from_end < span
    if not include_position_0:
        where &= from_end != lengths - 1  # the first real token of each (left-padded) row
    if rows is not None:
        where &= rows[:, None]
    index = (source.vectors.shape[1] - 1 - from_end[0]).clamp(min=0)  # (width,) source row per position
    vectors = source.vectors.to(device, like.dtype)
    last = vectors[:, -1:].expand(batch, 1, -1).contiguous()
    chosen = (rows if rows is not None else torch.ones(batch, dtype=torch.bool, device=device))[:, None, None]
    return _Plan(where[..., None], vectors[:, index], last, chosen, width)


@contextmanager
def patch_residual(model: nn.Module, layer: int, source: torch.Tensor | PatchSource, *,
                   mode: str = "all_calls", window: int = 16, include_position_0: bool = True,
                   prompt_mask: torch.Tensor | None = None,
                   rows: torch.Tensor | None = None) -> Iterator[CallLog]:
    """Overwrite decoder layer `layer`'s output with source rows (see the module docstring).

    `source` is a (T_src, d_model) layer output or a `PatchSource`; `prompt_mask` is the (batch, width)
    attention mask of a left-padded prompt batch (None: no padding). Modes: `all_calls` (published: prefill
    and every decode step), `prefill_only` (prompt positions only), `decode_only` (generated positions only).
    With `include_position_0=False` the first real token of each row is never written. `rows` (batch,) bool
    limits the patch to some prompts of the batch (None: all), so one generate call can patch several layers.
    """
    if mode not in MODES:
        raise ValueError(f"patch mode {mode!r}; allowed: {', '.join(MODES)}")
    if window < 1:
        raise ValueError(f"window={window}; the published window is 16, use a positive size")
    src = source if isinstance(source, PatchSource) else PatchSource.from_rows(source, window)
    rows = rows.to(_device(model, layer)) if rows is not None else None  # before generate, not inside a forward
    prompt, generated = mode != "decode_only", mode != "prefill_only"
    state: dict[str, _Plan] = {}

    def patch(out: torch.Tensor, call: Call) -> torch.Tensor | None:  # out: (batch, seq, d_model)
        if call.index == 0:
            mask = prompt_mask if prompt_mask is not None else out.new_ones(out.shape[:2], dtype=torch.long)
            if mask.shape != out.shape[:2]:
                raise ValueError(f"prompt_mask {tuple(mask.shape)} does not match the prefill "
                                 f"{tuple(out.shape[:2])}; pass the mask of the batch being generated")
            state["plan"] = _plan(src, mask, window, include_position_0, rows, out)
            return torch.where(state["plan"].where, state["plan"].aligned, out) if prompt else None
        plan = state["plan"]
        if out.shape[1] == 1:  # a cached decode step: the new token is a generated position
            return torch.where(plan.chosen, plan.last, out) if generated else None
        return _uncached(out, plan, prompt, generated)

    def decode_tensors() -> dict[str, torch.Tensor]:
        return {"rows": state["plan"].chosen, "last": state["plan"].last} if generated else {}

    safe = GraphSafe(("patch_residual", generated), decode_tensors, generated)
    with edit_site(model, f"blocks.{layer}.resid_post", patch, graph=safe) as log:
        yield log


def _uncached(out: torch.Tensor, plan: _Plan, prompt: bool, generated: bool) -> torch.Tensor:
    """A call that re-reads prompt + generated tokens (use_cache=False): patch both parts as a cache would."""
    if out.shape[1] < plan.width or out.shape[0] != plan.chosen.shape[0]:
        raise ValueError(f"a call of shape {tuple(out.shape[:2])} after a prefill of {plan.chosen.shape[0]} "
                         f"x {plan.width}: enter patch_residual once per generate call")
    head, tail = out[:, : plan.width], out[:, plan.width :]
    if prompt:
        head = torch.where(plan.where, plan.aligned, head)
    if generated:
        tail = torch.where(plan.chosen, plan.last, tail)
    return torch.cat([head, tail], dim=1)


@dataclass(frozen=True)
class SourceRun:
    """Per source prompt: the right-aligned last-`window` rows at each layer and its own argmax next token."""

    sources: dict[int, PatchSource]  # layer -> (n_prompts, window, d_model)
    next_token: list[int]
    lengths: list[int]


def _last_rows(hidden: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """(batch, seq, d) right padded -> (batch, window, d): each row's last `window` rows, right-aligned."""
    offsets = torch.arange(window, device=hidden.device)[None] - window  # (1, window): -window .. -1
    index = lengths.to(hidden.device)[:, None] + offsets  # (batch, window); lengths may sit on another GPU
    valid = (index >= 0).to(hidden.dtype)[..., None]
    rows = hidden.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
    return rows * valid


def capture_sources(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], window: int,
                    batch_size: int = 32, fmt: PromptFormat = RAW) -> SourceRun:
    """Run the source prompts unpatched (right padded, batched): each layer's last rows, and the argmax."""
    kept: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    tokens: list[torch.Tensor] = []
    lengths: list[int] = []
    for start in range(0, len(prompts), batch_size):
        enc = encode(lm, prompts[start : start + batch_size], fmt)
        last = torch.tensor(enc.lengths, device=lm.device)
        sites = [f"blocks.{layer}.resid_post" for layer in layers]
        reduce = partial(_last_rows, lengths=last, window=window)
        with torch.no_grad(), capture(lm.model, sites, reduce) as acts:
            out = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
        logits = out.logits  # (batch, seq, vocab)
        picks = (last - 1).to(logits.device)
        tokens.append(logits[torch.arange(len(last), device=logits.device), picks].argmax(-1))
        for layer, site in zip(layers, sites, strict=True):
            kept[layer].extend(acts[site])
        lengths.extend(enc.lengths)
    available = torch.tensor(lengths, device=lm.device).clamp(max=window)
    return SourceRun({layer: PatchSource(torch.cat(v), available) for layer, v in kept.items()},
                     torch.cat(tokens).tolist(), lengths)

