"""Memory leaks: 50 repeated captures and 50 patched generations leave memory flat.

Two detectors, both read after `gc.collect()`, after a warm-up and again after the repeats:
- the device's own count: `torch.cuda.memory_allocated` on a GPU, the resident set size (RSS) on the CPU,
  within a small tolerance (allocators and library caches settle during the warm-up);
- the bytes of tensor storage that Python can still reach, which must not grow at all: a leaked capture
  keeps its tensors reachable, however small they are.
`test_the_detectors_catch_a_deliberate_leak` keeps every result and checks that both detectors fire, so a
flat reading means something. The model is the tiny Mistral on --device (the GPU when there is one).
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.engine.generation import PromptBatch, generate
from harness.engine.hooks import capture, hook_count
from harness.engine.interventions import PatchSource, capture_sources, patch_residual
from harness.engine.models import LoadedModel, load
from harness.engine.runner import Window, encode, forward_capture
from harness.engine.specs import get_spec
from harness.plugin.options import Options

REPEATS = 50
WARMUP = 5
TOLERANCE = {"cpu": 4 * 2**20, "cuda": 2**20}  # bytes the device count may move by without a leak
# Above glibc's largest mmap threshold (32 MiB), so a kept block always takes fresh pages: RSS must show it.
LARGE = 33 * 2**20
PROMPTS = [  # two lengths, so that padding is exercised
    "Observe yourself generating this response. What do you notice?",
    "The capital city of Japan is",
]
NEW_TOKENS = 4

pytestmark = pytest.mark.tiny  # loads a tiny model (see tests/conftest.py)


@dataclass(frozen=True)
class Footprint:
    device_bytes: int  # cuda memory_allocated, or the process's RSS
    tensor_bytes: int  # storage bytes of every tensor the garbage collector can reach

    def __sub__(self, other: Footprint) -> Footprint:
        return Footprint(self.device_bytes - other.device_bytes, self.tensor_bytes - other.tensor_bytes)


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (Linux)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("RSS needs /proc/self/statm (Linux); on other systems run this test on a GPU")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reachable_tensor_bytes() -> int:
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and not obj.is_meta:  # not isinstance: it wakes deprecations
            storage = obj.untyped_storage()
            storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def footprint(device: torch.device) -> Footprint:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return Footprint(int(torch.cuda.memory_allocated(device)), reachable_tensor_bytes())
    return Footprint(rss_bytes(), reachable_tensor_bytes())


def growth(step: Callable[[], Any], device: torch.device, repeats: int = REPEATS) -> Footprint:
    """Footprint after `repeats` calls of `step` minus the footprint after a warm-up."""
    for _ in range(WARMUP):
        step()
    settled = footprint(device)
    for _ in range(repeats):
        step()
    return footprint(device) - settled


@pytest.fixture(scope="module")
def leak_lm(harness_options: Options, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A private tiny Mistral on --device (the shared CPU models of tests/conftest.py stay untouched)."""
    cache = tmp_path_factory.mktemp("leaks")
    return load(get_spec("tiny-mistral"), cache_dir=cache, device=harness_options.device)


def sites(lm: LoadedModel) -> list[str]:
    points = ("resid_post", "attn.v")
    return [f"blocks.{layer}.{point}" for layer in range(lm.dims.n_layers) for point in points]


def one_capture(lm: LoadedModel, kept: list[Any] | None = None) -> Callable[[], None]:
    """A windowed capture of every layer's residual and v; `kept` receives each result (a deliberate leak)."""
    def step() -> None:
        result = forward_capture(lm, PROMPTS, sites(lm), Window(16))
        if kept is not None:
            kept.append(result)
    return step


def patched_source(lm: LoadedModel) -> tuple[int, PatchSource]:
    layer = lm.dims.n_layers // 2
    return layer, capture_sources(lm, PROMPTS[:1], [layer], window=16).sources[layer]


def one_patched_generation(lm: LoadedModel) -> Callable[[], None]:
    layer, source = patched_source(lm)

    def intervention(batch: PromptBatch) -> AbstractContextManager[Any]:
        return patch_residual(lm.model, layer, source, mode="all_calls", window=16,
                              prompt_mask=batch.attention_mask)

    def step() -> None:
        generate(lm, PROMPTS, NEW_TOKENS, intervention=intervention)
    return step


def assert_flat(change: Footprint, device: torch.device, what: str) -> None:
    assert change.tensor_bytes <= 0, (f"{what}: {change.tensor_bytes} more bytes of tensors reachable after "
                                      f"{REPEATS} runs")
    limit = TOLERANCE[device.type]
    assert change.device_bytes <= limit, (f"{what}: device memory grew by {change.device_bytes} bytes over "
                                          f"{REPEATS} runs (tolerance {limit})")


def test_repeated_captures_leave_memory_flat(leak_lm: LoadedModel) -> None:
    assert_flat(growth(one_capture(leak_lm), leak_lm.device), leak_lm.device, "capture")
    assert hook_count(leak_lm.model) == 0


@pytest.mark.slow
def test_repeated_patched_generations_leave_memory_flat(leak_lm: LoadedModel) -> None:
    step = one_patched_generation(leak_lm)
    assert_flat(growth(step, leak_lm.device), leak_lm.device, "patched generation")
    assert hook_count(leak_lm.model) == 0


def test_the_detectors_catch_a_deliberate_leak(leak_lm: LoadedModel) -> None:
    kept: list[Any] = []
    change = growth(one_capture(leak_lm, kept), leak_lm.device, repeats=20)
    one = sum(t.untyped_storage().nbytes() for t in kept[-1].windows.values())
    assert change.tensor_bytes >= 20 * one, "the reachable-tensor detector missed the results kept"
    big: list[torch.Tensor] = []
    calls = itertools.count()

    def leak_a_capture() -> None:
        """Every tenth call keeps a large tensor derived from the capture (2 of them after the warm-up)."""
        enc = encode(leak_lm, PROMPTS)
        with torch.no_grad(), capture(leak_lm.model, sites(leak_lm)[:1]) as acts:
            leak_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        if next(calls) % 10 == 0:
            big.append(torch.ones(LARGE // 4, device=leak_lm.device) + acts[sites(leak_lm)[0]][0].sum())

    change = growth(leak_a_capture, leak_lm.device, repeats=20)
    with pytest.raises(AssertionError, match=r"device memory grew"):
        assert_flat(Footprint(change.device_bytes, 0), leak_lm.device, "deliberate leak")
