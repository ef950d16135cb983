#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one go, on one GPU machine:
# doctor, the bf16 + fused vs fp32 check (#3), loader throughput (#4), the
# step benchmark vs PyTorch (#8), the OT step (#7), and the full NoRGa Split
# CIFAR-100 pipeline on synthetic data of the real size (#8). JSON lines land
# in results/perf/; the console shows the ratios. `make gpu-bench` builds the
# binaries and calls this; on a machine with only the binaries, pass their
# folder and a python with torch (and `pot` for the OT ratio).
# Usage: benchmarks/run_gpu_suite.sh [bin dir = target/release] [python = $PROMPTCL_PYTHON or python3]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-target/release}"
PY="${2:-${PROMPTCL_PYTHON:-python3}}"
stamp=$(date -u +%Y%m%d-%H%M%S)
mkdir -p results/perf
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU: nvidia-smi failed" >&2; exit 1; }

echo "== doctor"
"$BIN/promptcl" doctor

echo "== bf16 + fused vs fp32 (model crate test binary, when built)"
parity=$(ls -t "$BIN"/deps/vit_parity-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
if [ -n "$parity" ]; then
    "$parity" cuda_bf16 --nocapture 2>&1 | grep -E "CUDA bf16|test result" | tee "results/perf/bf16-vs-fp32-$stamp.txt"
else
    echo "skipped: no vit_parity test binary in $BIN/deps (cargo test --release -p promptcl-model --no-run)"
fi

echo "== loader (target >= 5000 img/s)"
"$BIN/loader_bench" --device cuda | tee "results/perf/loader-gpu-$stamp.jsonl"

echo "== step benchmark vs PyTorch"
benchmarks/run_step_bench.sh "$BIN/step_bench" "$PY"
echo "== step benchmark, issue #18 experts (zero-init gate, reparam-mlp prefixes, k/v LoRA), batch 64"
benchmarks/run_step_bench.sh "$BIN/step_bench" "$PY" --experts zero-init,reparam-mlp,lora --batch 64

echo "== OT step, 100 and 200 classes"
PROMPTCL_OT_BENCH="$BIN/ot_bench" PROMPTCL_PYTHON="$PY" benchmarks/run_ot_bench.sh --device cuda

echo "== full NoRGa Split CIFAR-100 run (target <= 15 min)"
"$BIN/pipeline_bench" --device cuda | tee "results/perf/pipeline-gpu-$stamp.jsonl"
