#!/usr/bin/env bash
# Runs the promptcl step benchmark and its PyTorch reference on the same GPU in
# one invocation, samples each process's GPU memory with nvidia-smi, and prints
# ratios. Results (JSON lines with device, versions, commit) go to
# results/perf/step-<UTC time>.jsonl.
# Usage: benchmarks/run_step_bench.sh [path/to/step_bench] [python]
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${1:-target/release/step_bench}"
PY="${2:-python3}"
mkdir -p results/perf
out="results/perf/step-$(date -u +%Y%m%d-%H%M%S).jsonl"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

peak_mem() {  # pid -> max used MiB while it runs
    local pid=$1 max=0 v
    while kill -0 "$pid" 2>/dev/null; do
        v=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', ' -v p="$pid" '$1==p{print $2}')
        [ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
        sleep 0.2
    done
    echo "$max"
}

run() {  # tag cmd...
    local tag=$1; shift
    "$@" > "/tmp/promptcl-$tag.jsonl" &
    local pid=$!
    local mem; mem=$(peak_mem "$pid")
    wait "$pid"
    while read -r line; do
        echo "{\"run\": \"$tag\", \"commit\": \"$commit\", \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\", \"process_peak_mib\": $mem, \"result\": $line}"
    done < "/tmp/promptcl-$tag.jsonl" | tee -a "$out"
}

run promptcl "$BENCH" --device cuda --precision bf16 --batch 64,128
run pytorch-official "$PY" benchmarks/torch_step_reference.py --modes official --batch 64,128
run pytorch-eager "$PY" benchmarks/torch_step_reference.py --modes eager --batch 64,128
run pytorch-compile "$PY" benchmarks/torch_step_reference.py --modes compile --batch 64,128

"$PY" - "$out" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ours = {r["result"]["batch"]: r for r in rows if r["run"] == "promptcl"}
for r in rows:
    if r["run"] == "promptcl":
        continue
    b = r["result"]["batch"]
    if b in ours:
        o = ours[b]["result"]
        print(f'batch {b}: promptcl / {r["result"]["mode"]:9s} train {o["train_images_per_s"] / r["result"]["train_images_per_s"]:.2f}x  '
              f'eval {o["eval_images_per_s"] / r["result"]["eval_images_per_s"]:.2f}x  '
              f'memory {ours[b]["process_peak_mib"]} vs {r["process_peak_mib"]} MiB')
PYEOF
echo "results: $out"
