"""Hooks as context managers: capture, edit and count activations at named sites.

Every manager removes its hooks in `finally`, whatever happens inside the block. `edit_site` is the one
generic routine; capture, patches and ablations are named specialisations of it.

An edit that passes `graph=GraphSafe(...)` declares that at a decode step its function does nothing but tensor
operations on the site's tensor and on the tensors `GraphSafe.tensors()` returns, decided by `GraphSafe.key`
alone: such an edit can be recorded into a CUDA graph and replayed (`harness.engine.decode`). A hook without
that declaration (a capture, which keeps a tensor on the host side per call) keeps generation on the eager path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.engine.sites import Site, resolve

# fn(tensor, call) -> replacement tensor, or None to leave the tensor as it is
EditFn = Callable[[torch.Tensor, "Call"], torch.Tensor | None]
MODES = ("all_calls", "prefill_only", "decode_only")


@dataclass(frozen=True)
class GraphSafe:
    """What a decode-step edit reads and does, for replay in a CUDA graph.

    `key` names everything the edit's decode-step code depends on besides tensor contents (its kind and
    options); `tensors()` returns the tensors it reads at a decode step, available once the prefill call has
    run. Two edits with equal keys and tensors of equal shapes record the same graph: replaying it for the
    second means copying the second's tensors into the first's. `edits_decode`: the function returns a new
    tensor at a decode step (counted as an edit in the CallLog).
    """

    key: tuple[Any, ...]
    tensors: Callable[[], dict[str, torch.Tensor]] = dict
    edits_decode: bool = True


@dataclass(frozen=True)
class GraphEdit:
    """One graph-safe hook on a model: where it sits, what it declared and the CallLog it keeps."""

    site: str
    mode: str
    safe: GraphSafe
    log: CallLog

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.site, self.mode, self.safe.key)

    def count_decode_step(self) -> None:
        """Count one replayed decode step as the hook would have counted it."""
        self.log.by_seq_len[1] += 1
        if self.mode != "prefill_only" and self.safe.edits_decode:
            self.log.edited += 1


@dataclass(frozen=True)
class Call:
    """What a hook knows about the forward call it fires in."""

    site: str
    index: int  # 0 for the first call of this site inside the block
    seq_len: int

    @property
    def is_decode(self) -> bool:
        return self.index > 0 and self.seq_len == 1


@dataclass
class CallLog:
    """Hook calls counted by sequence length, and how many of them edited the tensor."""

    by_seq_len: Counter[int] = field(default_factory=Counter)
    edited: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"by_seq_len": {str(k): v for k, v in sorted(self.by_seq_len.items())}, "edited": self.edited}


def _primary(value: Any) -> torch.Tensor:
    """The hidden-state tensor in a module's input or output (a tensor, or the first item of a tuple)."""
    return value if isinstance(value, torch.Tensor) else value[0]


def _rebuild(value: Any, tensor: torch.Tensor) -> Any:
    return tensor if isinstance(value, torch.Tensor) else (tensor, *value[1:])


def _is_library_hook(hook: Callable[..., Any]) -> bool:
    """transformers 5 installs inactive output-recording hooks for good on the first `output_hidden_states` or
    `output_attentions` call; they belong to the library and are no leak."""
    return str(getattr(hook, "__module__", "")).startswith("transformers.")


def graph_edits(model: nn.Module) -> tuple[list[GraphEdit], list[str]]:
    """The graph-safe edits registered on `model` (module order, then registration order), and a description
    of every other hook."""
    edits: list[GraphEdit] = []
    others: list[str] = []
    for name, module in model.named_modules():
        for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()):
            edit = getattr(hook, "graph_edit", None)
            if isinstance(edit, GraphEdit):
                edits.append(edit)
            elif not _is_library_hook(hook):
                others.append(f"{getattr(hook, '__qualname__', type(hook).__name__)} on {name or 'the model'}")
    return edits, others


def hook_count(model: nn.Module) -> int:
    """Forward and pre-forward hooks currently registered anywhere in `model` (0 when nothing leaked)."""
    return sum(not _is_library_hook(hook) for m in model.modules()
               for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))


def _in_mode(call: Call, mode: str) -> bool:
    if mode == "all_calls":
        return True
    return call.is_decode if mode == "decode_only" else not call.is_decode


@contextmanager
def edit_site(model: nn.Module, site: str | Site, fn: EditFn, *, mode: str = "all_calls",
              model_name: str = "model", graph: GraphSafe | None = None) -> Iterator[CallLog]:
    """Run `fn` on the site's tensor at every call in `mode`; its return value replaces the tensor.

    `graph` declares the edit safe to replay in a CUDA graph (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"patch mode {mode!r}; allowed: {', '.join(MODES)}")
    resolved = site if isinstance(site, Site) else resolve(model, site, model_name)
    log = CallLog()
    counter = iter(range(1 << 62))

    part = resolved.part  # q, k or v inside a fused projection's output

    def apply(value: Any) -> Any:
        full = _primary(value)
        tensor = part.take(full) if part is not None else full
        call = Call(resolved.name, next(counter), int(tensor.shape[1]))
        log.by_seq_len[call.seq_len] += 1
        if not _in_mode(call, mode):
            return None
        new = fn(tensor, call)
        if new is None:
            return None
        log.edited += 1
        return _rebuild(value, part.put(full, new) if part is not None else new)

    def pre_hook(_module: nn.Module, args: Any) -> Any:
        return apply(args)

    def post_hook(_module: nn.Module, _args: Any, out: Any) -> Any:
        return apply(out)

    if graph is not None:  # found by graph_edits on whichever of the two is registered
        pre_hook.graph_edit = post_hook.graph_edit = GraphEdit(  # type: ignore[attr-defined]
            resolved.name, mode, graph, log)
    if resolved.direction == "input":
        handle = resolved.module.register_forward_pre_hook(pre_hook)
    else:
        handle = resolved.module.register_forward_hook(post_hook)
    try:
        yield log
    finally:
        handle.remove()


Reducer = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def capture(model: nn.Module, sites: Sequence[str], reduce: Reducer | None = None,
            model_name: str = "model") -> Iterator[dict[str, list[torch.Tensor]]]:
    """Keep each site's tensor (after `reduce`, e.g. a window gather) for every call, cloned, on its device.

    `with capture(model, ["blocks.5.attn.v"]) as acts: model(...)` leaves `acts[site]` as one tensor per call.
    """
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in sites}

    def keeper(name: str) -> EditFn:
        def keep(tensor: torch.Tensor, _call: Call) -> None:
            out = reduce(tensor) if reduce is not None else tensor
            kept[name].append(out.detach().clone())
        return keep

    with ExitStack() as stack:
        for name in sites:
            stack.enter_context(edit_site(model, name, keeper(name), model_name=model_name))
        yield kept


class StopForward(Exception):
    """Raised by `stop_after` to end a forward pass once every needed site has fired."""


@contextmanager
def stop_after(model: nn.Module, layer: int, model_name: str = "model") -> Iterator[None]:
    """End the forward pass after decoder layer `layer`; the caller catches StopForward."""
    def stop(_tensor: torch.Tensor, _call: Call) -> None:
        raise StopForward(layer)

    with edit_site(model, f"blocks.{layer}.resid_post", stop, model_name=model_name):
        yield
