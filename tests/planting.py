"""Planted R_V: hooks that make each prompt's R_V come out as a chosen function of the prompt and its length.

`planted(lm, claim, target)` is an `around_run` for harness.claimkit.rv.Context. For every prompt it runs, it
overwrites the rows of the measurement window at the claim's early and late v sites so that
PR_early = w / 2 and PR_late = target(prompt, tokens) * w / 2 exactly (w = the prompt's window rows), hence
R_V = target(prompt, tokens). The rows are a shared direction plus one private direction each: w rows
a*e_0 + b*e_(1+i) have Gram b^2 (I + rho 11^T), rho = a^2 / b^2, so PR = (w + w rho)^2 / ((1 + w rho)^2 + w - 1),
which falls from w (rho = 0) towards 1 as rho grows; rho is solved for the PR wanted. Targets must lie in
[2 / w, 2] and the site needs more than w dimensions (tiny-mistral's v has 24).

Each row of a batch is recognised by its token ids, whatever the prompt format (a chat template included).
Everything else in the pipeline runs as it does for a claim: windows, PR, R_V, the protocols and the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from scipy import optimize

from harness.claimkit.registry import Claim
from harness.claimkit.rv import layers_for
from harness.engine.formatting import PromptFormat
from harness.engine.hooks import edit_site
from harness.engine.models import LoadedModel
from harness.engine.runner import Window

Target = Callable[[str, int], float]  # (prompt, token count) -> the R_V to plant


def noise(prompt: str) -> float:
    """A fixed standard-normal draw per prompt (seeded by its text)."""
    return float(np.random.default_rng(int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)).normal())


def centred_noise(groups: Sequence[Sequence[str]]) -> dict[str, float]:
    """`noise` per prompt, centred within each group (so a planted difference of means is exact per group)."""
    table: dict[str, float] = {}
    for prompts in groups:
        draws = np.array([noise(p) for p in prompts])
        table.update(zip(prompts, (draws - draws.mean()).tolist(), strict=True))
    return table


def rho_for(w: int, pr: float) -> float:
    """rho such that w rows a*e_0 + b*e_(1+i) with a^2 = rho b^2 have participation ratio `pr` (1 < pr <= w)."""
    if pr >= w:
        return 0.0

    def gap(x: float) -> float:  # x = w * rho
        return (w + x) ** 2 / ((1 + x) ** 2 + w - 1) - pr

    return float(optimize.brentq(gap, 0.0, 1e9)) / w


def rows(w: int, pr: float, width: int) -> torch.Tensor:
    """(w, width) rows with participation ratio `pr` (uncentred)."""
    if width <= w:
        raise ValueError(f"planting {w} rows needs more than {w} dimensions; the site has {width}")
    out = torch.zeros(w, width, dtype=torch.float64)
    out[:, 0] = rho_for(w, max(pr, 1.01)) ** 0.5
    out[torch.arange(w), 1 + torch.arange(w)] = 1.0
    return out


@contextmanager
def _batch_ids(model: Any) -> Iterator[dict[str, torch.Tensor]]:
    """The input ids and mask of the forward pass in flight (a pre-hook on the base model)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen["ids"], seen["mask"] = kwargs["input_ids"], kwargs["attention_mask"]

    handle = model.base_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def planted(lm: LoadedModel, claim: Claim, target: Target,
            exact: dict[str, float] | None = None) -> Callable[..., Any]:
    """An `around_run` that plants R_V = target(prompt, tokens) for every prompt the run measures; a run made of
    `exact`'s prompts alone (the published comparison) gets exact[prompt] instead (e.g. the published values)."""
    early, late = layers_for(claim, lm)
    point = claim.protocol["site"]

    @contextmanager
    def around(prompts: Sequence[str], window: Window, fmt: PromptFormat) -> Iterator[None]:
        chosen: Target = target
        if exact and set(prompts) <= set(exact):
            chosen = lambda p, _n: exact[p]  # noqa: E731
        texts, special = fmt.texts(lm.tokenizer, prompts, lm.spec.bos)
        known = {tuple(ids): p for ids, p in
                 zip(lm.tokenizer(texts, add_special_tokens=special)["input_ids"], prompts, strict=True)}

        def plant(ratio: Callable[[str, int, int], float]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def edit(v: torch.Tensor, _call: Any) -> torch.Tensor:  # v: (batch, seq, width)
                out = v.clone()
                for i, (ids, mask) in enumerate(zip(seen["ids"], seen["mask"], strict=True)):
                    length = int(mask.sum())
                    prompt = known[tuple(int(t) for t in ids[:length])]
                    start, stop = window.bounds(length)
                    w = stop - start
                    if w >= 2:
                        out[i, start:stop] = rows(w, ratio(prompt, length, w), v.shape[-1]).to(v.dtype)
                return out
            return edit

        def late_pr(prompt: str, length: int, w: int) -> float:
            return float(np.clip(chosen(prompt, length), 2.02 / w, 2.0)) * w / 2

        with ExitStack() as stack:
            seen = stack.enter_context(_batch_ids(lm.model))
            stack.enter_context(edit_site(lm.model, f"blocks.{early}.{point}", plant(lambda _p, _n, w: w / 2)))
            stack.enter_context(edit_site(lm.model, f"blocks.{late}.{point}", plant(late_pr)))
            yield

    return around


def scenario(name: str, claim: Claim, bank: Any) -> tuple[Target, dict[str, float] | None]:
    """The known answers of tests/test_known_answer.py, in terms of the claim's published separation:

    - "effect": recursive prompts lower by the published separation, small per-prompt noise (sd 0.05);
    - "length": R_V falls with the token count alone (0.05 per token), no label effect at all;
    - "half": recursive prompts lower by HALF the published separation with per-prompt noise (sd 0.35),
      while the published comparison itself (the 8 + 8 published prompts alone) gets the published values.
    """
    pub = claim.published
    sep = float(pub["separation"])
    recursive = {p for c in bank.categories if c.startswith("recursive") for p in bank.category(c)}
    z = centred_noise([bank.category(c) for c in bank.categories])
    if name == "effect":
        return (lambda p, _n: 1.15 - sep * (p in recursive) + 0.05 * z[p]), None
    if name == "length":
        return (lambda p, n: 1.75 - 0.05 * n + 0.02 * z[p]), None
    if name == "half":
        published = {**dict(zip(bank.category(claim.protocol["recursive_category"]), pub["recursive_per_prompt"],
                                strict=True)),
                     **dict(zip(bank.category(claim.protocol["baseline_category"]), pub["baseline_per_prompt"],
                                strict=True))}
        return (lambda p, _n: 1.15 - sep / 2 * (p in recursive) + 0.35 * z[p]), published
    raise ValueError(f"unknown scenario {name!r}; choose effect, length or half")
