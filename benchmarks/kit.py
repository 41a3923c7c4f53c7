"""What every benchmark shares: the workloads (which prompts), and `Bench.time`, which times one variant with
pytest-benchmark, measures its peak memory, records it in the session's ratio book and, under
`--bench-assert-targets`, checks the targets that it completes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from benchmarks.measure import Memory, Timed, peak_memory, synchronize, watch_memory
from benchmarks.ratios import BASELINES, METRICS, Measurement, RatioBook
from harness.claimkit.prompts import PROMPTS_DIR, bank_for, load_bank
from harness.claimkit.registry import get_claim, load_claims
from harness.engine.models import LoadedModel
from harness.engine.runner import token_counts

CAPTURE_BATCH = 40  # issue 5: a batch of 40 prompts around 24 tokens
CAPTURE_TOKENS = 24
MIXED_PROMPTS = 120  # issue 5: 120 prompts of mixed lengths
MIXED_BANK = "rv_contraction"  # the bank of this claim (its folder's prompts.toml)
Session = Callable[[], AbstractContextManager[Any]]  # opened around the timed calls; fn gets what it yields


def bank_prompts(claim: str | None = None) -> list[str]:
    """The distinct prompts of one claim's bank, or of every bank (the claims' and the shared ones of
    fixtures/prompts), in order."""
    if claim:
        banks = [bank_for(get_claim(claim))]
    else:
        banks = [bank_for(c) for c in load_claims().values() if c.prompt_bank]
        banks += [load_bank(path) for path in sorted(PROMPTS_DIR.glob("*.toml"))]
    return list(dict.fromkeys(p for bank in banks for ps in bank.categories.values() for p in ps))


def prompts_near(lm: LoadedModel, n: int = CAPTURE_BATCH, tokens: int = CAPTURE_TOKENS) -> list[str]:
    """The `n` prompts of all banks whose token count (on this model's tokenizer) is nearest `tokens`."""
    pool = bank_prompts()
    if len(pool) < n:
        raise ValueError(f"the prompt banks hold {len(pool)} distinct prompts; the workload needs {n}")
    counts = token_counts(lm, pool)
    order = sorted(range(len(pool)), key=lambda i: (abs(counts[i] - tokens), i))
    return [pool[i] for i in order[:n]]


def mixed_prompts(n: int = MIXED_PROMPTS, bank: str = MIXED_BANK) -> list[str]:
    """The first `n` distinct prompts of one bank: recursive, factual and control prompts of mixed lengths."""
    pool = bank_prompts(bank)
    if len(pool) < n:
        raise ValueError(f"prompt bank {bank!r} holds {len(pool)} distinct prompts; the workload needs {n}")
    return pool[:n]


def workload_info(lm: LoadedModel, prompts: list[str]) -> dict[str, Any]:
    counts = token_counts(lm, prompts)
    return {"prompts": len(prompts), "tokens_min": min(counts), "tokens_max": max(counts),
            "tokens_mean": round(sum(counts) / len(counts), 2)}


@dataclass(frozen=True)
class Bench:
    """The session's model, device, rounds and ratio book; `time` runs one variant of one group."""

    lm: LoadedModel
    book: RatioBook
    rounds: int
    warmup: int
    assert_targets: bool
    batch_size: int
    seed: int

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def time(self, benchmark: Any, group: str, variant: str, fn: Callable[..., Any], *,
             baseline: Callable[[], Any] | None = None, heavy: bool = False, once: bool = False,
             session: Session | None = None, weight_bytes: int | None = None,
             info: dict[str, Any] | None = None) -> Measurement:
        """Time `fn` (pytest-benchmark, synced, warm), take its peak memory once, record and check it.

        Each round first runs `baseline` (the group's bare variant; timed apart, outside any session), then
        `fn`, so the ratio between them is paired round by round. `heavy` variants (a second or more per
        call) run half the rounds (3 at least) after one warm-up round; a variant run `once` (seconds to
        minutes) is timed once, unwarmed, unpaired, its memory read on that same call (on a GPU; not on the
        CPU, where the tracker would slow it). With a `session` (a context manager factory, e.g. an entropy
        engine), `fn` receives what the session yields; the session is reopened and warmed (untimed) after
        each baseline call, and the memory call opens one of its own, so it counts what the session builds.
        """
        if once:
            return self._once(benchmark, group, variant, fn, weight_bytes, info)
        rounds, warmup = (max(3, self.rounds // 2), 1) if heavy else (self.rounds, self.warmup)
        paired = PairedRounds(fn, baseline, session, self.device)
        benchmark.group = group
        try:
            benchmark.pedantic(paired.variant, setup=paired.setup, rounds=rounds, warmup_rounds=warmup)
        finally:
            paired.close()
        drop = 0 if benchmark.disabled else warmup
        base = tuple(paired.baseline.samples[drop:]) if paired.baseline is not None else ()
        memory = peak_memory(partial(_in_session, fn, session) if session is not None else fn, self.device)
        m = Measurement(group, variant, tuple(paired.variant.samples[drop:]), base, memory, weight_bytes,
                        dict(info or {}))
        return self._record(benchmark, m)

    def _once(self, benchmark: Any, group: str, variant: str, fn: Callable[[], Any], weight_bytes: int | None,
              info: dict[str, Any] | None) -> Measurement:
        benchmark.group = group
        timed = Timed(fn, self.device)
        with watch_memory(self.device, on_cpu=False) as memory:
            benchmark.pedantic(timed, rounds=1, warmup_rounds=0, iterations=1)
        m = Measurement(group, variant, tuple(timed.samples), (), memory[0], weight_bytes, dict(info or {}))
        return self._record(benchmark, m)

    def _record(self, benchmark: Any, m: Measurement) -> Measurement:
        """Into the ratio book and pytest-benchmark's extra_info; checked under --bench-assert-targets."""
        self.book.add(m)
        benchmark.extra_info.update(self._extra_info(m))
        if self.assert_targets:
            self._check(m.group, m.variant)
        return m

    def _extra_info(self, m: Measurement) -> dict[str, Any]:
        baseline = BASELINES.get(m.group)
        info: dict[str, Any] = {"group": m.group, "variant": m.variant, "median_s": m.median_s,
                                "paired_baseline_median_s": m.as_dict()["paired_baseline_median_s"],
                                "model": self.lm.id, "weights": self.lm.weights, **_memory_info(m.memory),
                                **m.info}
        if baseline is not None and self.book.get(m.group, baseline) is not None:
            info["baseline"] = baseline
            for metric in METRICS:
                value = self.book.ratio(m.group, m.variant, baseline, metric)
                info[f"ratio_{metric}"] = value if math.isfinite(value) else None
        return info

    def _check(self, group: str, variant: str) -> None:
        missed = []
        for target in self.book.targets_for(group, variant):
            value, met = self.book.check(target)
            if met is False:
                missed.append(f"{target.label()}: measured {value:.3f}")
        assert not missed, "benchmark target(s) missed (--bench-assert-targets): " + "; ".join(missed)


class PairedRounds:
    """pytest-benchmark's `setup` and target for one variant: each round's setup runs the baseline (timed
    apart) and (re)opens and warms the session; the target is the variant alone."""

    def __init__(self, fn: Callable[..., Any], baseline: Callable[[], Any] | None, session: Session | None,
                 device: torch.device) -> None:
        self.variant = Timed(self._call, device)
        self.baseline = Timed(baseline, device) if baseline is not None else None
        self._fn, self._session, self._device = fn, session, device
        self._open: ExitStack | None = None
        self._state: Any = None

    def _call(self) -> Any:
        return self._fn(self._state) if self._session is not None else self._fn()

    def setup(self) -> None:
        if self.baseline is not None:
            self.close()  # the baseline runs bare, outside the variant's session
            self.baseline()
        if self._session is not None and self._open is None:
            self._open = ExitStack()
            self._state = self._open.enter_context(self._session())
            self._call()  # warm the fresh session (CUDA graphs, caches), untimed
            synchronize(self._device)  # so that none of it spills into the timed call

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open, self._state = None, None


def _in_session(fn: Callable[[Any], Any], session: Session) -> None:
    with session() as state:
        fn(state)


def _memory_info(memory: Memory | None) -> dict[str, Any]:
    return memory.as_dict() if memory is not None else {}
