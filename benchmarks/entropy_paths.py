"""Every layer's attention entropy, the ways the harness is compared with: materialised patterns (eager
attention with `output_attentions=True`, and TransformerLens `run_with_cache` on `hook_pattern`), reduced to
the published per-head entropy on the device the same way.

TransformerLens is an optional peer (`pip install -e ".[peers]"`). Its 3.x line is the last with
`HookedTransformer` (4.0 removed it) and 3.3+ supports transformers 5. It imports `datasets` at module level
for dataset helpers the benchmark never calls; where `datasets` cannot be imported (absent, or too old a
pyarrow beside it), `import_transformer_lens` stands in a stub for those three names during the import and
removes it from `sys.modules` afterwards. The stub raises if anything calls into it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import torch
from torch import nn

EPS = 1e-8  # the published epsilon (harness.attention.EPS)
_DATASETS_NAMES = {"datasets": ("load_dataset", "Dataset", "IterableDataset"),
                   "datasets.arrow_dataset": ("Dataset",), "datasets.iterable_dataset": ("IterableDataset",),
                   "datasets.load": ("load_dataset",)}


def pattern_entropy(pattern: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Published entropy per head from one layer's pattern (batch, head, q, k) and valid tokens (batch, k).

    p' = (p + eps) / (1 + T_b eps) over the prompt's T_b keys; H_q = -sum p' ln p'; the mean of H_q over its
    T_b queries. Returns (batch, head) float32, the value `harness.engine.attention` computes as `published`.
    """
    keys = valid[:, None, None, :]  # (batch, 1, 1, k)
    n_tokens = valid.sum(-1).to(torch.float32)  # (batch,)
    z = (1 + n_tokens * EPS)[:, None, None, None]
    smoothed = torch.where(keys, (pattern.to(torch.float32) + EPS) / z, 0.0)  # (batch, head, q, k)
    per_query: torch.Tensor = torch.special.entr(smoothed).sum(-1)  # (batch, head, q)
    weight = valid[:, None, :].to(torch.float32)  # (batch, 1, q)
    return (per_query * weight).sum(-1) / n_tokens[:, None]


def all_layers(patterns: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """(layer, batch, head) entropies, one layer's pattern at a time."""
    return torch.stack([pattern_entropy(p, valid) for p in patterns])


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch a transformers model to eager attention (which can return patterns) and back."""
    config: Any = model.config
    previous = config._attn_implementation
    model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_attn_implementation(previous)  # type: ignore[operator]


def _stub_datasets() -> dict[str, types.ModuleType]:
    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("datasets is stubbed by benchmarks/entropy_paths.py: install datasets to use it")

    stubs = {}
    for name, attrs in _DATASETS_NAMES.items():
        module = types.ModuleType(name, "stand-in for datasets during `import transformer_lens` (benchmarks)")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        for attr in attrs:
            setattr(module, attr, unavailable if attr == "load_dataset" else type(attr, (), {}))
        stubs[name] = module
    return stubs


def import_transformer_lens() -> tuple[types.ModuleType | None, str]:
    """(transformer_lens, note) or (None, why it cannot be imported, with the fix).

    A first import that fails for any reason but transformer_lens's absence is retried once with `datasets`
    stubbed (an optional peer can fail in many ways at import; each reason is reported, none is hidden).
    """
    try:
        return importlib.import_module("transformer_lens"), "datasets: real"
    except ModuleNotFoundError as err:
        if err.name == "transformer_lens":
            return None, f"transformer_lens is not installed ({err}); pip install -e '.[peers]'"
        first = f"{type(err).__name__}: {err}"
    except Exception as err:  # reported in the note, or in the skip reason below
        first = f"{type(err).__name__}: {err}"
    try:
        return _import_with_stub(), f"datasets: stubbed during import (first import: {first})"
    except Exception as err:  # the skip reason names both failures
        return None, (f"transformer_lens cannot be imported ({first}; with datasets stubbed: "
                      f"{type(err).__name__}: {err}); pip install -e '.[peers]'")


def _import_with_stub() -> types.ModuleType:
    for name in [m for m in sys.modules if m.split(".")[0] in ("transformer_lens", "datasets")]:
        del sys.modules[name]  # what a failed first import left half-finished
    stubs = _stub_datasets()
    sys.modules.update(stubs)
    try:
        return importlib.import_module("transformer_lens")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def rope_theta(config: Any) -> float:
    """The rotary base from a transformers config (5.x keeps it in rope_parameters)."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def tl_model(tl: types.ModuleType, config: Any, dtype: torch.dtype, device: torch.device, n_ctx: int
             ) -> nn.Module:
    """A HookedTransformer of the same architecture as a Mistral/Llama-family config, random weights (seed
    torch first), on `device`: parameters are created there, never on the CPU first."""
    dims_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cfg = tl.HookedTransformerConfig(
        d_model=config.hidden_size, d_head=dims_head, n_heads=config.num_attention_heads,
        n_key_value_heads=config.num_key_value_heads, d_mlp=config.intermediate_size,
        n_layers=config.num_hidden_layers, n_ctx=n_ctx, d_vocab=config.vocab_size, act_fn="silu",
        normalization_type="RMS", eps=config.rms_norm_eps, positional_embedding_type="rotary",
        rotary_dim=dims_head, rotary_base=rope_theta(config), gated_mlp=True, final_rms=True,
        original_architecture="MistralForCausalLM", default_prepend_bos=False, dtype=dtype,
        device=str(device))
    with torch.device(device):
        model: nn.Module = tl.HookedTransformer(cfg, move_to_device=False)
    return model.eval()


def tl_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(layer, batch, head) entropies from TransformerLens's cache of every layer's hook_pattern."""
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids, attention_mask=attention_mask,  # type: ignore[operator]
                                        names_filter=lambda name: name.endswith("hook_pattern"))
        cfg: Any = model.cfg
        n_layers = int(cfg.n_layers)
        patterns = [cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers)]
        return all_layers(patterns, attention_mask.bool())


def peer_version(module: types.ModuleType) -> str:
    try:
        return f"{module.__name__} {metadata.version(module.__name__.replace('_', '-'))}"
    except metadata.PackageNotFoundError:
        return module.__name__
