"""Generation against the memory floor: bare `generate`, the harness's eager path and its graph path (issue 13).

    python -m benchmarks.decode_speed --model mistral-7b-instruct-v0.2 --weights random --device cuda \
        --out results/decode-speed.json

For each batch size (40 and 256 prompts of about 24 tokens, 32 new tokens each) it times, round by round in one
process: transformers' greedy `generate` with no hooks (`bare_generate`, forced to 32 tokens), the harness's
`generate` on the eager path with the published residual patch (`eager_patched`, what the claims ran before),
and the harness's `generate` on the graph path bare, patched and with the published L31 attention output zeroed.
One decode-step replay is also timed alone (CUDA events over many replays).

The floor is measured in the same run: a device-to-device copy gives the bandwidth (bytes read + written per
second) and a large fp16 matrix product the arithmetic rate. A decode step must read every weight once and the
KV cache written so far (`floor_step`, the larger of that read time and the step's 2 x parameters x rows
FLOPs); the prefill must do 2 x parameters x prompt tokens FLOPs. `floor_call` = prefill floor + (new - 1)
decode floors; every variant is reported as its time over `floor_call` (per token, the same ratio) and
`bare_generate` over it (the speed-up). Rows identical to the eager path's are counted (fp16 near ties may
differ; tests/test_decode_fullsize.py checks them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks.kit import prompts_near
from benchmarks.measure import weight_bytes
from benchmarks.test_bench_generation import patch_setup
from harness.claimkit.registry import get_claim
from harness.engine import decode
from harness.engine.generation import PromptBatch, encode_left, generate
from harness.engine.interventions import patch_residual, zero_attention_output
from harness.engine.models import LoadedModel, load
from harness.engine.sites import map_layer
from harness.engine.specs import get_spec

NEW_TOKENS = 32


def ceilings(device: torch.device) -> dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and fp16 matrix rate (FLOP/s), medians of 10."""
    src = torch.randn(2**30, device=device, dtype=torch.float16)  # 2 GiB
    dst = torch.empty_like(src)
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    copy = _events(lambda: dst.copy_(src), 10)
    matmul = _events(lambda: a @ b, 10)
    return {"bandwidth_Bps": 2 * src.numel() * 2 / copy, "fp16_flops": 2 * 8192**3 / matmul,
            "copy_s": copy, "matmul_s": matmul}


def _events(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of `fn` on the GPU (CUDA events; wall time on the CPU), after two warm-up calls."""
    for _ in range(2):
        fn()
    if not torch.cuda.is_available():
        return statistics.median(_wall(fn, torch.device("cpu")) for _ in range(repeat))
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _wall(fn: Callable[[], Any], device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _d: None)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def floors(lm: LoadedModel, batch: PromptBatch, ceiling: dict[str, float]) -> dict[str, float]:
    """Seconds no implementation can beat on this device: the prefill, one decode step, the whole call."""
    dims, params = lm.dims, sum(p.numel() for p in lm.model.parameters())
    rows, tokens = len(batch.prompts), sum(batch.lengths)
    kv_per_token = 2 * dims.n_layers * dims.n_kv_heads * dims.head_dim * lm.model.dtype.itemsize
    mean_length = tokens / rows + NEW_TOKENS / 2
    step_bytes = weight_bytes(lm.model) + rows * mean_length * kv_per_token
    step = max(step_bytes / ceiling["bandwidth_Bps"], 2 * params * rows / ceiling["fp16_flops"])
    prefill = max(2 * params * tokens / ceiling["fp16_flops"], weight_bytes(lm.model) / ceiling["bandwidth_Bps"])
    return {"prefill_s": prefill, "step_s": step, "step_memory_s": step_bytes / ceiling["bandwidth_Bps"],
            "step_compute_s": 2 * params * rows / ceiling["fp16_flops"], "call_s": prefill + (NEW_TOKENS - 1) * step,
            "mean_prompt_tokens": tokens / rows}


def variants(lm: LoadedModel, prompts: list[str]) -> dict[str, Callable[[], Any]]:
    batch = encode_left(lm, prompts)
    layer, window, source = patch_setup(lm)
    l31 = get_claim("l31_ablation_repetition")
    ablated = map_layer(l31.protocol["layer"], l31.published_n_layers, lm.dims.n_layers)

    def patched(b: PromptBatch) -> AbstractContextManager[Any]:
        return patch_residual(lm.model, layer, source, mode="all_calls", window=window, prompt_mask=b.attention_mask)

    def harness(path: str, intervention: Any) -> Callable[[], Any]:
        return lambda: generate(lm, prompts, NEW_TOKENS, intervention=intervention, batch_size=len(prompts),
                                path=path)

    def bare() -> None:
        with torch.no_grad(), nullcontext():
            lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,  # type: ignore[operator]
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                              pad_token_id=lm.tokenizer.pad_token_id)

    return {"bare_generate": bare, "eager_patched": harness("eager", patched),
            "graph_bare": harness("graph", None), "graph_patched": harness("graph", patched),
            "graph_ablated": harness("graph", lambda _b: zero_attention_output(lm.model, ablated))}


def step_replay_s(lm: LoadedModel) -> float:
    """One recorded decode step replayed alone: the median of 20 replays of the most recent graph (its
    bucket's state is rewound first, and is garbage after: the next batch's prefill resets it). NaN when no
    graph was recorded (the CPU)."""
    buckets = decode.buckets_of(lm.model)
    bucket = next(reversed(buckets.kept.values()), None)
    if bucket is None or not bucket.graphs:
        return float("nan")
    graph = next(reversed(bucket.graphs.values())).graph
    bucket.slot.fill_(0)  # 22 replays write columns 1..22 of a cache of at least 32
    bucket.positions.fill_(0)
    return _events(graph.replay, 20)


def measure_batch(lm: LoadedModel, prompts: list[str], ceiling: dict[str, float], rounds: int) -> dict[str, Any]:
    fns = variants(lm, prompts)
    for fn in fns.values():  # warm-up: records the graphs of this bucket
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_wall(fn, lm.device))
    floor = floors(lm, encode_left(lm, prompts), ceiling)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    eager_run = generate(lm, prompts, NEW_TOKENS, path="eager", batch_size=len(prompts))
    eager = [g.generated_ids for g in eager_run.generations]
    graph_run = generate(lm, prompts, NEW_TOKENS, path="graph", batch_size=len(prompts))
    same = sum(a.generated_ids == b for a, b in zip(graph_run.generations, eager, strict=True))
    step = step_replay_s(lm)
    return {"rows": len(prompts), "samples_s": samples, "median_s": medians, "floor": floor,
            "step_replay_s": step, "step_over_floor": step / floor["step_s"],
            "over_floor": {name: t / floor["call_s"] for name, t in medians.items()},
            "speedup_over_bare": {name: medians["bare_generate"] / t for name, t in medians.items()},
            "rows_identical_to_eager": same, "graph_path": graph_run.paths[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mistral-7b-instruct-v0.2")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="40,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="results/decode-speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    ceiling = ceilings(device) if device.type == "cuda" else {"bandwidth_Bps": 5e10, "fp16_flops": 1e11}
    lm = load(get_spec(args.model), weights=args.weights, device=args.device, cache_dir=Path(tempfile.mkdtemp()))
    pool = prompts_near(lm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    found: dict[str, Any] = {"model": lm.id, "dtype": str(lm.model.dtype), "device": name,
                             "torch": torch.__version__, "ceilings": ceiling, "new_tokens": NEW_TOKENS, "batches": {}}
    for rows in (int(r) for r in args.batches.split(",")):
        prompts = [pool[i % len(pool)] for i in range(rows)]
        found["batches"][str(rows)] = measure_batch(lm, prompts, ceiling, args.rounds)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(found, indent=1, default=str), encoding="utf-8")
        _table(found["batches"][str(rows)])


def _table(result: dict[str, Any]) -> None:
    floor = result["floor"]
    lines = [f"batch {result['rows']}: floor call {floor['call_s'] * 1e3:.1f} ms "
             f"(prefill {floor['prefill_s'] * 1e3:.1f}"
             f", step {floor['step_s'] * 1e3:.2f}); step replay {result['step_replay_s'] * 1e3:.2f} ms "
             f"= {result['step_over_floor']:.2f}x floor; rows identical to eager {result['rows_identical_to_eager']}"]
    for name, median in result["median_s"].items():
        lines.append(f"  {name:15s} {median * 1e3:8.1f} ms  {result['over_floor'][name]:6.2f}x floor  "
                     f"{result['speedup_over_bare'][name]:6.2f}x faster than bare")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
