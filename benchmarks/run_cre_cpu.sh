#!/usr/bin/env bash
# The real continual relation-extraction run that fits a 2-core CPU: the
# cre_fewrel5_*.toml configs (real FewRel CFRL 5-shot stream, real
# all-MiniLM-L6-v2) with a CPU budget applied on top, stated here and saved
# resolved in every run folder:
#   - one seed (2021) instead of five;
#   - 2 prompt/TII epochs per task instead of 10;
#   - the first 20 test examples of each relation instead of 100.
# Results go to results/cre/ with a compare table and plots.
# Usage: benchmarks/run_cre_cpu.sh [method ...]   (default: all five)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ -d ../shared/data/cfrl-fewrel ]] || { echo "../shared/data/cfrl-fewrel is absent: nothing to run" >&2; exit 1; }
./data-scripts/export_minilm.sh >/dev/null
methods=("${@:-finetune_head l2p hide_prompt epi wave_cre}")
out=results/cre
mkdir -p "$out/configs"
bin="${PROMPTCL_BIN:-target/release/promptcl}"
for m in ${methods[@]}; do
    src="benchmarks/configs/cre_fewrel5_$m.toml"
    dst="$out/configs/cre_fewrel5_$m.cpu.toml"
    sed -e 's#"../../../shared/data/#"../../../../shared/data/#' \
        -e 's/^seeds = .*/seeds = [2021]/' \
        -e 's/max_length = 128 }/max_length = 128, test_per_relation = 20 }/' \
        -e 's/^epochs = 10/epochs = 2/' \
        -e 's/tii_epochs = 10/tii_epochs = 2/' \
        -e 's#^eval_batch_size = 128#eval_batch_size = 128\nresults_dir = "results/cre/runs"#' "$src" > "$dst"
    start=$(date +%s)
    "$bin" run "$dst" --quiet
    echo "$m: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_times.txt"
done
"$bin" compare $out/runs/* --out "$out" --quiet
"$bin" plot $out/runs --out "$out" --quiet >/dev/null
