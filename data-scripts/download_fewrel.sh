#!/usr/bin/env bash
# Downloads the relation-extraction data promptcl reads (needs internet):
#   <dest>/fewrel/fewrel80.json       FewRel 1.0 train_wiki + val_wiki merged: 80 relations × 700,
#                                     the full-data protocol (`kind = "relation-json", protocol = "fewrel"`)
#   <dest>/cfrl-fewrel/               the continual few-shot (CFRL) files, if a source is given:
#                                     set CFRL_URL to a tarball of the CFRL release's data/fewrel folder
#                                     (relation_name.txt, rel_index.npy, CFRLdata_10_100_10_{2,5,10}/)
# TACRED is licensed by the LDC and cannot be downloaded here; convert your copy to
# the same JSON shape ({relation: [{tokens, h: [name, id, [[pos]]], t: …}]}) and use protocol = "tacred".
# Usage: data-scripts/download_fewrel.sh [dest=data]
set -euo pipefail
dest="${1:-data}"
base="https://raw.githubusercontent.com/thunlp/FewRel/master/data"
mkdir -p "$dest/fewrel"
for f in train_wiki.json val_wiki.json pid2name.json; do
    [[ -s "$dest/fewrel/$f" ]] || curl -fL --retry 3 -o "$dest/fewrel/$f" "$base/$f"
done
python3 - "$dest/fewrel" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
merged = {}
for name in ("train_wiki.json", "val_wiki.json"):
    part = json.loads((d / name).read_text())
    overlap = merged.keys() & part.keys()
    if overlap:
        sys.exit(f"{name}: relations {sorted(overlap)[:5]} appear twice")
    merged.update(part)
if len(merged) != 80 or any(len(v) != 700 for v in merged.values()):
    sys.exit(f"expected 80 relations × 700 examples, got {len(merged)} relations")
(d / "fewrel80.json").write_text(json.dumps(merged))
print(d / "fewrel80.json")
PY
if [[ -n "${CFRL_URL:-}" ]]; then
    mkdir -p "$dest/cfrl-fewrel"
    curl -fL --retry 3 "$CFRL_URL" | tar -xz -C "$dest/cfrl-fewrel" --strip-components=1
    ls "$dest/cfrl-fewrel"
fi
