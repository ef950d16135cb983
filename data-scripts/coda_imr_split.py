#!/usr/bin/env python3
"""CODA-Prompt's fixed ImageNet-R split (GT-RIPL/CODA-Prompt
`dataloaders/splits/imagenet-r_{train,test}.yaml`) as promptcl's `lists`
split, and CODA's class order.

Each YAML file holds `data:` (paths like `data/imagenet-r/<wnid>/<file>.jpg`)
and `targets:` (CODA's class index of each path). promptcl labels a class by
its wnid folder's place in the sorted folder list, so CODA's order (its
targets 0, 1, ...) is pinned as the list of promptcl labels in CODA's order.

Usage: coda_imr_split.py TRAIN_YAML TEST_YAML IMAGENET_R_ROOT
writes IMAGENET_R_ROOT/coda_{train,test}.txt and prints the order as TOML
(`benchmarks/configs/imr_coda_prompt.toml` pins it).
"""
import argparse
import json
import pathlib
import sys


def read(path):
    """(wnid/file, target) pairs from CODA's split YAML (two plain lists)."""
    section, data, targets = None, [], []
    for n, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if line.strip() in ("data:", "targets:"):
            section = line.strip()[:-1]
        elif line.startswith("- ") and section == "data":
            parts = line[2:].strip().split("/")
            if len(parts) < 2:
                sys.exit(f"{path}:{n}: `{line}` is not a <class>/<file> path")
            data.append("/".join(parts[-2:]))
        elif line.startswith("- ") and section == "targets":
            targets.append(int(line[2:]))
        elif line.strip():
            sys.exit(f"{path}:{n}: unexpected line `{line}`")
    if len(data) != len(targets):
        sys.exit(f"{path}: {len(data)} paths but {len(targets)} targets")
    return list(zip(data, targets))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("root", type=pathlib.Path)
    a = ap.parse_args()
    target_of = {}
    for path in (a.train, a.test):
        entries = read(path)
        for rel, t in entries:
            wnid = rel.split("/")[0]
            if target_of.setdefault(wnid, t) != t:
                sys.exit(f"{path}: {wnid} has targets {target_of[wnid]} and {t}")
        side = "train" if path == a.train else "test"
        (a.root / f"coda_{side}.txt").write_text("".join(rel + "\n" for rel, _ in entries))
    wnids = sorted(target_of)
    if sorted(target_of.values()) != list(range(len(wnids))):
        sys.exit("the targets are not 0..N-1, one per class")
    by_target = {t: w for w, t in target_of.items()}
    order = [wnids.index(by_target[t]) for t in range(len(wnids))]
    print(f"order = {json.dumps(order)}")


if __name__ == "__main__":
    main()
