"""The model registry: ModelSpec entries with pinned revisions, read from TOML and validated, plus the models a
user names on the command line (`--model NAME=SOURCE`, `--model-registry FILE.toml`, `--pair INSTRUCT=BASE`).

Light on purpose (no torch): the plugin reads the registry at collection without loading any model code.
Layer and head counts are never written here; they are read from each model's config once it is loaded.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.engine.architectures import SUPPORTED
from harness.engine.sources import SourceError, parse_source
from harness.resources import models_dir

MODELS_DIR = models_dir()
FAMILIES = SUPPORTED  # a model's family is its config.model_type
AUTO = "auto"  # the family of a user's model until its config is read
DTYPE_NAMES = ("float16", "bfloat16", "float32")
DEFAULT_TOKEN_BUDGET = 32_768  # padded tokens one forward batch may hold (--claim-token-budget)
VARIANTS = ("base", "instruct", "unknown")
_REQUIRED = {"hf_id", "revision", "family", "dtype", "variant", "config"}
_SPEC_KEYS = _REQUIRED | {"base", "chat_template", "bos", "tiny", "sources", "source", "install", "cpu"}
_WITH_SOURCE_DEFAULTS = {"hf_id": "", "revision": "", "family": AUTO, "dtype": "float32", "variant": "unknown",
                         "config": ""}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    hf_id: str
    revision: str
    family: str
    dtype: str
    variant: str
    config: str
    chat_template: bool = False
    bos: bool = True
    tiny: bool = False
    base: str | None = None
    sources: tuple[str, ...] = ()
    source: str | None = None  # where the weights are (harness.engine.sources); None: hf_id at revision
    install: str | None = None  # how to get the weights when they are missing
    cpu: bool = False  # real weights small enough for the CPU (`pytest -m real`)
    origin: str = "registry"  # where this entry came from: the registry, --model, or a --model-registry file


def _entry(path: Path, model_id: str, entry: dict[str, Any]) -> ModelSpec:
    where = f"{path}: model {model_id!r}"
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    if "source" in entry:
        parse_source(str(entry["source"]), f"{where}, key source", path.parent)
        entry = {**_WITH_SOURCE_DEFAULTS, **entry}
    missing = _REQUIRED - set(entry)
    if missing:
        raise ValueError(f"{where} is missing {sorted(missing)}; give them, or a `source` to load it from")
    if entry["family"] not in (*FAMILIES, AUTO):
        raise ValueError(f"{where} family={entry['family']!r}; allowed: {FAMILIES}")
    if entry["dtype"] not in DTYPE_NAMES:
        raise ValueError(f"{where} dtype={entry['dtype']!r}; allowed: {sorted(DTYPE_NAMES)}")
    if entry["variant"] not in VARIANTS:
        raise ValueError(f"{where} variant={entry['variant']!r}; allowed: {VARIANTS}")
    return ModelSpec(id=model_id, sources=tuple(entry.pop("sources", ())), **entry)


def load_registry(path: Path = MODELS_DIR / "registry.toml", origin: str = "registry") -> dict[str, ModelSpec]:
    """Read and validate a model registry; bad entries fail naming the file, the model and the key.

    A user's registry (`origin` names it) may give `source` instead of hf_id/revision/config; a relative
    source path is relative to the file.
    """
    raw = tomllib.loads(path.read_text(encoding="utf-8")).get("models", {})
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in raw.items():
        spec = _entry(path, model_id, dict(entry))
        if spec.source is not None and origin != "registry":
            source = parse_source(spec.source, f"{path}: model {model_id!r}", path.parent)
            spec = replace(spec, source=str(source))
        specs[model_id] = replace(spec, origin=origin)
    check_bases(specs, str(path))
    return specs


def check_bases(specs: Mapping[str, ModelSpec], where: str) -> None:
    for spec in specs.values():
        if spec.base is not None and spec.base not in specs:
            raise ValueError(f"{where}: model {spec.id!r} names base {spec.base!r}, which is not in the registry")


def user_spec(model_id: str, source: str, where: str = "--model") -> ModelSpec:
    """The entry of a model named on the command line: its source, the tokenizer's own special tokens, float32."""
    parsed = parse_source(source, f"{where} {model_id}={source}")
    return ModelSpec(id=model_id, hf_id=str(parsed), revision=parsed.revision or "", family=AUTO, dtype="float32",
                     variant="unknown", config="", source=str(parsed), origin=where)


def extended(registry: Mapping[str, ModelSpec], extra: Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    """The registry with a user's entries added; an id already taken fails naming both places."""
    taken = sorted(set(registry) & set(extra))
    if taken:
        raise SourceError(f"model id(s) {taken} from {extra[taken[0]].origin} are already in the "
                          f"{registry[taken[0]].origin}; choose another NAME")
    return {**registry, **extra}


def paired(registry: Mapping[str, ModelSpec], pairs: Mapping[str, str]) -> dict[str, ModelSpec]:
    """`--pair INSTRUCT=BASE`: the instruct model names its base (for claims that compare the two)."""
    out = dict(registry)
    for instruct, base in pairs.items():
        unknown = [m for m in (instruct, base) if m not in out]
        if unknown:
            raise SourceError(f"--pair {instruct}={base}: unknown model(s) {unknown}; name models of the registry "
                              "or of --model / --model-registry")
        out[instruct] = replace(out[instruct], base=base, variant="instruct")
        if out[base].variant == "unknown":
            out[base] = replace(out[base], variant="base")
    return out


def get_spec(model_id: str, registry: dict[str, ModelSpec] | None = None) -> ModelSpec:
    specs = registry if registry is not None else load_registry()
    if model_id not in specs:
        raise KeyError(f"unknown model {model_id!r}; known models: {', '.join(sorted(specs))}")
    return specs[model_id]
