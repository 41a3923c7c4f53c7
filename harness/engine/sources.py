"""Where a model's weights come from, what may be loaded from there, and how it is identified in the report.

Light on purpose (no torch): the plugin checks every `--model` source at start-up. A SOURCE is one of
- a local directory holding config.json and safetensors weights (pickle checkpoints only with --allow-pickle),
- a `.gguf` file (loaded through transformers' GGUF support, which needs the `gguf` extra),
- `hf:ORG/NAME@REVISION`, from the Hugging Face cache, or downloaded with --allow-download,
- `package:MODULE/FILE`, a file inside an installed Python package, found with importlib.util.find_spec
  without importing the package (the registry's SmolLM2 entry).

A model is untrusted input: nothing here or in the loader runs code from a model's files (trust_remote_code
stays off; pickle checkpoints, which can run code when read, are refused unless the user allows them).
The resolved revision of a local source is a content hash: the sha256 of a GGUF file, or of a directory's
files (names, sizes and bytes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

KINDS = ("dir", "gguf", "hf", "package")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
GGUF_EXTRA = "pip install 'claim-harness[gguf]'"
_GGUF_TYPES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_TO_MODEL_TYPE = {"gptneox": "gpt_neox"}  # llama.cpp's architecture names, where transformers' differ


class SourceError(ValueError):
    """A SOURCE that cannot be used: the message names it, where it came from, and the fix."""


class ModelUnavailable(RuntimeError):
    """The weights of a model cannot be found; the message says which model, which revision and the fix."""


class UntrustedModel(SourceError):
    """A model whose weights could run code when loaded (pickle checkpoints only)."""


@dataclass(frozen=True)
class Source:
    kind: str  # one of KINDS
    location: str  # a path, a hub repository id, or MODULE/FILE
    revision: str | None = None  # the hub revision of an hf: source

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.location}@{self.revision}"
        return f"package:{self.location}" if self.kind == "package" else self.location


def parse_source(text: str, where: str, base: Path | None = None) -> Source:
    """A SOURCE string as a Source; relative paths resolve against `base` (a registry file's folder)."""
    if text.startswith("hf:"):
        repo, sep, revision = text[3:].partition("@")
        if not sep or repo.count("/") != 1 or not revision:
            raise SourceError(f"{where}: {text!r} is not hf:ORG/NAME@REVISION; pin a revision (a commit sha or a "
                              "tag), e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct@main")
        return Source("hf", repo, revision)
    if text.startswith("package:"):
        module, sep, name = text[8:].partition("/")
        if not sep or not module or not name:
            raise SourceError(f"{where}: {text!r} is not package:MODULE/FILE")
        return Source("package", f"{module}/{name}")
    path = Path(text).expanduser()
    path = path if path.is_absolute() or base is None else base / path
    if path.suffix == ".gguf":
        return Source("gguf", str(path))
    return Source("dir", str(path))


def package_file(location: str) -> Path | None:
    """MODULE/FILE inside an installed package, found without importing it; None when not installed."""
    module, _, name = location.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / name


def local_path(source: Source, model_id: str, install: str | None = None) -> Path:
    """The file or directory of a local source; ModelUnavailable with the fix when it is not there."""
    if source.kind == "package":
        found = package_file(source.location)
        if found is None or not found.is_file():
            how = install or f"install the package that ships {source.location}"
            raise ModelUnavailable(f"model {model_id!r}: {source} is not installed; {how}")
        return found
    path = Path(source.location)
    if source.kind == "gguf" and not path.is_file():
        raise ModelUnavailable(f"model {model_id!r}: GGUF file {path} does not exist; give the path of a .gguf file")
    if source.kind == "dir" and not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "holds no config.json"
        raise ModelUnavailable(f"model {model_id!r}: directory {path} {what}; give a directory saved with "
                               "save_pretrained (config.json and *.safetensors), a .gguf file, or hf:ORG/NAME@REV")
    return path


def weight_format(directory: Path, allow_pickle: bool, model_id: str) -> str:
    """"safetensors" when the directory holds any; "pickle" (only if allowed) when it holds only pickles."""
    files = [p for p in directory.iterdir() if p.is_file()]
    if any(p.name.endswith(".safetensors") or p.name.endswith(".safetensors.index.json") for p in files):
        return "safetensors"
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UntrustedModel(f"model {model_id!r}: {directory} holds only pickle checkpoints ({', '.join(pickles)}), "
                             "which can run arbitrary code when loaded; convert them to safetensors, or pass "
                             "--allow-pickle if you trust their origin")
    if pickles:
        return "pickle"
    raise ModelUnavailable(f"model {model_id!r}: {directory} holds no weights (*.safetensors); save the model "
                           "with save_pretrained(safe_serialization=True)")


def require_gguf_extra() -> None:
    """transformers reads GGUF files with the `gguf` package: fail naming the extra when it is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"loading a .gguf file needs the optional extra 'gguf' (the gguf package): "
                               f"{GGUF_EXTRA}")


def _read(handle: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize("<" + fmt)
    value: int | float | bool = struct.unpack("<" + fmt, handle.read(size))[0]
    return value


def _gguf_string(handle: BinaryIO) -> str:
    return handle.read(int(_read(handle, "Q"))).decode("utf-8", errors="replace")


def _skip_gguf_value(handle: BinaryIO, kind: int) -> None:
    if kind == _GGUF_STRING:
        handle.seek(int(_read(handle, "Q")), 1)
    elif kind == _GGUF_ARRAY:
        item, count = int(_read(handle, "I")), int(_read(handle, "Q"))
        if item in _GGUF_TYPES:
            handle.seek(count * struct.calcsize("<" + _GGUF_TYPES[item]), 1)
        else:
            for _ in range(count):
                _skip_gguf_value(handle, item)
    else:
        handle.seek(struct.calcsize("<" + _GGUF_TYPES[kind]), 1)


def gguf_metadata(path: Path, keys: tuple[str, ...] = ("general.architecture", "general.name")) -> dict[str, str]:
    """String fields of a GGUF header, read without the gguf package (it parses the whole file; this stops
    once it has the keys)."""
    found: dict[str, str] = {}
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise SourceError(f"{path} is not a GGUF file (no GGUF magic)")
        _read(handle, "I")  # version
        _read(handle, "Q")  # tensor count
        for _ in range(int(_read(handle, "Q"))):
            key, kind = _gguf_string(handle), int(_read(handle, "I"))
            if key in keys and kind == _GGUF_STRING:
                found[key] = _gguf_string(handle)
                if len(found) == len(keys):
                    break
            else:
                _skip_gguf_value(handle, kind)
    return found


def gguf_model_type(path: Path) -> str | None:
    """The transformers model_type of a GGUF file (llama.cpp names Mistral models 'llama', as transformers
    knows: their general.name says mistral)."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    if arch == "llama" and "mistral" in meta.get("general.name", "").lower():
        return "mistral"
    return _GGUF_TO_MODEL_TYPE.get(arch or "", arch)


def config_model_type(directory: Path) -> str | None:
    """`model_type` from a directory's config.json (None when it has none)."""
    value = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type")
    return str(value) if value is not None else None


def hub_model_type(source: Source, allow_download: bool) -> str | None:
    """The model_type of an hf: source: from its config.json in the local Hugging Face cache, or downloaded
    alone (a few kB) when downloads are allowed; None when neither is possible."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    found = try_to_load_from_cache(source.location, "config.json", revision=source.revision)
    if not isinstance(found, str) and allow_download:
        found = hf_hub_download(source.location, "config.json", revision=source.revision)
    return config_model_type(Path(found).parent) if isinstance(found, str) else None


@lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file (remembered per path, size and modification time within a process)."""
    stat = path.stat()
    return _file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


def directory_hash(directory: Path) -> str:
    """A content hash of a directory: sha256 over each file's relative path and sha256, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()
