"""Loading real-format weights against reading the file (issue 13, section 2).

    python -m benchmarks.load_time --model mistral-7b-instruct-v0.2 --dir /tmp/random-7b --out results/load.json

Saves the model's architecture with random weights as safetensors (what a downloaded checkpoint is), then
times, each after dropping the page cache (`echo 3 > /proc/sys/vm/drop_caches`, root only; the JSON says
whether it worked) and once more warm: reading the files (`cat > /dev/null`), and `harness.engine.models.load`
with `--model-path` semantics (`from_pretrained` straight to the device, synchronised). The target is the cold
load within 1.5x the cold read.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.engine.models import load
from harness.engine.specs import get_spec


def drop_caches() -> bool:
    """Empty the page cache (root only); False where the system refuses."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n", encoding="utf-8")
    except OSError:
        return False
    return True


def read_s(directory: Path) -> float:
    files = sorted(str(p) for p in directory.glob("*.safetensors"))
    start = time.perf_counter()
    subprocess.run(f"cat {' '.join(files)} > /dev/null", shell=True, check=True)
    return time.perf_counter() - start


def load_s(model_id: str, directory: Path, device: str) -> float:
    start = time.perf_counter()
    lm = load(get_spec(model_id), model_path=directory, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del lm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mistral-7b-instruct-v0.2")
    parser.add_argument("--dir", default="/tmp/random-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="results/load.json")
    parser.add_argument("--keep-caches", action="store_true", help="do not drop the page cache (a dry run on a "
                        "shared machine); the cold figures are then warm")
    args = parser.parse_args()
    drop = (lambda: False) if args.keep_caches else drop_caches
    directory = Path(args.dir)
    start = time.perf_counter()
    lm = load(get_spec(args.model), weights="random", device=args.device, cache_dir=Path(tempfile.mkdtemp()))
    built = time.perf_counter() - start
    start = time.perf_counter()
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    saved = time.perf_counter() - start
    del lm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    found: dict[str, Any] = {"model": args.model, "bytes": size, "build_random_s": built, "save_s": saved}
    found["dropped_caches"] = drop()
    found["read_cold_s"] = read_s(directory)
    drop()
    found["load_cold_s"] = load_s(args.model, directory, args.device)
    found["read_warm_s"] = read_s(directory)
    found["load_warm_s"] = load_s(args.model, directory, args.device)
    found["load_over_read_cold"] = found["load_cold_s"] / found["read_cold_s"]
    found["load_over_read_warm"] = found["load_warm_s"] / found["read_warm_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(found, indent=1), encoding="utf-8")
    print(json.dumps(found, indent=1), flush=True)


if __name__ == "__main__":
    main()
