#!/usr/bin/env bash
# Downloads ImageNet-R (Hendrycks et al. 2021), verifies its MD5 (the one
# torchvision-style loaders in the CL code bases check), unpacks it into
# DEST/imagenet-r, and writes promptcl's deterministic 80/20 split file there.
# Usage: data-scripts/download_imagenet_r.sh [DEST] [SEED]
set -euo pipefail
DEST="${1:-data}"
SEED="${2:-0}"
mkdir -p "$DEST"
cd "$DEST"
f=imagenet-r.tar
md5=a61312130a589d0ca1a8fca1f2bd3337
if [ ! -f "$f" ] || ! echo "$md5  $f" | md5sum -c --quiet - 2>/dev/null; then
    curl -fL --retry 3 -o "$f.part" https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar && mv "$f.part" "$f"
fi
echo "$md5  $f" | md5sum -c - || { echo "checksum mismatch for $f; delete it and retry" >&2; exit 1; }
[ -d imagenet-r ] || tar xf "$f"
n=$(find imagenet-r -mindepth 1 -maxdepth 1 -type d | wc -l)
[ "$n" = 200 ] || { echo "expected 200 class folders in imagenet-r, found $n" >&2; exit 1; }
# The split file is written by promptcl itself on first load; this makes it now.
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../target/debug/promptcl" split-folder "$(pwd)/imagenet-r" --seed "$SEED" \
    || echo "(build promptcl first to write the split file now; it is written on first use otherwise)"
