#!/usr/bin/env python3
"""Prints the class orders the official code bases use, as TOML/JSON lists a
promptcl config can pin (`order = [...]`), so runs follow the same class
sequence as the papers without reimplementing their RNGs.

- NoRGa / HiDe-Prompt / DualPrompt / L2P (`--shuffle True` with `--seed S`):
  `random.seed(S)`... the split in `continual_datasets/build_continual_dataloader`
  calls `random.shuffle(labels)` after the scripts seed Python's RNG with S
  (the NoRGa scripts use seeds 42, 40, 44).
- PyCIL / LAMDA-PILOT: `np.random.seed(1993); np.random.permutation(n)`.

Usage: class_orders.py {python-shuffle,numpy-permutation} NUM_CLASSES SEED [--json]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["python-shuffle", "numpy-permutation"])
    ap.add_argument("num_classes", type=int)
    ap.add_argument("seed", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    order = (python_shuffle if a.kind == "python-shuffle" else numpy_permutation)(a.num_classes, a.seed)
    print(json.dumps(order) if a.json else f"order = {order}  # {a.kind} seed {a.seed}")


if __name__ == "__main__":
    main()
