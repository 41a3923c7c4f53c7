"""Time and peak memory of one call, the same way on the CPU and on a GPU.

Timing: every timed call ends with a device synchronisation, so the wall time covers the GPU work it queued.
Memory on a GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated
when the call began. Memory on the CPU: the peak of the tensor storage that the call creates and keeps
alive, counted by a TorchDispatchMode on one untimed call (`LiveTensorBytes`); the process's RSS cannot
serve, since the allocator keeps freed memory and a repeated call reuses it.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timed:
    """`fn` wrapped so that each call ends with a device sync; the wall time of every call is kept."""

    fn: Callable[[], Any]
    device: torch.device
    samples: list[float] = field(default_factory=list)  # seconds, warm-up calls included

    def __call__(self) -> None:
        start = time.perf_counter()
        self.fn()
        synchronize(self.device)
        self.samples.append(time.perf_counter() - start)


@dataclass(frozen=True)
class Memory:
    """Peak memory of one call: above what was in use when it began, and what that was."""

    extra_bytes: int | None  # the call's own peak: activations, temporaries, caches it built
    before_bytes: int | None  # allocated by torch when the call began (GPU only)
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"peak_extra_bytes": self.extra_bytes, "before_bytes": self.before_bytes,
                "memory_method": self.method}


class LiveTensorBytes(TorchDispatchMode):
    """While active: the peak bytes of tensor storage created since it began and still alive.

    The CPU has no `max_memory_allocated`; this counts every storage an aten op returns (views and in-place
    results share an input's storage and are not counted again) until Python frees it. Scratch memory inside
    a kernel is not seen. It slows the call it watches, so the benchmarks use it on an untimed call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref[torch.UntypedStorage]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and id(leaf.untyped_storage()) not in inputs:
                self._track(leaf.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._refs:
            return
        size = storage.nbytes()
        self._refs[key] = weakref.ref(storage, partial(self._free, key, size))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, size: int, _ref: object) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= size


@contextmanager
def watch_memory(device: torch.device, on_cpu: bool = True) -> Iterator[list[Memory]]:
    """Peak memory of the block, appended to the yielded list on exit. `on_cpu=False` leaves the CPU
    unwatched (the tracker would slow a block that is also being timed)."""
    found: list[Memory] = []
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield found
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        found.append(Memory(peak - before, before, "cuda.max_memory_allocated"))
    elif on_cpu:
        with LiveTensorBytes() as tracker:
            yield found
        found.append(Memory(tracker.peak, None, "live tensor storage (TorchDispatchMode)"))
    else:
        yield found
        found.append(Memory(None, None, "not measured: on the CPU the tracker would slow the timed call"))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> Memory:
    """Run `fn` once and return its peak memory above what was in use when it began."""
    with watch_memory(device) as found:
        fn()
    return found[0]


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
