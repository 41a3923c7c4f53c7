"""How cost grows with the number of prompts per condition (issue 13, section 3).

    python -m benchmarks.scaling --model mistral-7b-instruct-v0.2 --weights random --device cuda \
        --out results/scaling.json
    python -m benchmarks.plot_scaling results/scaling.json docs/cost-vs-n.png

Three workloads, each timed once per n after one warm-up at the smallest n (wall time with the device
synchronised; peak device memory above what was allocated before the call):

- `rv_contraction`: R_V of n recursive and n baseline prompts (`claimkit.rv.measure`, the published window
  and layers), n = 8 .. 1024;
- `rfc`: attention entropies of n prompts, every layer and head (`claimkit.role.measure_category`, the RFC
  measurement of one model and one category), n = 8 .. 1024;
- `patch_grid`: the residual-patch grid with n (source, target) pairs at each of the claim's 3 layers, plus the
  n targets unpatched (`residual_patch_collapse.protocols.run_arms`: source capture and generation), n = 8 .. 256.

Prompts are the claims' own banks, cycled when n exceeds a bank (cost depends on token counts, which cycling
keeps). A least-squares line (scipy.stats.linregress) of seconds on n gives each workload's slope (seconds per
prompt) and intercept; memory should stay flat once n exceeds the batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from harness.claimkit.gen import GenContext
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.claimkit.role import measure_category
from harness.claimkit.rv import measure as rv_measure
from harness.engine.models import LoadedModel, load
from harness.engine.runner import Window
from harness.engine.specs import get_spec

SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
GRID_SIZES = (8, 16, 32, 64, 128, 256)


def cycled(prompts: list[str], n: int) -> list[str]:
    return [prompts[i % len(prompts)] for i in range(n)]


def rv_workload(lm: LoadedModel, batch_size: int) -> Callable[[int], Any]:
    claim = get_claim("rv_contraction")
    bank = bank_for(claim)
    control = claim.control("token_matched")  # the claim's widest recursive and baseline pools
    rec = [p for c in control["recursive_categories"] for p in bank.category(c)]
    base = [p for c in control["pool_categories"] for p in bank.category(c)]
    window = Window(int(claim.protocol["window"]), exclude_bos=False)
    return lambda n: (rv_measure(lm, claim, cycled(rec, n), window, batch_size),
                      rv_measure(lm, claim, cycled(base, n), window, batch_size))


def rfc_workload(lm: LoadedModel, batch_size: int) -> Callable[[int], Any]:
    bank = bank_for(get_claim("rfc_instruct_compresses_mistral"))
    prompts = [p for c in bank.categories for p in bank.category(c)]
    return lambda n: measure_category(lm, cycled(prompts, n), batch_size=batch_size)


def grid_workload(lm: LoadedModel, batch_size: int) -> Callable[[int], Any]:
    from claims.residual_patch_collapse.protocols import Arm, run_arms, sources

    claim = get_claim("residual_patch_collapse")
    bank = bank_for(claim)
    control = claim.control("grid")
    ctx = GenContext(claim, lm, bank, 0, batch_size)
    rec = bank.category(control["source_category"])
    targets = [p for c in control["target_categories"] for p in bank.category(c)]

    def run(n: int) -> Any:
        pairs = [(s % len(rec), targets[t % len(targets)]) for s, t in ((k // len(targets), k) for k in range(n))]
        found = sources(ctx, rec[: min(len(rec), n)])
        return run_arms(ctx, [Arm("grid", found.sources, pairs, found.next_token)],
                        unpatched=cycled(targets, n))
    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[int], Any], n: int, device: torch.device) -> dict[str, float]:
    _sync(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn(n)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else float("nan")
    return {"n": n, "seconds": seconds, "peak_extra_bytes": peak}


def fit(points: list[dict[str, float]]) -> dict[str, float]:
    line = stats.linregress([p["n"] for p in points], [p["seconds"] for p in points])
    return {"slope_s_per_prompt": float(line.slope), "intercept_s": float(line.intercept),
            "r_squared": float(line.rvalue**2), "slope_stderr": float(line.stderr),
            "intercept_stderr": float(line.intercept_stderr)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mistral-7b-instruct-v0.2")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-n", type=int, default=1024)
    parser.add_argument("--workloads", default="rv_contraction,rfc,patch_grid")
    parser.add_argument("--out", default="results/scaling.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    lm = load(get_spec(args.model), weights=args.weights, device=args.device, cache_dir=Path(tempfile.mkdtemp()))
    makers = {"rv_contraction": (rv_workload, SIZES), "rfc": (rfc_workload, SIZES),
              "patch_grid": (grid_workload, GRID_SIZES)}
    found: dict[str, Any] = {"model": lm.id, "weights": lm.weights, "dtype": str(lm.model.dtype),
                             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                             "batch_size": args.batch_size, "workloads": {}}
    for name in args.workloads.split(","):
        make, sizes = makers[name]
        fn = make(lm, args.batch_size)
        fn(sizes[0])  # warm-up
        points = [timed(fn, n, device) for n in sizes if n <= args.max_n]
        found["workloads"][name] = {"points": points, "fit": fit(points)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(found, indent=1), encoding="utf-8")
        line = found["workloads"][name]["fit"]
        print(f"{name}: {line['slope_s_per_prompt'] * 1e3:.2f} ms/prompt + {line['intercept_s']:.3f} s "
              f"(r2 {line['r_squared']:.3f}); peak extra GB " +
              " ".join(f"{p['peak_extra_bytes'] / 1e9:.2f}" for p in points), flush=True)


if __name__ == "__main__":
    main()
