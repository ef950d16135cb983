#!/usr/bin/env bash
# The hierarchical-OT regulariser's per-task OT step (all class pairs for 100
# and 200 classes), promptcl vs POT's ot.emd2 (what HierC calls) on the same
# problem, in one run; one JSON line per class count in results/perf/.
# Usage: benchmarks/run_ot_bench.sh [--device cuda] ; needs PROMPTCL_PYTHON with `pot`
# (pip install pot) for the ratio, else the Rust figures alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${PROMPTCL_OT_BENCH:-target/release/ot_bench}"
py="${PROMPTCL_PYTHON:-python3}"
samples=120 dim=768 exact_pairs=10
out="results/perf/ot-$(date -u +%Y%m%d-%H%M%S).jsonl"
mkdir -p results/perf
ref="$("$py" benchmarks/ot_reference.py $samples $dim $exact_pairs 2>/dev/null || echo '{}')"
"$bin" --samples $samples --dim $dim --exact-pairs $exact_pairs "$@" | while read -r line; do
    "$py" - "$line" "$ref" <<'PY' | tee -a "$out"
import json, sys
r, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if "exact_per_pair_s" in ref:
    res = r["result"]
    r["pot_emd2_per_pair_s"] = ref["exact_per_pair_s"]
    r["pot_emd2_all_pairs_estimate_s"] = ref["exact_per_pair_s"] * res["pairs"]
    r["ratio_promptcl_exact_over_pot"] = res["exact_per_pair_s"] / ref["exact_per_pair_s"]
    r["ratio_promptcl_sinkhorn_all_over_pot_exact_all"] = res["sinkhorn_all_pairs_s"] / r["pot_emd2_all_pairs_estimate_s"]
print(json.dumps(r))
PY
done
echo "wrote $out" >&2
