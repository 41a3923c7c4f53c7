"""Where a decode step's time goes: the kernels of one step of the static loop, from torch.profiler.

    python -m benchmarks.profile_step --model mistral-7b-instruct-v0.2 --rows 40 --out results/step-profile.json

Runs one batch on the graph path (its bucket is left set up), then one decode step of the same loop without the
graph under the profiler, and sums device time by kernel: the matrix products (GEMM) against everything else,
and the number of kernels. The graph replays exactly these kernels, so their sum, against the measured replay
time, separates kernel time from the gaps between kernels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.kit import prompts_near
from harness.engine import decode
from harness.engine.generation import generate
from harness.engine.models import load
from harness.engine.specs import get_spec

GEMM = ("gemm", "gemv", "cutlass", "sm90_xmma", "matmul", "cublas", "nvjet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mistral-7b-instruct-v0.2")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--out", default="results/step-profile.json")
    args = parser.parse_args()
    lm = load(get_spec(args.model), weights="random", device="cuda")
    pool = prompts_near(lm)
    prompts = [pool[i % len(pool)] for i in range(args.rows)]
    generate(lm, prompts, 32, path="graph", batch_size=len(prompts))
    bucket = next(reversed(decode.buckets_of(lm.model).kept.values()))
    bucket.slot.fill_(1)
    bucket.positions.fill_(1)
    with torch.no_grad():
        decode._step(lm, bucket)  # warm
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            decode._step(lm, bucket)
            torch.cuda.synchronize()
    kernels: dict[str, dict[str, Any]] = {}
    for event in prof.key_averages():
        if event.device_time_total > 0:
            kernels[event.key] = {"count": event.count, "us": event.device_time_total}
    gemm = {k: v for k, v in kernels.items() if any(tag in k.lower() for tag in GEMM)}
    found = {"rows": args.rows, "kernels": sum(v["count"] for v in kernels.values()),
             "device_us": sum(v["us"] for v in kernels.values()),
             "gemm_kernels": sum(v["count"] for v in gemm.values()), "gemm_us": sum(v["us"] for v in gemm.values()),
             "top": sorted(kernels.items(), key=lambda kv: -kv[1]["us"])[:25]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(found, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in found.items() if k != "top"}), flush=True)


if __name__ == "__main__":
    main()
