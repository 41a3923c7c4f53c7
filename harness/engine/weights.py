"""Opening pretrained weights: a registry model at its pinned revision, a local directory, a GGUF file or a hub
repository, under one trust policy.

The policy (a model is untrusted input): `trust_remote_code=False` everywhere; weights come from safetensors or
GGUF; pickle checkpoints only with `allow_pickle`; the hub only with `allow_download`. Every opening says
which format it loaded and the resolved revision: the hub snapshot sha, a directory's content hash, or a GGUF
file's sha256.

GGUF files are dequantised by transformers on the CPU (slow: it parses the whole file, converts the tokenizer
and dequantises every tensor; 12 s for SmolLM2-135M). The first opening of a file saves the dequantised model
and its tokenizer as safetensors in the cache (`gguf_cache_root()`), keyed by the file's sha256, the dtype and
the transformers version; later openings, in this process or any later one, read that copy in a fraction of
a second. CLAIM_HARNESS_CACHE=none keeps the copy in a temporary directory removed when the process exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from harness.engine.architectures import layout_for
from harness.engine.sources import (
    ModelUnavailable,
    Source,
    config_model_type,
    directory_hash,
    file_sha256,
    gguf_model_type,
    local_path,
    parse_source,
    require_gguf_extra,
    weight_format,
)
from harness.engine.specs import ModelSpec

_KEPT: list[tempfile.TemporaryDirectory[str]] = []  # dequantised GGUF copies, removed when the process exits


@dataclass
class Opened:
    model: Any
    tokenizer: Any
    resolved: str  # the resolved revision
    source: str  # where the weights were read from, for the report
    format: str  # "safetensors", "gguf" or "pickle"


def gpu_budget(devices: Sequence[str]) -> dict[int, int]:
    """max_memory for accelerate: the listed GPUs only, 90% of each (the rest stays free for activations)."""
    indices = [torch.device(d).index or 0 for d in devices]
    return {i: int(torch.cuda.get_device_properties(i).total_memory * 0.9) for i in indices}


def from_pretrained(source: str, revision: str | None, dtype: torch.dtype, devices: Sequence[str], local_only: bool,
                    *, use_safetensors: bool | None = True, attn_implementation: str = "sdpa") -> Any:
    kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_only, "trust_remote_code": False,
                              "attn_implementation": attn_implementation, "use_safetensors": use_safetensors}
    if len(devices) > 1:
        kwargs.update(device_map="balanced", max_memory=gpu_budget(devices))
    elif devices[0] != "cpu":
        kwargs.update(device_map=devices[0])
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).eval()
    except TypeError:  # transformers 4.x spells it torch_dtype
        return AutoModelForCausalLM.from_pretrained(source, torch_dtype=dtype, **kwargs).eval()


def tokenizer_from(source: str, revision: str | None, local_only: bool) -> Any:
    return AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local_only,
                                         trust_remote_code=False)


def local_revision(directory: Path) -> str:
    """A resolved revision for a local directory: the hub snapshot sha if it is one, else a content hash
    (a tiny model built here is named by what it was built from: seed, tokenizer corpus and config)."""
    parts = directory.resolve().parts
    if len(parts) >= 2 and parts[-2] == "snapshots":
        return parts[-1]
    marker = directory / "harness_provenance.json"
    if marker.exists():
        import hashlib

        return "local:" + hashlib.sha256(marker.read_bytes()).hexdigest()[:12]
    return "sha256:" + directory_hash(directory)


def open_directory(spec: ModelSpec, directory: Path, dtype: torch.dtype, devices: Sequence[str],
                   allow_pickle: bool) -> Opened:
    """A directory saved with save_pretrained: safetensors, or pickle checkpoints only with allow_pickle."""
    fmt = weight_format(directory, allow_pickle, spec.id)
    impl = layout_for(config_model_type(directory), f"model {spec.id!r} ({directory})").attn_implementation
    model = from_pretrained(str(directory), None, dtype, devices, True, use_safetensors=fmt == "safetensors",
                            attn_implementation=impl)
    return Opened(model, tokenizer_from(str(directory), None, True), local_revision(directory), str(directory), fmt)


def open_hub(spec: ModelSpec, repo: str, revision: str, dtype: torch.dtype, devices: Sequence[str],
             local_only: bool, allow_pickle: bool) -> Opened:
    """A hub repository at a revision, from the local cache (or downloaded when local_only is False).

    The config comes first (small), so an unsupported architecture fails before any weight is fetched."""
    config = AutoConfig.from_pretrained(repo, revision=revision, local_files_only=local_only, trust_remote_code=False)
    impl = layout_for(config.model_type, f"model {spec.id!r} ({repo})").attn_implementation
    try:
        model = from_pretrained(repo, revision, dtype, devices, local_only, attn_implementation=impl)
        fmt = "safetensors"
    except OSError:
        if not allow_pickle:
            raise
        model = from_pretrained(repo, revision, dtype, devices, local_only, use_safetensors=False,
                                attn_implementation=impl)
        fmt = "pickle"
    resolved = str(getattr(model.config, "_commit_hash", None) or revision)
    return Opened(model, tokenizer_from(repo, revision, local_only), resolved, f"hf:{repo}@{revision}", fmt)


@contextmanager
def one_parse_per_file() -> Iterator[None]:
    """transformers parses a GGUF file three times (config, tensors, tokenizer), each parse building every
    header field, the tokenizer's arrays included; inside this block each file is parsed once and its reader
    reused. gguf.GGUFReader is restored on exit. (If transformers stops looking the reader up in the gguf
    module at call time, this only saves nothing.)"""
    import gguf

    original = gguf.GGUFReader
    readers: dict[str, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = f"{Path(path).resolve()}:{args}:{sorted(kwargs.items())}"
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


CACHE_ENV = "CLAIM_HARNESS_CACHE"
_COMPLETE = "claim-harness-complete"  # written last: a copy without it was interrupted and is rebuilt


def gguf_cache_root() -> Path | None:
    """Where dequantised GGUF copies are kept between processes: $CLAIM_HARNESS_CACHE/gguf, else
    $XDG_CACHE_HOME/claim-harness/gguf, else ~/.cache/claim-harness/gguf; None when CLAIM_HARNESS_CACHE=none."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None and chosen.strip().lower() == "none":
        return None
    if chosen:
        return Path(chosen).expanduser() / "gguf"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claim-harness" / "gguf"


@lru_cache(maxsize=4)
def dequantised(path: Path, sha256: str, dtype: torch.dtype) -> Path:
    """A safetensors copy of a GGUF model dequantised to `dtype`: read from the cache where an earlier process
    made it, else made once here and moved into the cache whole (a temporary directory where the cache is
    switched off or cannot be written)."""
    import transformers

    root = gguf_cache_root()
    name = f"{sha256}-{str(dtype).removeprefix('torch.')}-transformers-{transformers.__version__}"
    if root is None:
        return _process_copy(path, sha256, dtype)
    if (root / name / _COMPLETE).is_file():
        return root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    except OSError:  # a cache that cannot be written: this process's own copy
        return _process_copy(path, sha256, dtype)
    try:
        _dequantise(path, dtype, building)
        (building / _COMPLETE).write_text(f"{path}\n", encoding="utf-8")
        if not (root / name / _COMPLETE).is_file():
            shutil.rmtree(root / name, ignore_errors=True)  # an interrupted copy of an earlier process
            os.replace(building, root / name)
    except OSError:
        if not (root / name / _COMPLETE).is_file():  # not another process's finished copy: a real failure
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root / name


def _process_copy(path: Path, sha256: str, dtype: torch.dtype) -> Path:
    kept = tempfile.TemporaryDirectory(prefix=f"claim-harness-gguf-{sha256[:12]}-")
    _KEPT.append(kept)
    _dequantise(path, dtype, Path(kept.name))
    return Path(kept.name)


def _dequantise(path: Path, dtype: torch.dtype, out: Path) -> None:
    with one_parse_per_file():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=False, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    model.hf_quantizer = None  # type: ignore[assignment]  # plain tensors now: the quantizer only forbids saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def open_gguf(spec: ModelSpec, path: Path, dtype: torch.dtype, devices: Sequence[str]) -> Opened:
    require_gguf_extra()
    impl = layout_for(gguf_model_type(path), f"model {spec.id!r} ({path})").attn_implementation
    sha = file_sha256(path)
    if spec.revision.startswith("sha256:") and spec.revision != f"sha256:{sha}":
        raise ModelUnavailable(f"model {spec.id!r}: {path} has sha256 {sha}, but the registry pins "
                               f"{spec.revision.removeprefix('sha256:')}; install the pinned file "
                               f"({spec.install or 'see the registry entry'}) or register this one under a new id")
    copy = dequantised(path.resolve(), sha, dtype)
    model = from_pretrained(str(copy), None, dtype, devices, True, attn_implementation=impl)
    return Opened(model, tokenizer_from(str(copy), None, True), f"sha256:{sha}", str(path), "gguf")


def open_source(spec: ModelSpec, dtype: torch.dtype, devices: Sequence[str], local_only: bool,
                allow_pickle: bool) -> Opened:
    """The weights a spec's `source` names (see harness.engine.sources for the forms)."""
    source: Source = parse_source(str(spec.source), f"model {spec.id!r}")
    if source.kind == "hf":
        return open_hub(spec, source.location, str(source.revision), dtype, devices, local_only, allow_pickle)
    path = local_path(source, spec.id, spec.install)
    if source.kind == "dir":
        return open_directory(spec, path, dtype, devices, allow_pickle)
    opened = open_gguf(spec, path, dtype, devices)
    if source.kind == "package":
        opened.source = f"{source} ({path})"
    return opened
