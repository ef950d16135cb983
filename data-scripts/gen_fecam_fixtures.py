#!/usr/bin/env python3
"""Golden for FeCAM's classifier as its official ViT script computes it
(dipamgoswami/FeCAM @ d2479b7, `FeCAM_vit_cifar100.py`: `shrink_cov`,
`normalize_cov`, `np.linalg.pinv`, the Mahalanobis distance), in numpy
float64, on L2-normalised random features of three classes; both the
CIFAR-100 shrinkage (a1 = 1, a2 = 0) and the ImageNet-R one (10, 10).

Also LAMDA-PILOT's variant (`models/fecam.py`: raw features, `S + 100·I`,
`torch.corrcoef`, `torch.linalg.pinv`, normalised x and μ in the distance).

Run with `make fixtures`; writes crates/learner/tests/fixtures/fecam_golden.safetensors.
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/learner/tests/fixtures/fecam_golden.safetensors"


def shrink_cov(cov, a1, a2):
    diag_mean = np.mean(np.diagonal(cov))
    off_diag = np.copy(cov)
    np.fill_diagonal(off_diag, 0.0)
    mask = off_diag != 0.0
    off_diag_mean = (off_diag * mask).sum() / mask.sum()
    iden = np.eye(cov.shape[0])
    return cov + a1 * diag_mean * iden + a2 * off_diag_mean * (1 - iden)


def normalize_cov(cov):
    sd = np.sqrt(np.diagonal(cov))
    return cov / np.matmul(np.expand_dims(sd, 1), np.expand_dims(sd, 0))


def main():
    rng = np.random.default_rng(7)
    d, per_class, classes = 12, 9, 3
    feats = rng.normal(size=(classes * per_class, d)) + np.repeat(rng.normal(size=(classes, d)), per_class, 0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    test = rng.normal(size=(5, d))
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    out = {"features": torch.from_numpy(feats), "labels": torch.from_numpy(labels), "test": torch.from_numpy(test)}
    for name, a1, a2 in [("cifar", 1.0, 0.0), ("imr", 10.0, 10.0)]:
        dists = []
        for c in range(classes):
            x = feats[labels == c]
            mu = x.mean(0)
            inv = np.linalg.pinv(normalize_cov(shrink_cov(np.cov(x.T), a1, a2)))
            delta = test - mu
            dists.append(np.diagonal(delta @ inv @ delta.T))
        out[f"{name}.distances"] = torch.from_numpy(np.stack(dists, 1))
    # LAMDA-PILOT's models/fecam.py @2647455: raw (adapted) features, torch.cov + 100·I,
    # torch.corrcoef of that matrix, torch.linalg.pinv, distances between L2-normalised
    # x and μ. Official in float32; the float64 twin uses float32's default pinv cut-off
    # (eps_f32 · D), which is what promptcl computes.
    raw = torch.from_numpy(rng.normal(size=(classes * per_class, d)) * 2 + np.repeat(rng.normal(size=(classes, d)), per_class, 0))
    raw_test = torch.from_numpy(rng.normal(size=(5, d)) * 2)
    out["pilot.features"], out["pilot.test"] = raw, raw_test
    for kind, name in [(torch.float32, "pilot.distances.f32"), (torch.float64, "pilot.distances")]:
        dists = []
        for c in range(classes):
            x = raw[torch.from_numpy(labels == c)].to(kind)
            cov = torch.corrcoef(torch.cov(x.T) + 100 * torch.eye(d, dtype=kind))
            rtol = torch.finfo(torch.float32).eps * d
            inv = torch.linalg.pinv(cov) if kind == torch.float32 else torch.linalg.pinv(cov, rtol=rtol)
            delta = F.normalize(raw_test.to(kind), p=2, dim=-1) - F.normalize(x.mean(0), p=2, dim=-1)
            dists.append(torch.diagonal(delta @ inv @ delta.T))
        out[name] = torch.stack(dists, 1).double()
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
