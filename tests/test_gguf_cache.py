"""The cache of dequantised GGUF copies (harness/engine/weights.py): made once, read by later processes, keyed
by file, dtype and transformers version, rebuilt when interrupted, and off or unwritable without failing.

`_dequantise` (transformers' 12 s conversion) is replaced by a stand-in that writes one file and counts its
calls; `dequantised.cache_clear()` stands for a new process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from harness.engine import weights

SHA = "ab" * 32


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Path]]:
    made: list[Path] = []

    def fake(path: Path, dtype: torch.dtype, out: Path) -> None:
        (out / "model.safetensors").write_text(f"{path} {dtype}", encoding="utf-8")
        made.append(out)

    monkeypatch.setattr(weights, "_dequantise", fake)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    weights.dequantised.cache_clear()
    yield made
    weights.dequantised.cache_clear()


def test_a_later_process_reads_the_copy_the_first_one_made(calls: list[Path], tmp_path: Path) -> None:
    first = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    weights.dequantised.cache_clear()  # a new process
    second = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "gguf" and first.name.startswith(f"{SHA}-float32-transformers-")
    assert (first / "model.safetensors").is_file()
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no building directory left behind


def test_another_dtype_is_another_copy(calls: list[Path], tmp_path: Path) -> None:
    a = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    b = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float16)
    assert a != b and len(calls) == 2


def test_an_interrupted_copy_is_rebuilt(calls: list[Path], tmp_path: Path) -> None:
    first = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    (first / weights._COMPLETE).unlink()  # as if the process had died before its last write
    weights.dequantised.cache_clear()
    again = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    assert again == first and len(calls) == 2 and (again / weights._COMPLETE).is_file()


def test_none_switches_the_cache_off(calls: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, "none")
    copy = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    assert weights.gguf_cache_root() is None
    assert copy.name.startswith(f"claim-harness-gguf-{SHA[:12]}-") and not (tmp_path / "cache").exists()


def test_an_unwritable_cache_falls_back_to_a_copy_of_this_process(calls: list[Path], tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be", encoding="utf-8")
    copy = weights.dequantised(tmp_path / "m.gguf", SHA, torch.float32)
    assert (copy / "model.safetensors").is_file() and len(calls) == 1
    assert tmp_path not in copy.parents


def test_the_default_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert weights.gguf_cache_root() == tmp_path / "claim-harness" / "gguf"
