"""The model registry: ModelSpec entries with pinned revisions, read from TOML and validated.

Light on purpose (no torch): the plugin reads the registry at collection without loading any model code.
Layer and head counts are never written here; they are read from each model's config once it is loaded.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.resources import models_dir

MODELS_DIR = models_dir()
FAMILIES = ("mistral", "qwen2", "llama")
DTYPE_NAMES = ("float16", "bfloat16", "float32")
DEFAULT_TOKEN_BUDGET = 32_768  # padded tokens one forward batch may hold (--claim-token-budget)
_SPEC_KEYS = {"hf_id", "revision", "family", "dtype", "variant", "base", "chat_template", "bos", "tiny", "config",
              "sources"}


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



def load_registry(path: Path = MODELS_DIR / "registry.toml") -> dict[str, ModelSpec]:
    """Read and validate the model registry; bad entries fail naming the file, the model and the key."""
    raw = tomllib.loads(path.read_text(encoding="utf-8")).get("models", {})
    specs: dict[str, ModelSpec] = {}
    for model_id, entry in raw.items():
        unknown = set(entry) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"{path}: model {model_id!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_SPEC_KEYS)}")
        if entry.get("family") not in FAMILIES:
            raise ValueError(f"{path}: model {model_id!r} family={entry.get('family')!r}; allowed: {FAMILIES}")
        if entry.get("dtype") not in DTYPE_NAMES:
            raise ValueError(f"{path}: model {model_id!r} dtype={entry.get('dtype')!r}; allowed: {sorted(DTYPE_NAMES)}")
        specs[model_id] = ModelSpec(id=model_id, sources=tuple(entry.pop("sources", ())), **entry)
    for spec in specs.values():
        if spec.base is not None and spec.base not in specs:
            raise ValueError(f"{path}: model {spec.id!r} names base {spec.base!r}, which is not in the registry")
    return specs


def get_spec(model_id: str, registry: dict[str, ModelSpec] | None = None) -> ModelSpec:
    specs = registry if registry is not None else load_registry()
    if model_id not in specs:
        raise KeyError(f"unknown model {model_id!r}; known models: {', '.join(sorted(specs))}")
    return specs[model_id]
