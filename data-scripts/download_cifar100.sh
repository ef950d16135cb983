#!/usr/bin/env bash
# Downloads CIFAR-100 (python and binary formats) from the official site,
# verifies the published MD5 sums, and unpacks into DEST (default data/).
# Usage: data-scripts/download_cifar100.sh [DEST]
set -euo pipefail
DEST="${1:-data}"
mkdir -p "$DEST"
cd "$DEST"
fetch() {  # url md5
    local f; f="$(basename "$1")"
    if [ ! -f "$f" ] || ! echo "$2  $f" | md5sum -c --quiet - 2>/dev/null; then
        curl -fL --retry 3 -o "$f.part" "$1" && mv "$f.part" "$f"
    fi
    echo "$2  $f" | md5sum -c - || { echo "checksum mismatch for $f; delete it and retry" >&2; exit 1; }
    tar xzf "$f"
}
# MD5 sums as published on https://www.cs.toronto.edu/~kriz/cifar.html
fetch https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz eb9058c3a382ffc7106e4002c42a8d85
fetch https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz 03b5dce01913d631647c71ecec9e9cb8
echo "CIFAR-100 ready in $(pwd): point a config at { kind = \"cifar100\", root = \"$(pwd)\" }"
