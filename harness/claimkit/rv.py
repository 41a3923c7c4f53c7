"""The R_V contraction claim: measurement, the published comparison, and its controls.

R_V = PR(late v) / PR(early v) on the last W tokens of each prompt (claims-spec A.1). Every protocol here
returns a protocol result (harness.claimkit.results); the test module only chooses which one to run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.analysis import stats
from harness.analysis.metrics import participation_ratio, r_v
from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim
from harness.claimkit.results import protocol_result
from harness.engine.formatting import PromptFormat
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, forward_capture, token_counts
from harness.engine.sites import map_layer


@dataclass
class RVRun:
    """Per-prompt R_V with its ingredients; `excluded` counts prompts dropped, by reason."""

    prompts: list[str]
    r_v: list[float]
    pr_early: list[float]
    pr_late: list[float]
    tokens: list[int]
    excluded: Counter[str]


def layers_for(claim: Claim, lm: LoadedModel) -> tuple[int, int]:
    """The claim's early and late layers, mapped by relative depth to this model."""
    n = lm.dims.n_layers
    early = map_layer(claim.protocol["early_layer"], claim.published_n_layers, n)
    late = map_layer(claim.protocol["late_layer"], claim.published_n_layers, n)
    return early, late


def measure(lm: LoadedModel, claim: Claim, prompts: Sequence[str], window: Window, batch_size: int = 32,
            min_tokens: int = 1, fmt: PromptFormat | None = None) -> RVRun:
    """R_V per prompt in `fmt` (default: the claim protocol's); prompts shorter than `min_tokens` or with a NaN
    PR are counted, never silently lost."""
    early, late = layers_for(claim, lm)
    point = claim.protocol["site"]
    fmt = fmt or PromptFormat.of(claim.protocol)
    counts = token_counts(lm, prompts, fmt)
    keep = [p for p, t in zip(prompts, counts, strict=True) if t >= min_tokens]
    excluded: Counter[str] = Counter(shorter_than_window=len(prompts) - len(keep))
    if not keep:
        return RVRun([], [], [], [], [], excluded)
    sites = [f"blocks.{early}.{point}", f"blocks.{late}.{point}"]
    cap = forward_capture(lm, keep, sites, window, batch_size, fmt)
    excluded["oom_batch_halvings"] = cap.halvings
    centred = bool(claim.protocol.get("centred", False))
    pr_e = participation_ratio(cap.windows[sites[0]], cap.rows, centred).cpu()
    pr_l = participation_ratio(cap.windows[sites[1]], cap.rows, centred).cpu()
    ratio = r_v(pr_l, pr_e)
    finite = torch.isfinite(ratio)
    overflow = ~(torch.isfinite(cap.windows[sites[0]]).all(dim=(1, 2)) &
                 torch.isfinite(cap.windows[sites[1]]).all(dim=(1, 2))).cpu()
    excluded["non_finite_activation"] = int(overflow.sum())
    excluded["nan_pr"] = int((~finite & ~overflow).sum())
    idx = [i for i in range(len(keep)) if bool(finite[i])]
    return RVRun([keep[i] for i in idx], [float(ratio[i]) for i in idx], [float(pr_e[i]) for i in idx],
                 [float(pr_l[i]) for i in idx], [cap.lengths[i] for i in idx], excluded)


EQUAL_VARIANCES = {"student_t": True}  # [protocol].test -> scipy's equal_var


def published_p_rows(claim: Claim, base: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """The source's test of baseline against recursive R_V, as [protocol].test and .alternative name it
    (Student t, one-sided: baseline greater): its p per row of (draws, n) arrays (or for one sample)."""
    p = claim.protocol
    return stats.t_test_rows(base, rec, EQUAL_VARIANCES[p["test"]], p["alternative"])[1]


def published_test(claim: Claim, base: Sequence[float], rec: Sequence[float]) -> stats.TestResult:
    """`published_p_rows` on one sample, with its statistic, as the report records it."""
    p = claim.protocol
    stat, _, df = stats.t_test_rows(np.asarray(base, float), np.asarray(rec, float), EQUAL_VARIANCES[p["test"]],
                                    p["alternative"])
    value = published_p_rows(claim, np.asarray(base, float), np.asarray(rec, float))
    return stats.TestResult(p["test"], float(stat), float(value), float(df), p["alternative"])


def compare(rec: RVRun, base: RVRun, seed: int = 0,
            claim: Claim | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The published comparison (`published_test`; without a claim, Student t one-sided, baseline > recursive)
    plus robust companions."""
    observed: dict[str, Any] = {"n_recursive": len(rec.r_v), "n_baseline": len(base.r_v)}
    if len(rec.r_v) < 2 or len(base.r_v) < 2:
        observed.update(separation=float("nan"), p_value=float("nan"))
        return observed, {}
    d_rec, d_base = stats.describe(rec.r_v), stats.describe(base.r_v)
    student = published_test(claim, base.r_v, rec.r_v) if claim is not None else stats.student_t(base.r_v, rec.r_v)
    observed.update(recursive_mean=d_rec["mean"], recursive_std_ddof0=d_rec["std_ddof0"],
                    baseline_mean=d_base["mean"], baseline_std_ddof0=d_base["std_ddof0"],
                    separation=d_base["mean"] - d_rec["mean"], t=student.statistic, p_value=student.p_value,
                    cohens_d=stats.cohens_d(base.r_v, rec.r_v),
                    mean_tokens_recursive=float(np.mean(rec.tokens)), mean_tokens_baseline=float(np.mean(base.tokens)))
    tests = {student.test: student.as_dict(), "welch_t": stats.welch_t(base.r_v, rec.r_v).as_dict(),
             "student_t_two_sided": stats.student_t(base.r_v, rec.r_v, "two-sided").as_dict(),
             "mann_whitney": stats.mann_whitney(base.r_v, rec.r_v).as_dict(),
             "bootstrap_ci_separation": stats.bootstrap_mean_diff_ci(base.r_v, rec.r_v, seed=seed)}
    return observed, tests


def _per_prompt(run: RVRun) -> list[dict[str, Any]]:
    return [{"prompt": p, "r_v": v, "pr_early": e, "pr_late": late, "tokens": t}
            for p, v, e, late, t in zip(run.prompts, run.r_v, run.pr_early, run.pr_late, run.tokens, strict=True)]


def _exclusions(*runs: RVRun) -> dict[str, int]:
    """Prompts dropped, by reason, over all runs (oom_batch_halvings counts retries, not prompts)."""
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.excluded)
    return {k: v for k, v in total.items() if v}


def _prompts(bank: PromptBank, categories: Sequence[str]) -> list[str]:
    return [p for name in categories for p in bank.category(name)]


@dataclass(frozen=True)
class Context:
    """What every protocol needs."""

    claim: Claim
    lm: LoadedModel
    bank: PromptBank
    seed: int = 0
    batch_size: int = 32
    # Wraps every measurement, given the prompts, window and format it will run (the known-answer tests plant
    # an effect here).
    around_run: Callable[[Sequence[str], Window, PromptFormat], AbstractContextManager[Any]] | None = None

    @property
    def fmt(self) -> PromptFormat:
        """The protocol's prompt format: [protocol].chat_template and .bos."""
        return PromptFormat.of(self.claim.protocol)

    def window(self, size: int | None = None, exclude_bos: bool | None = None) -> Window:
        p = self.claim.protocol
        return Window(size or p["window"], p["exclude_bos"] if exclude_bos is None else exclude_bos)

    def run(self, prompts: Sequence[str], window: Window, min_tokens: int = 1,
            fmt: PromptFormat | None = None) -> RVRun:
        fmt = fmt or self.fmt
        wrap = self.around_run(prompts, window, fmt) if self.around_run is not None else nullcontext()
        with wrap:
            return measure(self.lm, self.claim, prompts, window, self.batch_size, min_tokens, fmt)


def _two_groups(ctx: Context, protocol: str, kind: str, criterion: dict[str, Any], rec: RVRun, base: RVRun,
                extra: dict[str, Any] | None = None, notes: tuple[str, ...] = ()) -> dict[str, Any]:
    observed, tests = compare(rec, base, ctx.seed, ctx.claim)
    observed.update(extra or {})
    published = {k: v for k, v in ctx.claim.published.items() if isinstance(v, int | float)}
    return protocol_result(ctx.claim, protocol, kind, criterion, observed, lm=ctx.lm, banks=(ctx.bank,),
                           n={"recursive": len(rec.r_v), "baseline": len(base.r_v)},
                           exclusions=_exclusions(rec, base), tests=tests, published=published, notes=notes,
                           data={"recursive": _per_prompt(rec), "baseline": _per_prompt(base)})


def as_published(ctx: Context, criterion_name: str = "as_coded") -> dict[str, Any]:
    p = ctx.claim.protocol
    rec = ctx.run(ctx.bank.category(p["recursive_category"]), ctx.window())
    base = ctx.run(ctx.bank.category(p["baseline_category"]), ctx.window())
    protocol = "as_published" if criterion_name == "as_coded" else f"as_published_{criterion_name}"
    pr = {**pr_means(rec, base),
          "window_equals_prompt_fraction": stats.nan_mean([float(t <= p["window"]) for t in rec.tokens + base.tokens])}
    return _two_groups(ctx, protocol, "as_published", ctx.claim.criteria[criterion_name], rec, base, pr)


def pr_means(rec: RVRun, base: RVRun) -> dict[str, float]:
    """PR_early and PR_late reported separately, per condition (the ratio alone hides which one moved)."""
    return {"pr_early_mean_recursive": stats.nan_mean(rec.pr_early),
            "pr_late_mean_recursive": stats.nan_mean(rec.pr_late),
            "pr_early_mean_baseline": stats.nan_mean(base.pr_early),
            "pr_late_mean_baseline": stats.nan_mean(base.pr_late)}


def rederive(claim: Claim, published_dir: Path) -> dict[str, Any]:
    """Recover the published t and p from the published summary (ddof=0 stds converted), no model needed."""
    pub = claim.published
    section = json.loads((published_dir / pub["data_file"]).read_text(encoding="utf-8"))[pub["data_section"]]
    res = stats.t_from_stats(section["baseline_mean"], section["baseline_std"], pub["n_baseline"],
                             section["recursive_mean"], section["recursive_std"], pub["n_recursive"])
    wrong = stats.t_from_stats(section["baseline_mean"], section["baseline_std"], pub["n_baseline"],
                               section["recursive_mean"], section["recursive_std"], pub["n_recursive"], ddof0=False)
    observed = {"t": res.statistic, "p_value": res.p_value, "t_abs_error": abs(res.statistic - pub["t"]),
                "p_abs_error": abs(res.p_value - pub["p_value"]), "t_without_ddof_conversion": wrong.statistic,
                "p_without_ddof_conversion": wrong.p_value,
                "meets_protocol_separation": float(section["separation"] >= pub["protocol_separation_min"])}
    per = stats.student_t(pub["baseline_per_prompt"], pub["recursive_per_prompt"])
    observed.update(t_from_per_prompt=per.statistic, p_from_per_prompt=per.p_value)
    published = {"t": pub["t"], "p_value": pub["p_value"], "json_t": section["t_statistic"],
                 "json_p": section["p_value"]}
    return protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                           tests={"student_t_from_stats": res.as_dict()}, published=published,
                           n={"recursive": pub["n_recursive"], "baseline": pub["n_baseline"]},
                           notes=("Student t, equal variances, one-sided, df = 14, after s * sqrt(n/(n-1)).",))


def match_by_tokens(targets: Sequence[int], pool: Sequence[int]) -> list[tuple[int, int]]:
    """Pair each target with the first unused pool item of exactly equal token count (greedy, in order)."""
    free: dict[int, list[int]] = {}
    for j, count in enumerate(pool):
        free.setdefault(count, []).append(j)
    return [(i, free[c].pop(0)) for i, c in enumerate(targets) if free.get(c)]


Protocol = Callable[[Context], dict[str, Any]]
