#!/usr/bin/env bash
# The GPU runs of issues 13 and 14 in one command (one H200, about 6 minutes a step set): `bash benchmarks/gpu_decode_run.sh [steps]`.
# Steps, in order of priority (default: all): equality speed suite scaling e2e load. Each has its own hard stop,
# so one that hangs or fails leaves the others their time; everything is logged to $OUT/run.log.
#   equality  tests/test_decode.py (graph path on the tiny families) and tests/test_decode_fullsize.py (the 7B)
#             under -m gpu, and tests/test_leaks.py on the GPU          -> equality-junit.xml
#   speed     benchmarks.decode_speed at batch 40 and 256                -> decode-speed.json
#   suite     every claim of the catalogue on every published architecture in the registry (12 models, Mixtral
#             included), random weights (pytest -m gpu claims/)  -> suite-claims.json, suite-junit.xml (per-test
#             durations: the null-weights twins' cost beside each as_published), suite-claims.html
#   e2e       benchmarks/test_bench_e2e.py on Mistral-7B-Instruct-v0.2   -> e2e-ratios.json
#   scaling   benchmarks.scaling                                         -> scaling.json
#   load      benchmarks.load_time (a random 7B saved as safetensors)    -> load.json
#   profile   benchmarks.profile_step: one decode step's kernels          -> step-profile.json
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu-decode}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS="${*:-equality speed suite scaling e2e load}"
LOG="$OUT/run.log"
NOREPORT=(--claims-html none -p no:cacheprovider)

stamp() { echo "=== $1 $(date -u +%H:%M:%S) ===" >> "$LOG"; }
timed() {  # timed NAME SECONDS command...: run with a hard stop, log its wall time and exit status
    local name=$1 limit=$2; shift 2
    stamp "$name start"
    local start; start=$(date +%s%N)
    timeout -s INT "$limit" "$@" >> "$LOG" 2>&1
    local status=$?
    echo "=== $name wall $(( ($(date +%s%N) - start) / 1000000 )) ms, exit $status ===" >> "$LOG"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
    python3 -c "import platform, torch, transformers; print('python', platform.python_version(), 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    for what in "import torch" "import torch, transformers" "import torch; torch.cuda.init(); torch.zeros(1, device='cuda')"; do
        start=$(date +%s%N); python3 -c "$what"; echo "start-up: '$what' $(( ($(date +%s%N) - start) / 1000000 )) ms"
    done
} >> "$LOG" 2>&1

for step in $STEPS; do
    case "$step" in
    equality) timed equality 120 python3 -m pytest -m gpu tests/test_decode.py tests/test_decode_fullsize.py \
                  -q -rs "${NOREPORT[@]}" --claims-json /tmp/eq-claims.json --junitxml "$OUT/equality-junit.xml"
              timed leaks 45 python3 -m pytest tests/test_leaks.py --device cuda -q "${NOREPORT[@]}" \
                  --claims-json /tmp/leak-claims.json --junitxml /tmp/leak-junit.xml ;;
    speed) timed speed 120 python3 -m benchmarks.decode_speed --out "$OUT/decode-speed.json" ;;
    suite) timed suite "${SUITE_LIMIT:-420}" python3 -m pytest -m gpu --weights random claims/ -q -rs --durations=40 \
               -p no:cacheprovider --claims-json "$OUT/suite-claims.json" --claims-html "$OUT/suite-claims.html" \
               --junitxml "$OUT/suite-junit.xml" ;;
    eager-suite) HARNESS_GENERATION_PATH=eager timed eager-suite 200 python3 -m pytest -m gpu --weights random \
               claims/ -q --durations=25 "${NOREPORT[@]}" --claims-json /tmp/eager-claims.json \
               --junitxml /tmp/eager-junit.xml ;;
    e2e) timed e2e 100 python3 -m pytest benchmarks/test_bench_e2e.py --models mistral-7b-instruct-v0.2 \
             --weights random --device cuda -q "${NOREPORT[@]}" --bench-ratios-json "$OUT/e2e-ratios.json" \
             --claims-json /tmp/e2e-claims.json --junitxml /tmp/e2e-junit.xml ;;
    profile) timed profile 60 python3 -m benchmarks.profile_step --out "$OUT/step-profile.json" ;;
    scaling) timed scaling 90 python3 -m benchmarks.scaling --out "$OUT/scaling.json" ;;
    load) timed load 120 python3 -m benchmarks.load_time --dir /tmp/random-7b --out "$OUT/load.json" ;;
    two-gpus) timed two-gpus 240 python3 -m pytest -m gpu --weights random claims/ -q -n 2 --dist loadgroup \
                  --durations=25 "${NOREPORT[@]}" --claims-json "$OUT/suite-2gpu-claims.json" \
                  --junitxml /tmp/suite2-junit.xml ;;
    *) echo "unknown step $step" >> "$LOG" ;;
    esac
done
grep -E "^=== |passed|failed|error|batch [0-9]+:|  (bare|eager|graph)|ms/prompt|load_over|start-up" "$LOG" | tail -80
