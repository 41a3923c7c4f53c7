"""Loading models: registry models at their pinned revisions, a user's models from any source
(harness.engine.weights), random-weight and tiny builds, and the loaded model's entry in the report.

Every dimension is read from the loaded model's config (`Dims`), never from this file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from harness.engine import modeldir
from harness.engine.sources import ModelUnavailable
from harness.engine.specs import DEFAULT_TOKEN_BUDGET, MODELS_DIR, ModelSpec
from harness.engine.tokenizer import build_offline_tokenizer, corpus_digest, corpus_lines, readable
from harness.engine.weights import Opened, gpu_budget, open_directory, open_hub, open_source

__all__ = ["DTYPES", "WEIGHTS", "Dims", "LoadedModel", "ModelPathError", "ModelUnavailable", "build_tiny", "load",
           "parameter_bytes", "place"]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
WEIGHTS = ("pretrained", "random")


class ModelPathError(ValueError):
    """A model directory the user named (--model-path) that cannot be loaded; the message says why."""


@dataclass(frozen=True)
class Dims:
    """The dimensions a claim may need, read from a model config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int

    @classmethod
    def from_config(cls, config: Any) -> Dims:
        n_heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        return cls(
            n_layers=int(config.num_hidden_layers),
            n_heads=n_heads,
            n_kv_heads=int(getattr(config, "num_key_value_heads", None) or n_heads),
            head_dim=int(head_dim),
            d_model=int(config.hidden_size),
        )


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: PreTrainedModel
    tokenizer: Any
    weights: str  # "pretrained" | "random" | "tiny"
    resolved_revision: str
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    token_budget: int = DEFAULT_TOKEN_BUDGET  # padded tokens per forward batch: bounds activation memory

    @property
    def dims(self) -> Dims:
        return Dims.from_config(self.model.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def id(self) -> str:
        return self.spec.id

    def describe(self) -> dict[str, Any]:
        """The model's entry in the JSON report."""
        return {
            "id": self.spec.id,
            "hf_id": self.spec.hf_id,
            "family": getattr(self.model.config, "model_type", None),
            "requested_revision": self.spec.revision or None,
            "resolved_revision": self.resolved_revision,
            "source": self.source,
            "registered_in": self.spec.origin,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "weights": self.weights,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "device": str(self.device),
            "dims": vars(self.dims),
            **self.provenance,
        }


def architecture(spec: ModelSpec) -> dict[str, Any]:
    path = MODELS_DIR / spec.config
    if not path.exists():
        raise FileNotFoundError(f"architecture file {path} for model {spec.id!r} is missing")
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _config_from(spec: ModelSpec, vocab_size: int | None = None) -> Any:
    arch = architecture(spec)
    if vocab_size is not None:
        arch["vocab_size"] = vocab_size
    model_type = arch.pop("model_type")
    arch.pop("architectures", None)
    return AutoConfig.for_model(model_type, **arch)


def parameter_bytes(spec: ModelSpec, dtype: str | None = None) -> int | None:
    """The bytes a registered architecture's parameters take in `dtype` (the spec's by default), counted on the
    meta device (no memory, a fraction of a second); None where the spec has no architecture file."""
    if not spec.config or not (MODELS_DIR / spec.config).exists():
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config_from(spec))
    return sum(p.numel() for p in model.parameters()) * DTYPES[dtype or spec.dtype].itemsize


def _from_config(config: Any, dtype: torch.dtype, device: str | torch.device, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _perturb(model: PreTrainedModel, seed: int, scale: float = 0.15) -> None:
    """Make a tiny 'instruct' twin: multiply every weight by (1 + scale * N(0, 1)), seeded."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=gen).to(param.device, param.dtype)
            param.mul_(1 + scale * noise)


def build_tiny(spec: ModelSpec, directory: Path, seed: int = 0) -> Path:
    """Build a tiny model from its config with seeded init, save model and tokenizer to `directory`."""
    lines = corpus_lines()
    tokenizer = build_offline_tokenizer(lines)
    config = _config_from(spec, vocab_size=len(tokenizer))
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = _from_config(config, torch.float32, "cpu", seed)
    if spec.base is not None:
        _perturb(model, seed + 1)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "harness_provenance.json").write_text(
        # an instruct twin shares its base's config but not its weights: its revision must differ
        json.dumps({"tiny_seed": seed, "tokenizer_corpus": corpus_digest(lines), "config": _digest(config.to_dict()),
                    "perturbed_from": spec.base}),
        encoding="utf-8",
    )
    return directory


def place(model: PreTrainedModel, devices: Sequence[str]) -> PreTrainedModel:
    """Put a model on one device, or shard it layer-wise across several GPUs with accelerate."""
    if len(devices) == 1:
        moved: PreTrainedModel = model.to(devices[0])  # type: ignore[arg-type]
        return moved
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    budget = get_balanced_memory(model, max_memory=gpu_budget(devices), no_split_module_classes=no_split)
    device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
    return dispatch_model(model, device_map=device_map)


def _how_to_provide(spec: ModelSpec) -> str:
    if spec.origin != "registry":
        return (f"{spec.id!r} comes from {spec.origin} ({spec.source}): place it in the Hugging Face cache, pass "
                "--allow-download, or give a local directory or .gguf file as its SOURCE")
    return (
        f"provide them in one of three ways: (1) --model-path {spec.id}=DIR, a directory holding the weights; "
        f"(2) download them once into the Hugging Face cache at the pinned revision "
        f"(`hf download {spec.hf_id} --revision {spec.revision}`, or run with --allow-download); "
        f"(3) --weights random, the published architecture with seeded random weights (a smoke run, not evidence)"
    )


def _not_cached(spec: ModelSpec) -> ModelUnavailable:
    """Offline, transformers reports a missing snapshot as a failed connection; say what it means here."""
    return ModelUnavailable(
        f"the weights of {spec.id!r} ({spec.hf_id} @ {spec.revision}) are not in the local Hugging Face cache "
        f"at the pinned revision, and this run does not download; {_how_to_provide(spec)}")


def _path_error(spec: ModelSpec, path: Path, err: Exception) -> ModelPathError:
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return ModelPathError(f"--model-path {spec.id}={path}: the model there does not load ({err.__class__.__name__}: "
                          f"{first}); give a directory written by save_pretrained, e.g. a Hugging Face cache snapshot")


def _open_registered(spec: ModelSpec, model_path: Path | None, devices: Sequence[str], local_only: bool,
                     allow_pickle: bool, dtype: torch.dtype) -> Opened:
    """A registry model: its source, a --model-path directory, or its hub id at the pinned revision. A directory
    the user named is checked first, and anything wrong with it is a ModelPathError (an error, not a skip)."""
    if spec.source is not None and model_path is None:
        return open_source(spec, dtype, devices, local_only, allow_pickle)
    if model_path is None:
        return open_hub(spec, spec.hf_id, spec.revision, dtype, devices, local_only, allow_pickle)
    found = modeldir.problem(model_path) if not spec.tiny else None
    if found:
        raise ModelPathError(f"--model-path {spec.id}={model_path}: the path {found}; give {modeldir.HOW}")
    try:
        return open_directory(spec, model_path, dtype, devices, allow_pickle)
    except Exception as err:  # re-raised as what it means: the user's directory does not load
        raise _path_error(spec, model_path, err) from err


def load(
    spec: ModelSpec,
    *,
    weights: str = "pretrained",
    device: str = "cpu",
    model_path: Path | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    allow_download: bool = False,
    shard_devices: Sequence[str] = (),
    dtype: str | None = None,
    allow_pickle: bool = False,
    validate: bool = True,
) -> LoadedModel:
    """Load a model as the claim needs it. Missing weights raise ModelUnavailable with the fix.

    `shard_devices` (two or more GPUs) splits the model layer-wise across them with accelerate. `dtype` (a
    claim protocol's, e.g. "float16") overrides the registry's dtype for the spec. Unless `validate` is False,
    the loaded model is checked (harness.engine.validation) before it is returned.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # pytest captures output; a progress bar is noise in it
    devices = list(shard_devices) if len(shard_devices) > 1 else [device]
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}; allowed: {WEIGHTS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} for {spec.id!r}; allowed: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype or spec.dtype]
    offline = spec.tiny and model_path is None  # built here, with the offline tokenizer
    if offline:
        if cache_dir is None:
            raise ValueError(f"tiny model {spec.id!r} needs a cache_dir to be saved to and loaded from")
        model_path = build_tiny(spec, cache_dir / spec.id, seed=seed)
    if weights == "random" and not spec.tiny:
        if not spec.config:
            raise ModelUnavailable(f"--weights random builds a registered architecture file, and {spec.id!r} "
                                   f"(from {spec.origin}) has none; run it with its pretrained weights")
        lm = _load_random(spec, devices, seed, torch_dtype)
    else:
        lm = _load_pretrained(spec, model_path, devices, allow_download, allow_pickle, torch_dtype, offline)
    if validate:
        from harness.engine.validation import validate_model  # it runs the engine, which imports this module

        lm.provenance["validation"] = validate_model(lm)
    return lm


def _load_pretrained(spec: ModelSpec, model_path: Path | None, devices: Sequence[str], allow_download: bool,
                     allow_pickle: bool, dtype: torch.dtype, offline: bool = False) -> LoadedModel:
    """`offline`: a tiny model built here, whose offline tokenizer decodes stray bytes as escapes."""
    local_only = allow_download is False or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        opened = _open_registered(spec, model_path, devices, local_only, allow_pickle, dtype)
    except OSError as err:
        if local_only and spec.origin == "registry":
            raise _not_cached(spec) from err
        raise ModelUnavailable(f"weights for {spec.id!r} not found ({err.__class__.__name__}: "
                               f"{str(err).splitlines()[0]}); " + _how_to_provide(spec)) from err
    model = opened.model
    if len(devices) == 1 and model.device.type != torch.device(devices[0]).type:
        model = model.to(devices[0])
    source = opened.source
    if spec.tiny:  # built in a temporary directory: name what it was built from, which is reproducible
        source = f"fixtures/models/{spec.config} (tiny, built at test time)"
    tokenizer = readable(opened.tokenizer) if offline else opened.tokenizer
    return LoadedModel(spec, model, _prepared(tokenizer), "tiny" if spec.tiny else "pretrained",
                       opened.resolved, source, {"format": opened.format})


def model_seed(spec: ModelSpec, seed: int) -> int:
    """The seed of one model's random weights: the run's seed offset by a stable hash of the model id, so a
    base and its instruct twin of the same architecture do not get identical weights."""
    return seed + int(hashlib.sha256(spec.id.encode()).hexdigest()[:6], 16)


def _load_random(spec: ModelSpec, devices: Sequence[str], seed: int, dtype: torch.dtype | None = None) -> LoadedModel:
    """The published architecture at full size with seeded random weights and the offline tokenizer.

    On one device the weights are drawn there; to shard, they are drawn on the CPU and then dispatched, so a
    sharded model holds exactly the weights a single-device model built with init on the CPU holds.
    """
    lines = corpus_lines()
    config = _config_from(spec)
    weight_seed = model_seed(spec, seed)
    dtype = dtype or DTYPES[spec.dtype]
    if len(devices) == 1:
        model = _from_config(config, dtype, devices[0], weight_seed)
    else:
        model = place(_from_config(config, dtype, "cpu", weight_seed), devices)
    tokenizer = build_offline_tokenizer(lines)
    resolved = f"random:seed{seed}:{_digest(architecture(spec))}"
    provenance = {"format": "random-init", "tokenizer": f"harness-offline-bpe:{corpus_digest(lines)}",
                  "random_seed": seed,
                  "weight_seed": weight_seed, "devices": list(devices)}
    return LoadedModel(spec, model, _prepared(readable(tokenizer)), "random", resolved,
                       f"fixtures/models/{spec.config}", provenance)


def null_seed(spec: ModelSpec, seed: int) -> int:
    """The seed of a model's null-weights twin: apart from `model_seed`, so that under `--weights random` the
    twin is not the model under test itself."""
    return model_seed(spec, seed) + 0x5EED


def _model_devices(lm: LoadedModel) -> list[str]:
    """The devices `lm` sits on: every device of an accelerate device map, else the one of its parameters."""
    mapped = getattr(lm.model, "hf_device_map", None) or {}
    found = [d for d in dict.fromkeys(str(v) for v in mapped.values()) if d not in ("cpu", "disk")]
    return [f"cuda:{d}" if d.isdigit() else d for d in found] or [str(lm.device)]


def random_twin(lm: LoadedModel, seed: int) -> LoadedModel:
    """A seeded random-weight twin of `lm` for the null-weights check: the same config (architecture), dtype,
    device(s) and tokenizer, with the weights drawn afresh where the model sits (no copy of the trained ones).
    """
    config = copy.deepcopy(lm.model.config)
    devices = _model_devices(lm)
    weight_seed = null_seed(lm.spec, seed)
    if len(devices) == 1:
        model = _from_config(config, lm.model.dtype, devices[0], weight_seed)
    else:
        model = place(_from_config(config, lm.model.dtype, "cpu", weight_seed), devices)
    resolved = f"random-twin:seed{weight_seed}:{_digest(config.to_dict())}"
    provenance = {"twin_of": lm.id, "twin_of_revision": lm.resolved_revision, "weight_seed": weight_seed,
                  "devices": devices}
    return LoadedModel(lm.spec, model, lm.tokenizer, "random", resolved, f"random-weight twin of {lm.source}",
                       provenance)


def _prepared(tokenizer: Any) -> Any:
    """Right padding for forward passes (positions stay exact); a pad token where the model has none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
