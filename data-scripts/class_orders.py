#!/usr/bin/env python3
"""Prints the class orders the official code bases use, as TOML/JSON lists a
promptcl config can pin (`order = [...]`), so runs follow the same class
sequence as the papers without reimplementing their RNGs.

- NoRGa / HiDe-Prompt / DualPrompt / L2P (`--shuffle True` with `--seed S`):
  `random.seed(S)`... the split in `continual_datasets/build_continual_dataloader`
  calls `random.shuffle(labels)` after the scripts seed Python's RNG with S
  (the NoRGa scripts use seeds 42, 40, 44).
- PyCIL / LAMDA-PILOT: `np.random.seed(1993); np.random.permutation(n)`.
- VPT-NSP (`utils/continual_manager.py`): `np.random.Generator(np.random.PCG64(seed)).shuffle`
  of the sorted class ids (seed 2024 in the official scripts).

Usage: class_orders.py {python-shuffle,numpy-permutation,numpy-pcg64-shuffle} NUM_CLASSES SEED [--json]
"""
import argparse
import json
import random

import numpy as np


def python_shuffle(n, seed):
    random.seed(seed)
    order = list(range(n))
    random.shuffle(order)
    return order


def numpy_permutation(n, seed):
    np.random.seed(seed)
    return [int(c) for c in np.random.permutation(n)]


def pcg64_shuffle(n, seed):
    order = np.arange(n, dtype=np.int64)
    np.random.Generator(np.random.PCG64(seed)).shuffle(order)
    return [int(c) for c in order]


KINDS = {"python-shuffle": python_shuffle, "numpy-permutation": numpy_permutation, "numpy-pcg64-shuffle": pcg64_shuffle}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("num_classes", type=int)
    ap.add_argument("seed", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    order = KINDS[a.kind](a.num_classes, a.seed)
    print(json.dumps(order) if a.json else f"order = {order}  # {a.kind} seed {a.seed}")


if __name__ == "__main__":
    main()
