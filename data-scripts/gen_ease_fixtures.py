#!/usr/bin/env python3
"""Golden for EASE's prototype completion and reweighted classifier as the
official code computes them (sun-hailong/CVPR24-Ease @ 6d67508, identical in
LAMDA-PILOT): `EaseNet.update_fc`'s zeroed fc with old blocks copied,
`replace_fc`'s class means written into every subspace so far,
`solve_sim_reset` (recalc_sim = true) or `solve_similarity` (false) with
their element-wise loops, and `CosineLinear.forward_reweight`; with and
without `use_init_ptm`. Random features stand in for the adapters' class
tokens: four tasks (init_cls 3, inc 2), D = 8.

Run with `make fixtures`; writes crates/learner/tests/fixtures/ease_golden.safetensors.
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/learner/tests/fixtures/ease_golden.safetensors"
INIT, INC, TASKS, D = 3, 2, 4, 8


def cls_range(task):
    if task == 0:
        return 0, INIT
    s = INIT + (task - 1) * INC
    return s, s + INC


def combine(A, B, A_hat):
    """The loops both official routines share: softmax over the cosines of
    A_hat's rows with A's, times B."""
    sim = torch.zeros(len(A_hat), len(A))
    for i in range(len(A_hat)):
        for j in range(len(A)):
            sim[i][j] = torch.cosine_similarity(A_hat[i], A[j], dim=0)
    sim = F.softmax(sim, dim=1)
    B_hat = torch.zeros(A_hat.shape[0], B.shape[1])
    for i in range(len(A_hat)):
        for j in range(len(A)):
            B_hat[i] += sim[i][j] * B[j]
    return B_hat


def solve_sim_reset(w, cur, ptm):
    for task_id in range(cur):
        dims = range(task_id + 2, cur + 2) if ptm else range(task_id + 1, cur + 1)
        for dim_id in dims:
            start_cls, end_cls = cls_range(task_id)
            start_dim, end_dim = dim_id * D, (dim_id + 1) * D
            if ptm:
                s_old, e_old = INIT + (dim_id - 2) * INC, w.shape[0]
                sd_old, ed_old = (task_id + 1) * D, (task_id + 2) * D
            else:
                s_old, e_old = INIT + (dim_id - 1) * INC, w.shape[0]
                sd_old, ed_old = task_id * D, (task_id + 1) * D
            A = w[s_old:e_old, sd_old:ed_old].clone()
            B = w[s_old:e_old, start_dim:end_dim].clone()
            A_hat = w[start_cls:end_cls, sd_old:ed_old].clone()
            w[start_cls:end_cls, start_dim:end_dim] = combine(A, B, A_hat)


def solve_similarity(w, cur, ptm, known):
    for task_id in range(cur):
        start_cls, end_cls = cls_range(task_id)
        start_dim = (task_id + 1) * D if ptm else task_id * D
        A = w[known:, start_dim:start_dim + D].clone()
        B = w[known:, -D:].clone()
        A_hat = w[start_cls:end_cls, start_dim:start_dim + D].clone()
        w[start_cls:end_cls, -D:] = combine(A, B, A_hat)


def forward_reweight(x, weight, cur, alpha, beta, ptm):
    in_features = weight.shape[1]
    for i in range(cur + 1):
        start_cls, end_cls = cls_range(i)
        out = 0.0
        for j in range(in_features // D):
            if ptm and j == 0:
                out = out + beta * F.linear(F.normalize(x[:, :D], p=2, dim=1), F.normalize(weight[start_cls:end_cls, :D], p=2, dim=1))
                continue
            x1 = F.normalize(x[:, j * D:(j + 1) * D], p=2, dim=1)
            w1 = F.normalize(weight[start_cls:end_cls, j * D:(j + 1) * D], p=2, dim=1)
            own = (i + 1) if ptm else i
            if j != own:
                o = alpha * F.linear(x1, w1)
                o /= cur
            else:
                o = F.linear(x1, w1)
            out = out + o
        out_all = out if i == 0 else torch.cat((out_all, out), dim=1)
    return out_all  # sigma = 1 (never trained)


def main():
    torch.manual_seed(11)
    total = INIT + (TASKS - 1) * INC
    nb = TASKS + 1
    # feats[c, b]: class c's mean feature in subspace b (b = 0 is the pretrained one).
    feats = torch.randn(total, nb, D) + 0.5
    test = torch.randn(5, nb, D)
    out = {"class_means": feats, "test": test}
    for ptm in (False, True):
        for recalc in (True, False):
            name = f"{'ptm' if ptm else 'adapters'}.{'reset' if recalc else 'newest'}"
            fc = None
            for t in range(TASKS):
                known, end = cls_range(t)
                blocks = t + 1 + int(ptm)
                new = torch.zeros(end, blocks * D)
                if fc is not None:
                    new[:fc.shape[0], :-D] = fc
                fc = new
                first = 0 if ptm else 1  # the features' pretrained block is index 0
                for b in range(blocks):
                    fc[known:end, b * D:(b + 1) * D] = feats[known:end, b + first]
                if recalc:
                    solve_sim_reset(fc, t, ptm)
                else:
                    solve_similarity(fc, t, ptm, known)
                x = test[:, first:first + blocks].reshape(5, -1)
                out[f"{name}.protos.{t}"] = fc.view(end, blocks, D).clone()
                out[f"{name}.logits.{t}"] = forward_reweight(x, fc, t, 0.1, 0.3, ptm)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
