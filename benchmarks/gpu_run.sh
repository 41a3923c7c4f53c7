#!/usr/bin/env bash
# The benchmark run on the GPU machine, in one command: `bash benchmarks/gpu_run.sh` (from the repository
# root or anywhere in it). Carry `.whl` with the call for TransformerLens (see benchmarks/README.md).
#
# Extra arguments go to the benchmark session (e.g. --bench-assert-targets, --bench-rounds 20).
# Writes under "$OUT" (results/gpu-run when OUT is unset):
#   env.txt           GPU, driver, Python and package versions
#   leaks.log         tests/test_leaks.py on the GPU (50 captures, 50 patched generations, tiny model)
#   bench.log         the benchmark session's output, its ratio table last
#   bench.json        pytest-benchmark's JSON (every variant's rounds, extra_info with ratios and memory)
#   bench-ratios.json the session's ratios and targets (rewritten after every measurement)
#
# Budget: about 4 minutes on an H100 (estimated; the random 7B model is built once); hard stops at 90 s and
# 480 s keep the whole run inside 10 minutes, and a stopped run keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-results/gpu-run}"
MODEL="${BENCH_MODEL:-mistral-7b-instruct-v0.2}"  # BENCH_MODEL=tiny-mistral BENCH_DEVICE=cpu BENCH_WHEELS=0:
DEVICE="${BENCH_DEVICE:-cuda}"                     # a dry run on the CPU
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Carried wheels (device README, Notes): TransformerLens 3.x and what it needs beyond the GPU image.
# They are built for CPython 3.12 (the GPU image's); BENCH_WHEELS=0 leaves them out (e.g. a dry run here).
if [ "${BENCH_WHEELS:-1}" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    python3 - <<'EOF'
import importlib.metadata as md
import platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("transformers", "tokenizers", "pytest", "pytest-benchmark", "transformer-lens", "datasets"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "absent")
EOF
} > "$OUT/env.txt" 2>&1

status=0
timeout -s INT 90 python3 -m pytest tests/test_leaks.py --device "$DEVICE" -q -p no:cacheprovider \
    --claims-json /tmp/leaks-claims.json --junitxml /tmp/leaks-junit.xml > "$OUT/leaks.log" 2>&1 || status=$?

timeout -s INT 480 python3 -m pytest benchmarks/ --models "$MODEL" --weights random --device "$DEVICE" \
    -p no:cacheprovider -q --benchmark-json "$OUT/bench.json" --bench-ratios-json "$OUT/bench-ratios.json" \
    --claims-json /tmp/bench-claims.json --junitxml /tmp/bench-junit.xml "$@" 2>&1 | tee "$OUT/bench.log" \
    || status=$?

exit "$status"
