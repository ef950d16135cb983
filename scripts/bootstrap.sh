#!/usr/bin/env bash
# Idempotent set-up of the Python side that promptcl builds and tests against:
# a venv holding torch==2.11.0 (the exact libtorch that tch 0.24 links), numpy and
# safetensors, kept in a per-user cache so every clone and CI run reuses it.
#
# Prints the venv path on stdout (the last line); everything else goes to stderr.
# Optional extras (for regenerating golden fixtures): PROMPTCL_EXTRAS="timm"
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE_ROOT="${PROMPTCL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/promptcl}"
VENV="$CACHE_ROOT/venv-torch-$TORCH_VERSION"
STAMP="$VENV/.promptcl-ready"
PY="${PYTHON:-python3}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ ! -f "$STAMP" ]; then
    mkdir -p "$CACHE_ROOT"
    # A lock so two clones bootstrapping at once don't interleave pip installs.
    exec 9>"$CACHE_ROOT/.bootstrap.lock"
    flock 9
    if [ ! -f "$STAMP" ]; then
        log "creating $VENV (torch==$TORCH_VERSION, ~4.7 GB, a few minutes on first use)"
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy safetensors >&2
        "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__" >&2
        touch "$STAMP"
        log "ready"
    fi
    flock -u 9
fi

for extra in ${PROMPTCL_EXTRAS:-}; do
    if ! "$VENV/bin/python" -c "import $extra" 2>/dev/null; then
        log "installing $extra into $VENV"
        # timm needs torchvision; pin the one built for this torch so pip never swaps torch.
        # Extras serve optional tests and fixture regeneration: a failed
        # install (offline machine) is a warning, and those tests say they skip.
        case "$extra" in
            timm) "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "torchvision==0.26.*" timm >&2 ;;
            *) "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" "$extra" >&2 ;;
        esac || log "could not install $extra; tests that need it will be skipped"
    fi
done

echo "$VENV"
