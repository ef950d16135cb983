#!/usr/bin/env bash
# The real continual relation-extraction runs that fit a 2-core CPU: the
# cre_<suite>_*.toml configs (real FewRel, real all-MiniLM-L6-v2) with a CPU
# budget applied on top, stated here and saved resolved in every run folder.
#
# SUITE=fewrel5 (default; results/cre/): the CFRL 5-shot stream, with
#   - the seeds in $SEEDS (default: 2021) instead of the five 2021 ... 2421;
#   - 2 prompt/TII epochs per task instead of 10;
#   - the first 20 test examples of each relation instead of 100.
# SUITE=fewrel80 (results/cre-80/): the fewrel-80 stream (10 tasks of 8), with
#   - the seeds in $SEEDS (default: 2021 2121 2221);
#   - $TRAIN training instances per relation (default 30) instead of 100, the
#     33 test instances kept;
#   - 2 prompt/TII epochs per task instead of 10 (and 2 embedding epochs);
#   - WAVE-CRE's replay (tii-align, align): 10 epochs of 64 samples per relation
#     instead of 100 of 256.
# Usage: [SUITE=fewrel80] [SEEDS="2021 2121"] benchmarks/run_cre_cpu.sh [method ...]   (default: all five)
# Seeds with a finished run folder in the results' runs/ are not run again.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
[[ -d ../shared/data/cfrl-fewrel ]] || { echo "../shared/data/cfrl-fewrel is absent: nothing to run" >&2; exit 1; }
./data-scripts/export_minilm.sh >/dev/null
suite="${SUITE:-fewrel5}"
case "$suite" in
    fewrel5)
        out=results/cre
        seeds="${SEEDS:-2021}"
        budget=(-e 's/max_length = 128 }/max_length = 128, test_per_relation = 20 }/')
        ;;
    fewrel80)
        out=results/cre-80
        seeds="${SEEDS:-2021 2121 2221}"
        budget=(-e "s/train_per_relation = 100/train_per_relation = ${TRAIN:-30}/"
            -e 's/tii_align_epochs = 100/tii_align_epochs = 10/' -e 's/ align_epochs = 100/ align_epochs = 10/' -e 's/replay_samples = 256/replay_samples = 64/')
        ;;
    *) echo "SUITE=$suite: fewrel5 or fewrel80" >&2; exit 1 ;;
esac
methods=("${@:-finetune_head l2p hide_prompt epi wave_cre}")
mkdir -p "$out/configs"
bin="${PROMPTCL_BIN:-target/release/promptcl}"
for m in ${methods[@]}; do
    src="benchmarks/configs/cre_${suite}_$m.toml"
    dst="$out/configs/cre_${suite}_$m.cpu.toml"
    sed -e 's#"../../../shared/data/#"../../../../shared/data/#' \
        -e "s/^seeds = .*/seeds = [${seeds// /, }]/" \
        "${budget[@]}" \
        -e 's/^epochs = 10/epochs = 2/' \
        -e 's/tii_epochs = 10/tii_epochs = 2/' \
        -e 's/embedding_epochs = 10/embedding_epochs = 2/' \
        -e "s#^eval_batch_size = 128#eval_batch_size = 128\nresults_dir = \"$out/runs\"#" "$src" > "$dst"
    # Run folders are <run name>-<method>-seed<seed>-<time>.
    prefix="$(sed -n 's/^name = "\(.*\)"/\1/p' "$dst" | head -1)-$(sed -n 's/^name = "\(.*\)"/\1/p' "$dst" | sed -n 2p)"
    for seed in $seeds; do
        if grep -qs '"finished": *true' "$out"/runs/"$prefix"-seed"$seed"-*/state.json; then
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
