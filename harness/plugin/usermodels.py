"""The models a run may use and the ones it selects: the registry plus a user's own (`--model NAME=SOURCE`,
`--model-registry FILE.toml`, `--pair INSTRUCT=BASE`).

A user's model is checked at start-up, before anything loads, so that a wrong path, a pickle-only directory or
an unsupported architecture fails once with the fix instead of once per test. Its family is read from its
config (a directory's config.json, a GGUF header, or the Hugging Face cache).

Which models run:
- `--models a,b` names them; else the `--model` names; else under `-m real` the registry's real CPU models
  (SmolLM2); else under `-m gpu` the published models; else the tiny stand-ins.
- A model the user chose (`--models`, `--model`, `-m real`) runs every claim it is compatible with
  ("generalisation"); under the default selections each claim runs on its own published models.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.plugin.options import assignments

if TYPE_CHECKING:
    from harness.engine.specs import ModelSpec


def _model_type(spec: ModelSpec, allow_pickle: bool, allow_download: bool) -> str | None:
    """A user's model's model_type, read without loading it (None when only the hub knows it)."""
    from harness.engine.sources import (
        config_model_type,
        gguf_model_type,
        hub_model_type,
        local_path,
        parse_source,
        require_gguf_extra,
        weight_format,
    )

    source = parse_source(str(spec.source), f"model {spec.id!r}")
    if source.kind == "hf":
        return hub_model_type(source, allow_download)
    path = local_path(source, spec.id, spec.install)
    if source.kind == "dir":
        weight_format(path, allow_pickle, spec.id)
        return config_model_type(path)
    require_gguf_extra()
    return gguf_model_type(path)


def checked(spec: ModelSpec, allow_pickle: bool, allow_download: bool = False) -> ModelSpec:
    """A user's model with its family read from its config; an unusable one fails once, naming the fix."""
    from harness.engine.architectures import layout_for

    model_type = _model_type(spec, allow_pickle, allow_download)
    if model_type is None:
        return spec
    layout_for(model_type, f"model {spec.id!r} ({spec.source}, from {spec.origin})")
    if spec.family not in ("auto", model_type):
        raise ValueError(f"model {spec.id!r} ({spec.origin}): family = {spec.family!r}, but its config says "
                         f"model_type {model_type!r}; remove `family` or correct it")
    return replace(spec, family=model_type)


def registry_with_user_models(config: pytest.Config) -> dict[str, ModelSpec]:
    """The registry, with the models of --model-registry files and --model, paired by --pair."""
    from harness.engine.sources import ModelUnavailable
    from harness.engine.specs import extended, load_registry, paired, user_spec

    try:
        registry = load_registry()
        for path in config.getoption("--model-registry"):
            registry = extended(registry, load_registry(Path(path).expanduser(), origin=f"--model-registry {path}"))
        given = assignments(config.getoption("--model"), "--model", "NAME=SOURCE")
        registry = extended(registry, {name: user_spec(name, source) for name, source in given.items()})
        registry = paired(registry, assignments(config.getoption("--pair"), "--pair", "INSTRUCT=BASE"))
        allow = bool(config.getoption("--allow-pickle")), bool(config.getoption("--allow-download"))
        return {m: checked(s, *allow) if s.origin != "registry" else s for m, s in registry.items()}
    except (ValueError, OSError, ModelUnavailable) as err:
        raise pytest.UsageError(str(err)) from err


def _marked(config: pytest.Config, mark: str) -> bool:
    expression = config.getoption("markexpr") or ""
    return mark in expression and f"not {mark}" not in expression


def selected_models(config: pytest.Config, registry: dict[str, ModelSpec]) -> tuple[list[str], frozenset[str]]:
    """The models this run selects, and those of them that run every compatible claim."""
    raw = config.getoption("--models")
    given = list(assignments(config.getoption("--model"), "--model", "NAME=SOURCE"))
    real_run, gpu_run = _marked(config, "real"), _marked(config, "gpu")
    if raw:
        models = raw.split(",")
    elif given:
        models = given
    elif real_run:
        models = [m for m, s in registry.items() if s.cpu]
    else:
        models = [m for m, s in registry.items() if s.origin == "registry" and not s.cpu and s.tiny != gpu_run]
    unknown = [m for m in models if m not in registry]
    if unknown:
        raise pytest.UsageError(f"--models: unknown model(s) {unknown}; known: {', '.join(registry)}")
    chosen = bool(raw or given or real_run)
    return models, frozenset(m for m in models if chosen and not registry[m].tiny)
