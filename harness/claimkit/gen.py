"""What the generation claims share: the protocol context, result packaging and the paired comparison. The
protocols themselves live in claims/l31_ablation_repetition and claims/residual_patch_collapse.

A published criterion is *non-diagnostic* when it also holds under its own null (the unablated text, another
layer, a random patch source): each such null is a protocol of kind `null` whose criterion is the published
one, and the verdict is `non_diagnostic` where one holds (harness.claimkit.verdicts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.analysis import stats
from harness.claimkit.context import ModelContext
from harness.claimkit.declare import protocol_kind
from harness.claimkit.registry import Claim, Criterion
from harness.claimkit.results import protocol_result
from harness.engine.generation import Condition, GenerationRun, Intervention, RowEdit, generate, generate_conditions


@dataclass(frozen=True)
class GenContext(ModelContext):
    """What every generation protocol needs: a ModelContext whose `batch_size` is the prompts per forward pass
    (source captures, as --claim-batch-size) and whose `cache` holds the generations a module's protocols share
    (run_keyed)."""

    generate_batch_size: int = 1024  # rows per generate call: each holds only prompt + new tokens of KV cache
    paths: list[dict[str, Any]] = field(default_factory=list)  # how each generated batch ran (PathRecord dicts)

    def prompts(self, categories: Sequence[str], limit: int | None = None) -> list[str]:
        found = [p for name in categories for p in self.bank.category(name)]
        return found[:limit] if limit is not None else found

    def generate(self, prompts: Sequence[str], intervention: Intervention | None = None) -> GenerationRun:
        """Greedy generation with the claim's max_new_tokens, `generate_batch_size` rows per call."""
        run = generate(self.lm, prompts, self.claim.protocol["max_new_tokens"], intervention=intervention,
                       batch_size=self.generate_batch_size, fmt=self.fmt)
        self.paths.extend(run.paths)
        return run

    def run(self, *conditions: Condition) -> dict[str, GenerationRun]:
        """Several conditions as rows of one batched generation (see `generation.generate_conditions`)."""
        runs = generate_conditions(self.lm, conditions, self.claim.protocol["max_new_tokens"],
                                   batch_size=self.generate_batch_size, fmt=self.fmt)
        self.paths.extend({id(p): p for run in runs.values() for p in run.paths}.values())
        return runs

    def run_keyed(self, prompts: Sequence[str],
                  conditions: Mapping[str, RowEdit | None]) -> dict[str, GenerationRun]:
        """`run` for conditions named by what they do (e.g. "normal", "ablate 29"), each generated once per model
        and prompt list for all the protocols that share `cache`: greedy rows do not depend on what else is in
        the batch, so a condition another protocol already generated is taken as it was, and only the missing
        ones run, together. The paths of the batches that made each run are recorded again for this protocol."""
        def key(name: str) -> tuple[Any, ...]:
            return id(self.lm.model), tuple(prompts), name

        missing = [name for name in conditions if key(name) not in self.cache]
        reused = {name: self.cache[key(name)] for name in conditions if name not in missing}
        self.paths.extend({id(p): p for run in reused.values() for p in run.paths}.values())
        if missing:  # `run` records the paths of what it makes
            made = self.run(*(Condition(name, prompts, conditions[name]) for name in missing))
            self.cache.update({key(name): made[name] for name in missing})
        return {name: self.cache[key(name)] for name in conditions}


def published_figures(claim: Claim) -> dict[str, Any]:
    """The claim's published figures (numbers and lists), without its file pointers."""
    return {k: v for k, v in claim.published.items() if k not in ("data_file", "data_section")}


def result(ctx: GenContext, protocol: str, criterion: Criterion, observed: Mapping[str, Any], **extra: Any,
           ) -> dict[str, Any]:
    """A protocol result for this context, of the kind its name and claim.toml give it."""
    data = {**dict(extra.pop("data", None) or {}), "generation_paths": path_summary(ctx.paths)}
    return protocol_result(ctx.claim, protocol, protocol_kind(ctx.claim, protocol), criterion, observed,
                           lm=ctx.lm, banks=(ctx.bank,), published=published_figures(ctx.claim), data=data, **extra)


def path_summary(paths: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which generation path ran the protocol's batches (see `harness.engine.generation`), and why not the
    graph path where it did not."""
    return {"batches": dict(Counter(p["path"] for p in paths)),
            "reasons": sorted({p["reason"] for p in paths if p.get("reason")}),
            "graphs_recorded": sum(bool(p.get("captured")) for p in paths)}


def control_criterion(ctx: GenContext, name: str) -> Criterion:
    return dict(ctx.claim.control(name)["criterion"])


def inconclusive(ctx: GenContext, protocol: str, n: Mapping[str, int], why: str) -> dict[str, Any]:
    """A result that could not be evaluated (too few prompts), with the reason as its note."""
    criterion = control_criterion(ctx, protocol.partition(":")[2])
    observed = {metric: float("nan") for metric in criterion}
    return result(ctx, protocol, criterion, observed, n=n, notes=(f"inconclusive: {why}",))


def mean_of(values: Sequence[float]) -> float:
    """The mean of per-item values (flags count as 0/1: a rate); 0.0 for none."""
    return float(np.mean(values)) if len(values) else 0.0


def paired(a: Sequence[float], b: Sequence[float], seed: int,
           n_resamples: int) -> tuple[float, float, dict[str, Any]]:
    """(mean(a - b), one-sided paired sign-flip permutation p, tests): the p is the criterion's, a paired t
    is reported beside it."""
    test = stats.paired_permutation(a, b, n_resamples=n_resamples, seed=seed)
    return test.statistic, test.p_value, {"paired_permutation": test.as_dict(),
                                          "paired_t": stats.paired_t(a, b).as_dict()}


def merged_calls(calls: Sequence[Any]) -> dict[str, Any]:
    """The CallLogs of every batch of one generation run, summed: hook calls by seq_len and edits."""
    by_seq_len: Counter[str] = Counter()
    edited = 0
    for log in calls:
        if log is not None:
            by_seq_len.update(log["by_seq_len"])
            edited += log["edited"]
    return {"by_seq_len": dict(sorted(by_seq_len.items(), key=lambda kv: int(kv[0]))), "edited": edited,
            "batches": len(calls)}


Protocol = Callable[[GenContext], dict[str, Any]]
