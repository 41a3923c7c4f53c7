"""The ratios the benchmarks report, the issue's targets for them, and the session's ratios JSON.

Every variant of a group is timed round by round against the group's baseline: each round runs the baseline,
then the variant, so a time ratio (variant median over the median of its own baseline rounds) cancels what the
machine adds to both, drift included. Two variants of one group compare through their paired ratios. Targets
are data (`TARGETS`); they are checked only under `--bench-assert-targets`, and always written to the JSON
with whether they were met.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import Memory
from harness.report.document import atomic_write, jsonable

SCHEMA = "claim-harness-bench/1"

# group -> the variant every other variant of the group is divided by
BASELINES = {
    "capture": "bare_full",
    "batching": "batched",
    "entropy": "bare_sdpa",
    "generation": "bare_generate",
}
METRICS = ("time", "memory_extra", "memory_total")


@dataclass(frozen=True)
class Target:
    """`variant`'s `metric` over `over`'s (the value itself, in seconds, where `over` is None) vs `bound`."""

    group: str
    variant: str
    over: str | None
    metric: str
    op: str  # "le" | "ge"
    bound: float
    note: str = ""

    def label(self) -> str:
        over = f" / {self.over}" if self.over else ""
        op = "<=" if self.op == "le" else ">="
        return f"{self.group}: {self.variant}{over} [{self.metric}] {op} {self.bound:g}"


# Issue 5, section 2: on the H100, Mistral-7B architecture, batch of 40 prompts around 24 tokens.
TARGETS = (
    Target("capture", "claim_sites_full", "bare_full", "time", "le", 1.03, "hooks alone, both full forwards"),
    Target("capture", "claim_sites", "bare_to_deepest", "time", "le", 1.03, "harness path, both stop early"),
    Target("batching", "one_at_a_time", "batched", "time", "ge", 20.0, "batched at least 20x faster"),
    Target("entropy", "harness_engine", "bare_sdpa", "time", "le", 1.15),
    Target("entropy", "harness_engine", "bare_sdpa", "memory_total", "le", 1.10, "weights + activations"),
    Target("entropy", "transformer_lens", "harness_engine", "time", "ge", 3.0, "ours at least 3x faster"),
    Target("entropy", "transformer_lens", "harness_engine", "memory_extra", "ge", 1.0, "ours lighter"),
    Target("generation", "patched_all_calls", "bare_generate", "time", "le", 1.05),
    Target("generation", "ablated_attn_zero", "bare_generate", "time", "le", 1.05),
    Target("generation", "harness_graph_patched", "bare_generate", "time", "le", 0.25, "issue 13: >= 4x faster"),
    Target("generation", "harness_graph_ablated", "bare_generate", "time", "le", 0.25, "issue 13: >= 4x faster"),
    Target("end_to_end", "all_claims", None, "time", "le", 30.0, "seconds after loading, one 7B model"),
)


@dataclass(frozen=True)
class Measurement:
    group: str
    variant: str
    samples: tuple[float, ...]  # seconds per call, warm-up excluded
    baseline_samples: tuple[float, ...] = ()  # the group baseline's seconds, one per round, interleaved
    memory: Memory | None = None
    weight_bytes: int | None = None  # the model this variant runs (its weights count towards memory_total)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def paired_ratio(self) -> float:
        """Median time over the median of the baseline rounds interleaved with it (NaN if unpaired)."""
        base = statistics.median(self.baseline_samples) if self.baseline_samples else math.nan
        return _ratio(self.median_s, base)

    def value(self, metric: str) -> float:
        """time: median seconds; memory_extra: the call's own peak; memory_total: weights + that peak."""
        if metric == "time":
            return self.median_s
        extra = self.memory.extra_bytes if self.memory is not None else None
        if extra is None:
            return math.nan
        if metric == "memory_extra":
            return float(extra)
        return float(extra + self.weight_bytes) if self.weight_bytes is not None else math.nan

    def as_dict(self) -> dict[str, Any]:
        memory = self.memory.as_dict() if self.memory is not None else None
        base = statistics.median(self.baseline_samples) if self.baseline_samples else None
        return {"median_s": _finite(self.median_s), "min_s": min(self.samples, default=None),
                "n": len(self.samples), "samples_s": list(self.samples), "paired_baseline_median_s": base,
                "paired_baseline_samples_s": list(self.baseline_samples),
                "weight_bytes": self.weight_bytes, "memory": memory,
                "memory_total_bytes": _finite(self.value("memory_total")), "info": self.info}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


@dataclass
class RatioBook:
    """Every measurement of the session, by group and variant; ratios and targets computed from them.

    With a `path`, the JSON is rewritten (atomically) after every measurement and skip, so a run stopped
    part-way keeps what it measured.
    """

    path: Path | None = None
    run: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # "group/variant" -> reason

    def add(self, m: Measurement) -> None:
        self.groups.setdefault(m.group, {})[m.variant] = m
        self.save()

    def skip(self, group: str, variant: str, reason: str) -> None:
        self.skipped[f"{group}/{variant}"] = reason
        self.save()

    def save(self) -> None:
        if self.path is not None:
            atomic_write(self.path, json.dumps(jsonable(self.document()), indent=2, allow_nan=False) + "\n")

    def get(self, group: str, variant: str) -> Measurement | None:
        if group == "end_to_end" and variant == "all_claims":
            return self._all_claims()
        return self.groups.get(group, {}).get(variant)

    def _all_claims(self) -> Measurement | None:
        claims = self.groups.get("end_to_end", {})
        if not claims:
            return None
        total = sum(m.median_s for m in claims.values())
        return Measurement("end_to_end", "all_claims", (total,), info={"claims": sorted(claims)})

    def ratio(self, group: str, variant: str, over: str | None, metric: str) -> float:
        """`variant` over `over` in `metric`; times through the paired ratios where the rounds were paired."""
        mine = self.get(group, variant)
        if mine is None:
            return math.nan
        if over is None:
            return mine.value(metric)
        theirs = self.get(group, over)
        if theirs is None:
            return math.nan
        if metric == "time":
            paired = {name: 1.0 if name == BASELINES.get(group) else m.paired_ratio
                      for name, m in ((variant, mine), (over, theirs))}
            if all(math.isfinite(r) for r in paired.values()):
                return paired[variant] / paired[over]
        return _ratio(mine.value(metric), theirs.value(metric))

    def check(self, target: Target) -> tuple[float, bool | None]:
        """(value, met); met is None while either side is missing or unmeasured."""
        value = self.ratio(target.group, target.variant, target.over, target.metric)
        if not math.isfinite(value):
            return value, None
        return value, value <= target.bound if target.op == "le" else value >= target.bound

    def targets_for(self, group: str, variant: str) -> list[Target]:
        """Targets that name this variant on either side (every end-to-end claim adds to `all_claims`)."""
        names = {variant, "all_claims"} if group == "end_to_end" else {variant}
        return [t for t in TARGETS if t.group == group and ({t.variant, t.over} & names)]

    def document(self) -> dict[str, Any]:
        groups = {name: self._group(name, variants) for name, variants in self.groups.items()}
        targets = []
        for t in TARGETS:
            value, met = self.check(t)
            targets.append({"target": t.label(), "group": t.group, "variant": t.variant, "over": t.over,
                            "metric": t.metric, "op": t.op, "bound": t.bound, "value": _finite(value),
                            "met": met, "note": t.note})
        return {"schema": SCHEMA, "run": self.run, "groups": groups, "targets": targets,
                "skipped": self.skipped}

    def _group(self, name: str, variants: dict[str, Measurement]) -> dict[str, Any]:
        baseline = BASELINES.get(name)
        out: dict[str, Any] = {"baseline": baseline, "variants": {}}
        for variant, m in variants.items():
            entry = m.as_dict()
            if baseline is not None:
                entry["ratio"] = {metric: _finite(self.ratio(name, variant, baseline, metric))
                                  for metric in METRICS}
            out["variants"][variant] = entry
        if name == "end_to_end":
            total = self._all_claims()
            out["all_claims_s"] = total.median_s if total is not None else None
        return out

    def summary(self) -> list[str]:
        """Terminal lines: each variant's median and ratios to its group's baseline, then the targets."""
        lines = []
        for name, variants in self.groups.items():
            baseline = BASELINES.get(name)
            for variant, m in variants.items():
                ratios = "" if baseline is None else "  ".join(
                    f"{metric} x{self.ratio(name, variant, baseline, metric):.3f}" for metric in METRICS)
                timing = f"{m.median_s * 1e3:10.2f} ms  n={len(m.samples):<3}"
                lines.append(f"{name:<11} {variant:<26} {timing} {ratios}")
        for t in TARGETS:
            value, met = self.check(t)
            state = {True: "met", False: "MISSED", None: "not measured"}[met]
            lines.append(f"target {t.label():<70} {value:10.3f}  {state}")
        lines.extend(f"skipped {key}: {reason}" for key, reason in self.skipped.items())
        return lines
