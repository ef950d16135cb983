#!/usr/bin/env python3
"""Golden for RanPAC's ridge classifier, as the official code computes it
(RanPAC/RanPAC @ 012927f `RanPAC.py` `optimise_ridge_parameter` and
`replace_fc`; LAMDA-PILOT `models/ranpac.py` is the same), in float64:

    ridges = 10.0 ** np.arange(-8, 9)
    n = int(0.8 * N)                     # first 80 % fit, the rest scores
    Wo = torch.linalg.solve(H1.T @ H1 + l * I, H1.T @ Y1).T
    loss = F.mse_loss(H2 @ Wo.T, Y2)     # mean over every entry
    l = ridges[argmin(losses)]
    Wo = torch.linalg.solve(G + l * I, Q).T   # G, Q summed over the tasks

Features are ReLU of a random projection, as RanPAC's; two "tasks" of
samples; the golden holds each task's λ losses and the final solution.

Run with `make fixtures`; writes crates/learner/tests/fixtures/ridge_golden.safetensors.
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/learner/tests/fixtures/ridge_golden.safetensors"


def optimise_ridge_parameter(h, y):
    ridges = 10.0 ** np.arange(-8, 9)
    n = int(h.shape[0] * 0.8)
    losses = []
    for l in ridges:
        wo = torch.linalg.solve(h[:n].T @ h[:n] + l * torch.eye(h.shape[1], dtype=h.dtype), h[:n].T @ y[:n]).T
        losses.append(F.mse_loss(h[n:] @ wo.T, y[n:]))
    return ridges[int(np.argmin(np.array(losses)))], torch.stack(losses)


def main():
    torch.manual_seed(4)
    d, m, classes = 16, 48, 6
    w_rand = torch.randn(d, m, dtype=torch.float64)
    g = torch.zeros(m, m, dtype=torch.float64)
    q = torch.zeros(m, classes, dtype=torch.float64)
    out = {}
    for t, (n, cls) in enumerate([(40, [0, 1, 2]), (35, [3, 4, 5])]):
        labels = torch.tensor(cls)[torch.randint(0, 3, (n,))]
        feats = torch.randn(n, d, dtype=torch.float64) + labels[:, None].double() * 0.3
        h = torch.relu(feats @ w_rand)
        y = F.one_hot(labels, classes).double()
        g += h.T @ h
        q += h.T @ y
        lam, losses = optimise_ridge_parameter(h, y)
        out[f"task{t}.h"] = h
        out[f"task{t}.labels"] = labels
        out[f"task{t}.losses"] = losses
        out[f"task{t}.lambda"] = torch.tensor([lam], dtype=torch.float64)
        out[f"task{t}.w"] = torch.linalg.solve(g + lam * torch.eye(m, dtype=torch.float64), q)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
