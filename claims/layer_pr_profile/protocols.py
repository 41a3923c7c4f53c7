"""The layer-by-layer hidden-state PR profile (claims-spec A.6): as published, re-derived from the published
table, and under the BOS-excluded window (W-A8) and the source's [INST] format comparison.

PR is the source diagnostic's: mean-centred covariance of a window of each `output_hidden_states` entry, divided
by W, eigenvalues clamped (`api.covariance_pr`). The published columns are indices into the n_layers + 1 hidden
states of a 32-layer model; on another depth column c reads state c * n_layers // 32 (the last column is the
post-norm state on every depth).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from harness import api

SCHEMA = api.Schema(
    protocol={"columns": list[int], "middle_columns": list[int], "window": int, "eig_floor": float,
              "strict_tolerance": float, "recursive_category": str, "baseline_category": str,
              "chat_template": bool, "bos": bool, "dtype": Literal["float16", "bfloat16", "float32"],
              "control_alpha": float},
    controls={"bos_excluded": {"categories": list[str], "min_prompts": int},
              "inst_format": {"template": str, "norm_columns": list[int]}},
)

Positions = Callable[[int], list[int]]
"""The window of a prompt of T tokens: the positions whose rows enter PR."""


def last_rows(size: int, first: int = 0) -> Positions:
    """The last min(size, T - first) positions, never before `first` (1: position 0 left out)."""
    return lambda length: list(range(max(length - size, first), length))


def sink_and_last(size: int) -> Positions:
    """Position 0 and the last size - 1 positions: the attention-sink row put back into a window of `size`."""
    return lambda length: [0, *range(max(length - size + 1, 1), length)]


@dataclass(frozen=True)
class Profile:
    """One prompt: PR at every hidden state over its window, and the norms of its rows."""

    prompt: str
    tokens: int
    pr: list[float]  # (n_layers + 1,)
    sink_norm: list[float]  # norm of position 0 per state
    other_norm: list[float]  # median norm of the other positions per state
    last_norm: list[float]  # norm of the last token per state


def profiles(lm: api.LoadedModel, prompts: Sequence[str], positions: Positions, floor: float,
             fmt: api.PromptFormat, batch_size: int = 32) -> list[Profile]:
    """PR profile of every prompt over `positions(T)`, batch by batch (only the reductions are kept)."""
    out: list[Profile] = []
    for enc, hidden in api.iter_hidden_states(lm, prompts, batch_size, fmt):
        states = torch.stack(hidden, dim=1)  # (batch, n_states, seq, d_model)
        for i, length in enumerate(enc.lengths):
            rows = states[i, :, positions(length)].float()  # (n_states, W, d_model)
            pr = api.covariance_pr(rows, floor=floor)
            norms = states[i, :, :length].float().norm(dim=-1)  # (n_states, T)
            others = norms[:, 1:].median(dim=-1).values if length > 1 else torch.full_like(norms[:, 0], float("nan"))
            out.append(Profile(prompts[len(out)], length, pr.cpu().tolist(), norms[:, 0].cpu().tolist(),
                               others.cpu().tolist(), norms[:, -1].cpu().tolist()))
    return out


def state_of(column: int, published_n_layers: int, n_layers: int) -> int:
    """A published hidden-state index on a model of `n_layers` (relative depth; the last is the last)."""
    return column * n_layers // published_n_layers


@dataclass(frozen=True)
class Context:
    claim: api.Claim
    lm: api.LoadedModel
    bank: api.PromptBank
    seed: int = 0
    batch_size: int = 32

    @property
    def fmt(self) -> api.PromptFormat:
        return api.PromptFormat.of(self.claim.protocol)

    @property
    def tolerance(self) -> float:
        return float(self.claim.criteria["as_published"]["middle_max_abs_dev"]["le"])

    def states(self, key: str = "columns") -> list[int]:
        return [state_of(c, self.claim.published_n_layers, self.lm.dims.n_layers) for c in self.claim.protocol[key]]

    def run(self, prompts: Sequence[str], positions: Positions, fmt: api.PromptFormat | None = None) -> list[Profile]:
        return profiles(self.lm, prompts, positions, self.claim.protocol["eig_floor"], fmt or self.fmt,
                        self.batch_size)


def middle_dev(ctx: Context, profile: Profile) -> float:
    """max over the middle columns of |PR - 1|: how far the prompt's profile is from the conclusion."""
    return float(np.max([abs(profile.pr[s] - 1.0) for s in ctx.states("middle_columns")]))  # NaN propagates


def middle_median(ctx: Context, profiles_: Sequence[Profile]) -> float:
    """The median PR over prompts and middle columns (one odd layer cannot move it, unlike the max)."""
    return float(np.median([p.pr[s] for p in profiles_ for s in ctx.states("middle_columns")]))


def sink_ratio(ctx: Context, profiles_: Sequence[Profile]) -> float:
    """Mean over prompts and middle columns of |h_0| / median |h_t|, t > 0: the attention-sink row's weight."""
    middle = ctx.states("middle_columns")
    return float(np.nanmean([p.sink_norm[s] / p.other_norm[s] for p in profiles_ for s in middle]))


def _by_column(ctx: Context, profile: Profile, label: str) -> dict[str, float]:
    return {f"pr_{label}_L{c}": profile.pr[s] for c, s in zip(ctx.claim.protocol["columns"], ctx.states(), strict=True)}


def _figure(ctx: Context, series: dict[str, Profile]) -> dict[str, Any]:
    """Layout 3 of harness.report.figures: PR per hidden state, one line per prompt."""
    return {"kind": "layer_profile", "metric": "PR of the centred covariance (last-W window)", "units": "ratio",
            "layers": list(range(ctx.lm.dims.n_layers + 1)), "series": {k: {"mean": p.pr} for k, p in series.items()}}


def _published(claim: api.Claim) -> dict[str, float]:
    pub = claim.published
    return {**{f"pr_recursive_L{c}": v for c, v in zip(pub["columns"], pub["recursive"], strict=True)},
            **{f"pr_baseline_L{c}": v for c, v in zip(pub["columns"], pub["baseline"], strict=True)}}


def _mapping_note(ctx: Context) -> str:
    return (f"published hidden-state columns {ctx.claim.protocol['columns']} read states {ctx.states()} of "
            f"{ctx.lm.dims.n_layers + 1} (the last after the final norm)")


def published_pair(ctx: Context, fmt: api.PromptFormat | None = None) -> tuple[Profile, Profile]:
    p = ctx.claim.protocol
    positions = last_rows(p["window"])
    (rec,) = ctx.run(ctx.bank.category(p["recursive_category"])[:1], positions, fmt)
    (base,) = ctx.run(ctx.bank.category(p["baseline_category"])[:1], positions, fmt)
    return rec, base


def as_published(ctx: Context) -> dict[str, Any]:
    rec, base = published_pair(ctx)
    edges = [ctx.states()[0], ctx.states()[-1]]
    observed = {"middle_max_abs_dev": float(np.max([middle_dev(ctx, rec), middle_dev(ctx, base)])),
                "extremes_at_ends": float(all(min(p.pr[s] for s in edges) > max(p.pr[s] for s in ctx.states(
                    "middle_columns")) for p in (rec, base))),
                "middle_median_pr": middle_median(ctx, (rec, base)),
                "tokens_recursive": rec.tokens, "tokens_baseline": base.tokens,
                "sink_norm_ratio_middle": sink_ratio(ctx, (rec, base)),
                **_by_column(ctx, rec, "recursive"), **_by_column(ctx, base, "baseline")}
    data = {"pr_by_hidden_state": _figure(ctx, {"recursive": rec, "baseline": base}),
            "prompts": [{"prompt": p.prompt, "tokens": p.tokens, "window": min(p.tokens, ctx.claim.protocol["window"])}
                        for p in (rec, base)]}
    return api.protocol_result(ctx.claim, "as_published", "as_published", ctx.claim.criteria["as_published"],
                               observed, lm=ctx.lm, banks=(ctx.bank,), n={"recursive": 1, "baseline": 1},
                               published=_published(ctx.claim), notes=(_mapping_note(ctx),), data=data)


def bos_excluded(ctx: Context) -> dict[str, Any]:
    """Long prompts, a 16-row window without position 0: does "PR ~ 1.0" survive? (margin with a t interval)"""
    control, size = ctx.claim.control("bos_excluded"), ctx.claim.protocol["window"]
    prompts = [q for c in control["categories"] for q in ctx.bank.category(c)]
    counts = api.token_counts(ctx.lm, prompts, ctx.fmt)
    long = [q for q, t in zip(prompts, counts, strict=True) if t >= size + 1]
    excluded = {"shorter_than_window_plus_1": len(prompts) - len(long)} if len(long) < len(prompts) else {}
    if len(long) < control["min_prompts"]:
        observed = {m: float("nan") for m in control["criterion"]}
        return api.protocol_result(ctx.claim, "control:bos_excluded", "control", control["criterion"], observed,
                                   lm=ctx.lm, banks=(ctx.bank,), n={"prompts": len(long)}, exclusions=excluded,
                                   notes=(f"inconclusive: {len(long)} prompts of at least {size + 1} tokens, "
                                          f"need {control['min_prompts']}",))
    without = ctx.run(long, last_rows(size, first=1))
    with_sink = ctx.run(long, sink_and_last(size))
    margins = [ctx.tolerance - middle_dev(ctx, p) for p in without]
    stated = api.paired_effect(api.EffectSpec.of(ctx.claim, "bos_excluded"), margins, [0.0] * len(margins))
    observed = {**stated.observed, "middle_max_abs_dev": float(np.max([middle_dev(ctx, p) for p in without])),
                "middle_max_abs_dev_with_position_0": float(np.max([middle_dev(ctx, p) for p in with_sink])),
                "margin_with_position_0": float(np.mean([ctx.tolerance - middle_dev(ctx, p) for p in with_sink])),
                "middle_median_pr": middle_median(ctx, without),
                "middle_median_pr_with_position_0": middle_median(ctx, with_sink),
                "sink_norm_ratio_middle": sink_ratio(ctx, without), "mean_tokens": float(np.mean(
                    [p.tokens for p in without]))}
    data = {"pr_by_hidden_state": _figure(ctx, {f"prompt {i}": p for i, p in enumerate(without)}),
            "prompts": [{"prompt": p.prompt, "tokens": p.tokens, "margin": m, "middle_dev_with_position_0":
                         middle_dev(ctx, q)} for p, q, m in zip(without, with_sink, margins, strict=True)]}
    return api.protocol_result(ctx.claim, "control:bos_excluded", "control", control["criterion"], observed,
                               lm=ctx.lm, banks=(ctx.bank,), n={"prompts": len(long)}, exclusions=excluded,
                               published={"margin": stated.effect.published}, notes=(_mapping_note(ctx),),
                               data=data, effect=stated.effect, n_needed=stated.n_needed)


def inst_format(ctx: Context) -> dict[str, Any]:
    """The source's diagnostic 1: '[INST] ... [/INST]' against plain text, and the criterion in that format."""
    table, p = ctx.claim.control("inst_format"), ctx.claim.protocol
    plain = published_pair(ctx)
    wrapped = [ctx.run([table["template"].format(prompt=x.prompt)], last_rows(p["window"]))[0] for x in plain]
    states = [state_of(c, ctx.claim.published_n_layers, ctx.lm.dims.n_layers) for c in table["norm_columns"]]
    observed: dict[str, Any] = {"middle_max_abs_dev": float(np.max([middle_dev(ctx, x) for x in wrapped])),
                                "middle_max_abs_dev_plain": float(np.max([middle_dev(ctx, x) for x in plain]))}
    for label, x, y in zip(("recursive", "baseline"), plain, wrapped, strict=True):
        observed[f"tokens_plain_{label}"], observed[f"tokens_inst_{label}"] = x.tokens, y.tokens
        for c, s in zip(table["norm_columns"], states, strict=True):
            observed[f"last_norm_plain_{label}_L{c}"] = x.last_norm[s]
            observed[f"last_norm_inst_{label}_L{c}"] = y.last_norm[s]
    data = {"pr_by_hidden_state": _figure(ctx, {"recursive [INST]": wrapped[0], "baseline [INST]": wrapped[1],
                                                "recursive": plain[0], "baseline": plain[1]})}
    return api.protocol_result(ctx.claim, "robustness:inst_format", "robustness", table["criterion"], observed,
                               lm=ctx.lm, banks=(ctx.bank,), n={"recursive": 1, "baseline": 1},
                               notes=(_mapping_note(ctx), f"format: {table['template']!r} as raw text"), data=data)


def rederive(claim: api.Claim) -> dict[str, Any]:
    """The published table's shape: its conclusion at the claim's tolerance, where its extremes lie, and the
    margins the bos_excluded control compares with."""
    pub, p = claim.published, claim.protocol
    tolerance = float(claim.criteria["as_published"]["middle_max_abs_dev"]["le"])
    rows = {"recursive": pub["recursive"], "baseline": pub["baseline"]}
    middle = [pub["columns"].index(c) for c in p["middle_columns"]]
    mid = {k: [v[i] for i in middle] for k, v in rows.items()}
    dev = {k: max(abs(x - 1.0) for x in v) for k, v in mid.items()}
    observed = {
        "middle_max_abs_dev": max(dev.values()),
        "extremes_at_ends": float(all(min(v[0], v[-1]) > max(mid[k]) for k, v in rows.items())),
        "middle_fraction_within_strict": float(np.mean([abs(x - 1.0) <= p["strict_tolerance"]
                                                        for v in mid.values() for x in v])),
        "middle_non_decreasing": float(all(a <= b for v in mid.values() for a, b in itertools.pairwise(v))),
        "recursive_at_least_baseline": float(all(a >= b for a, b in zip(rows["recursive"], rows["baseline"],
                                                                         strict=True))),
        "l0_ratio_recursive_over_baseline": rows["recursive"][0] / rows["baseline"][0],
        "last_ratio_recursive_over_baseline": rows["recursive"][-1] / rows["baseline"][-1],
        **{f"margin_{k}": tolerance - d for k, d in dev.items()},
        "margin": float(np.mean([tolerance - d for d in dev.values()])),
    }
    notes = (f"'~ 1.0' read as within {tolerance} of 1.0 (the claim's tolerance); at the strict reading "
             f"(+-{p['strict_tolerance']}) {observed['middle_fraction_within_strict']:.0%} of the middle cells hold",
             "the edges reflect the window, not the layers: centred PR is at most W - 1, and the two prompts differ "
             "in length, so L0 and the post-norm L32 scale with each prompt's token count")
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               published={"conclusion": pub["conclusion"]},
                               n={"rows": 2, "columns": len(pub["columns"])}, notes=notes)


Protocol = Callable[[Context], dict[str, Any]]
PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:bos_excluded": bos_excluded,
    "robustness:inst_format": inst_format,
}
