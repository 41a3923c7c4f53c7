"""A fast check, on load, that the site layout fits the model (nnterp's idea): a few forwards on two prompts.

1. Sites: every point resolves at the first and the last layer and holds a tensor of the width the config
   implies; resid_pre of layer 0 and resid_post of every layer but the last equal the model's own
   `output_hidden_states` (the last is normalised by the model before it is returned).
2. Entropy: the in-forward attention entropy (harness.engine.attention) equals the entropy of the eager
   attention patterns (`output_attentions`), every layer and head, on both prompts padded into one batch.
3. Batching: windows captured for both prompts in one batch equal those captured one prompt at a time (on a
   mixture-of-experts model, layer 0's attention: see `check_batched`).

A failure raises ModelValidationError naming the model, the check and the size of the mismatch: the layout in
harness/engine/architectures.py does not fit this model, and no claim should run on it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from harness.engine.attention import attention_entropy
from harness.engine.hooks import capture
from harness.engine.runner import Encoded, Window, encode, forward_capture
from harness.engine.sites import POINTS, site_width

if TYPE_CHECKING:
    from collections.abc import Iterator

    from harness.engine.models import LoadedModel

PROMPTS = ("The capital of France is", "Water boils at one hundred degrees Celsius at sea level, and")
EPS = 1e-8  # the published entropy's smoothing (harness.engine.attention)


class ModelValidationError(RuntimeError):
    """The site layout does not fit a loaded model; the message names the model, the check and the mismatch."""


HALF_EPS = 32  # half-precision tolerance, in units of the dtype's machine epsilon


def tolerance(lm: LoadedModel) -> float:
    """Relative tolerance of the checks: tight in float32; in half precision 32 machine epsilons of the dtype
    (float16: 0.031; bfloat16, whose mantissa is 3 bits shorter: 0.25). Two correct computations of one
    bfloat16 model (fused against eager attention, a batch against one prompt) differ by 0.03-0.05 at full size
    (random weights, one H200, 2026-12-01), which a float16 tolerance calls a layout error; a site that does
    not fit the architecture is off by the size of the values themselves. The report records the figure."""
    dtype = lm.model.dtype
    return 1e-4 if dtype == torch.float32 else HALF_EPS * torch.finfo(dtype).eps


def _fail(lm: LoadedModel, check: str, detail: str) -> ModelValidationError:
    return ModelValidationError(
        f"model {lm.id!r} (model_type {getattr(lm.model.config, 'model_type', None)!r}) failed the {check} check "
        f"on load: {detail}; the site layout (harness/engine/architectures.py) does not fit it")


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of `want` (at least 1)."""
    scale = max(1.0, float(want.abs().max()))
    return float((got.float() - want.float()).abs().max()) / scale


def check_sites(lm: LoadedModel, enc: Encoded) -> dict[str, Any]:
    dims, last = lm.dims, lm.dims.n_layers - 1
    sites = [f"blocks.{layer}.{point}" for layer in sorted({0, last}) for point in POINTS]
    sites += [f"blocks.{layer}.resid_post" for layer in range(last) if layer not in (0, last)]
    with torch.no_grad(), capture(lm.model, sites, model_name=lm.id) as acts:
        hidden = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                          output_hidden_states=True).hidden_states
    shape = tuple(enc.input_ids.shape)
    for name, (tensor, *_) in acts.items():
        want = (*shape, site_width(name.split(".", 2)[2], dims))
        if tuple(tensor.shape) != want:
            raise _fail(lm, "site shape", f"{name} holds {tuple(tensor.shape)}, the config implies {want}")
    mask = enc.attention_mask.bool()[..., None]  # padded rows are not compared
    pairs = [(acts["blocks.0.resid_pre"][0], hidden[0], "blocks.0.resid_pre")]
    pairs += [(acts[f"blocks.{layer}.resid_post"][0], hidden[layer + 1], f"blocks.{layer}.resid_post")
              for layer in range(last)]
    worst = 0.0
    for got, want, name in pairs:
        error = _error(got * mask, want.to(got.device) * mask)
        if error > tolerance(lm):
            raise _fail(lm, "hidden state", f"{name} differs from output_hidden_states by {error:.3g} (relative)")
        worst = max(worst, error)
    return {"sites_checked": len(sites), "hidden_states_max_rel_error": worst}


@contextmanager
def _eager(model: Any) -> Iterator[None]:
    saved = model.config._attn_implementation
    if saved != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if saved != "eager":
            model.set_attn_implementation(saved)


def _published_entropy(pattern: torch.Tensor, length: int) -> torch.Tensor:
    """(head,) mean over the prompt's queries of the smoothed entropy of each attention row, in float64."""
    rows = pattern[:, :length, :length].double() + EPS  # (head, q, k)
    rows = rows / rows.sum(-1, keepdim=True)
    return (-(rows * rows.log()).sum(-1)).mean(-1)


def check_entropy(lm: LoadedModel, enc: Encoded) -> dict[str, Any]:
    """The in-forward entropy against entropies of eager attention patterns, every layer; on a mixture-of-experts
    model layer 0 only: the second (eager) forward rounds differently, which in half precision tips routers'
    near-ties and sends later layers down other experts (Mixtral-8x7B in bfloat16 on an H200: 0.19 nats at
    depth, 2026-12-01), so later layers would compare two different computations."""
    with torch.no_grad(), attention_entropy(lm.model, variants=("published",)) as engine:
        lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        published = engine.pop().cpu().published  # (layer, batch, head)
    if published is None:
        raise _fail(lm, "attention entropy", "the engine returned no published entropy")
    with torch.no_grad(), _eager(lm.model):
        patterns = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                            output_attentions=True).attentions  # each (batch, head, q, k)
    layers = patterns[:1] if routed(lm) else patterns
    worst = 0.0
    for layer, pattern in enumerate(layers):
        for row, length in enumerate(enc.lengths):
            want = _published_entropy(pattern[row].cpu(), length)
            error = float((published[layer, row].double() - want).abs().max())
            worst = max(worst, error)
            if error > tolerance(lm) * max(1.0, float(want.abs().max())):
                raise _fail(lm, "attention entropy", f"layer {layer}, prompt {row}: in-forward entropy differs "
                            f"from the eager patterns' by {error:.3g} nats")
    return {"entropy_max_abs_error": worst, "entropy_layers_checked": len(layers)}


def routed(lm: LoadedModel) -> bool:
    """A mixture-of-experts model: a router picks experts per token (Mixtral: `num_local_experts`)."""
    config = lm.model.config
    return bool(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None))


def check_batched(lm: LoadedModel) -> dict[str, Any]:
    """Windows of a batch against one prompt at a time: a mid-layer v and the last residual, or, on a
    mixture-of-experts model, layer 0's attention (before any router: in half precision the rounding a batch
    changes can tip a near-tie between two experts, which then changes every later layer for that token)."""
    last = lm.dims.n_layers - 1
    sites = ([f"blocks.{last // 2}.attn.v", f"blocks.{last}.resid_post"] if not routed(lm)
             else ["blocks.0.attn.z", "blocks.0.attn.out"])
    window = Window(4)
    together = forward_capture(lm, PROMPTS, sites, window, batch_size=len(PROMPTS))
    alone = forward_capture(lm, PROMPTS, sites, window, batch_size=1)
    worst = max(_error(together.windows[s], alone.windows[s]) for s in sites)
    if worst > tolerance(lm):
        raise _fail(lm, "batched", f"a batch of {len(PROMPTS)} prompts differs from one prompt at a time by "
                    f"{worst:.3g} (relative)")
    return {"batched_max_rel_error": worst, **({"batched_sites": sites} if routed(lm) else {})}


def validate_model(lm: LoadedModel) -> dict[str, Any]:
    """Run the three checks; their figures go into the model's entry of the report."""
    enc = encode(lm, PROMPTS)
    return {"prompts": len(PROMPTS), "tolerance": tolerance(lm), "dtype": str(lm.model.dtype).removeprefix("torch."),
            **check_sites(lm, enc), **check_entropy(lm, enc), **check_batched(lm)}
