#!/usr/bin/env bash
# Runs the promptcl step benchmark and its PyTorch reference side by side in
# one invocation on one device, samples each process's peak memory (GPU:
# nvidia-smi per process; CPU: the kernel's VmHWM), and prints ratios. Results
# (JSON lines with device, versions, commit) go to results/perf/step-<UTC>.jsonl.
# Usage: benchmarks/run_step_bench.sh [path/to/step_bench] [python] [--device cpu] [--batch 8] [--experts norga,zero-init,reparam-mlp,lora] [--warmup N] [--iters N]
#   GPU (default): batches 64,128; promptcl bf16 vs official / eager / compile.
#   CPU: promptcl f32 vs official / eager (torch.compile's CPU build time is not the point); a check that
#   the two sides do the same work at the same speed where no GPU is at hand, not the issue's GPU target.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${1:-target/release/step_bench}"
PY="${2:-python3}"
shift $(( $# < 2 ? $# : 2 ))
device=cuda batch=64,128 warmup=5 iters=20 experts=norga
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --experts) experts=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --iters) iters=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p results/perf
out="results/perf/step-$device-$(date -u +%Y%m%d-%H%M%S).jsonl"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$device" = cpu ]; then
    where="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) threads)"
    precision=f32 modes="official eager"
else
    where="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    precision=bf16 modes="official eager compile"
fi

peak_mem() {  # pid -> max MiB while it runs
    local pid=$1 max=0 v
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$device" = cpu ]; then
            v=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || true)
        else
            v=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', ' -v p="$pid" '$1==p{print $2}')
        fi
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
        echo "{\"run\": \"$tag\", \"commit\": \"$commit\", \"device\": \"$where\", \"process_peak_mib\": $mem, \"result\": $line}"
    done < "/tmp/promptcl-$tag.jsonl" | tee -a "$out"
}

common=(--batch "$batch" --warmup "$warmup" --iters "$iters")
run promptcl "$BENCH" --device "$device" --precision "$precision" --experts "$experts" "${common[@]}"
for mode in $modes; do
    run "pytorch-$mode" "$PY" benchmarks/torch_step_reference.py --device "$device" --modes "$mode" --experts "$experts" "${common[@]}"
done

"$PY" - "$out" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
key = lambda r: (r["result"].get("expert", "norga"), r["result"]["batch"])
ours = {key(r): r for r in rows if r["run"] == "promptcl"}
for r in rows:
    if r["run"] == "promptcl":
        continue
    k = key(r)
    if k in ours:
        o = ours[k]["result"]
        print(f'{k[0]:11s} batch {k[1]}: promptcl / {r["result"]["mode"]:9s} train {o["train_images_per_s"] / r["result"]["train_images_per_s"]:.2f}x  '
              f'eval {o["eval_images_per_s"] / r["result"]["eval_images_per_s"]:.2f}x  '
              f'(memory per process: all experts in one run, {ours[k]["process_peak_mib"]} vs {r["process_peak_mib"]} MiB)')
PYEOF
echo "results: $out"
