#!/usr/bin/env python3
"""POT's `ot.emd2` (what HierC calls) on the same OT problem as ot_bench:
uniform weights, squared Euclidean cost (`ot.dist`), `samples` points per
class in `dim` dimensions. Prints JSON {exact_per_pair_s, pairs}.
Usage: ot_reference.py <samples> <dim> <pairs>"""
import json
import sys
import time

import numpy as np
import ot


def main():
    n, d, pairs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    sets = [rng.standard_normal((n, d)) + 2 * rng.standard_normal((1, d)) for _ in range(pairs + 1)]
    a = np.ones(n) / n
    t = time.perf_counter()
    for i in range(pairs):
        ot.emd2(a, a, ot.dist(sets[i], sets[i + 1]))
    print(json.dumps({"exact_per_pair_s": (time.perf_counter() - t) / pairs, "pairs": pairs}))


if __name__ == "__main__":
    main()
