#!/usr/bin/env bash
# The real continual relation-extraction run that fits a 2-core CPU: the
# cre_fewrel5_*.toml configs (real FewRel CFRL 5-shot stream, real
# all-MiniLM-L6-v2) with a CPU budget applied on top, stated here and saved
# resolved in every run folder:
#   - the seeds in $SEEDS (default: 2021) instead of the five 2021 ... 2421;
#   - 2 prompt/TII epochs per task instead of 10;
#   - the first 20 test examples of each relation instead of 100.
# Results go to results/cre/ with a compare table and plots.
# Usage: [SEEDS="2021 2121"] benchmarks/run_cre_cpu.sh [method ...]   (default: all five)
# Seeds with a finished run folder in results/cre/runs are not run again.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ -d ../shared/data/cfrl-fewrel ]] || { echo "../shared/data/cfrl-fewrel is absent: nothing to run" >&2; exit 1; }
./data-scripts/export_minilm.sh >/dev/null
methods=("${@:-finetune_head l2p hide_prompt epi wave_cre}")
out=results/cre
mkdir -p "$out/configs"
bin="${PROMPTCL_BIN:-target/release/promptcl}"
seeds="${SEEDS:-2021}"
for m in ${methods[@]}; do
    src="benchmarks/configs/cre_fewrel5_$m.toml"
    dst="$out/configs/cre_fewrel5_$m.cpu.toml"
    sed -e 's#"../../../shared/data/#"../../../../shared/data/#' \
        -e "s/^seeds = .*/seeds = [${seeds// /, }]/" \
        -e 's/max_length = 128 }/max_length = 128, test_per_relation = 20 }/' \
        -e 's/^epochs = 10/epochs = 2/' \
        -e 's/tii_epochs = 10/tii_epochs = 2/' \
        -e 's#^eval_batch_size = 128#eval_batch_size = 128\nresults_dir = "results/cre/runs"#' "$src" > "$dst"
    for seed in $seeds; do
        if grep -qs '"finished": *true' "$out"/runs/*-"${m//_/-}"-seed"$seed"-*/state.json; then
            echo "$m seed $seed: finished run present, skipped"
            continue
        fi
        start=$(date +%s)
        "$bin" run "$dst" --seed "$seed" --quiet
        echo "$m seed $seed: $(( $(date +%s) - start )) s wall" | tee -a "$out/wall_times.txt"
    done
done
"$bin" compare $out/runs/* --out "$out" --quiet
"$bin" plot $out/runs --out "$out" --quiet >/dev/null
