#!/usr/bin/env python3
"""Golden values for HierC's losses: the official `supervised_contrastive_loss`
and `subsup_loss` (tranquyenbk173/HierC engines/hide_promtp_wtp_and_tap_engine.py),
re-typed here verbatim in behaviour, on random features, with gradients.
Writes crates/learner/tests/fixtures/hierc_golden.safetensors."""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/learner/tests/fixtures"


def supervised_contrastive_loss(features, labels, temperature=0.1, Gamma=None):
    features = F.normalize(features, p=2, dim=1)
    n_sample = len(features)
    if Gamma is not None:
        weight_matrix = torch.zeros((n_sample, n_sample))
        for i in range(n_sample):
            for j in range(n_sample):
                if weight_matrix[i][j] != 0:
                    continue
                weight_matrix[i][j] = Gamma[labels[i], labels[j]]
                weight_matrix[j][i] = weight_matrix[i][j]
        weight_matrix = weight_matrix.detach()
    else:
        weight_matrix = torch.ones((n_sample, n_sample)).detach()
    sim_matrix = torch.matmul(features, features.t()) / temperature
    sim_matrix = sim_matrix * weight_matrix
    mask = torch.eye(labels.size(0), dtype=torch.bool)
    label_mask = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive_mask = label_mask & ~mask
    if positive_mask.sum() == 0:
        return torch.tensor(0.0)
    logits = sim_matrix - torch.max(sim_matrix, dim=1, keepdim=True)[0]
    log_prob = F.log_softmax(logits, dim=1)
    return -log_prob[positive_mask].sum() / positive_mask.sum()


def subsup_loss(features, labels, label_sets, temperature=0.1, Gamma=None):
    total = 0.0
    for subset in label_sets:
        m = torch.isin(labels, torch.tensor(subset))
        if m.sum() > 1:
            total = total + supervised_contrastive_loss(features[m], labels[m], temperature, Gamma)
    return total / len(label_sets)


def main():
    torch.manual_seed(0)
    feats = torch.randn(14, 8, dtype=torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 5, 6, 4])
    w = torch.rand(7, 7, dtype=torch.float64)
    w = (w + w.T) / 2
    w.fill_diagonal_(0)
    gamma = 1 / np.exp(w / 0.5)  # the official `1 / np.exp(WSDMatrix / args.delta)`
    groups = [[0, 1, 2], [3, 4], [5, 6]]
    g = {}
    plain = supervised_contrastive_loss(feats, labels)
    plain.backward()
    g["features"], g["labels"], g["w"] = feats.detach(), labels, w
    g["plain"], g["grad_plain"] = plain.detach(), feats.grad.clone()
    feats.grad = None
    weighted = supervised_contrastive_loss(feats, labels, Gamma=gamma)
    weighted.backward()
    g["weighted"], g["grad_weighted"] = weighted.detach(), feats.grad.clone()
    feats.grad = None
    sub = subsup_loss(feats, labels, groups, Gamma=gamma)
    sub.backward()
    g["subgroup"], g["grad_subgroup"] = sub.detach(), feats.grad.clone()
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in g.items()}, OUT / "hierc_golden.safetensors")
    print({k: float(v) for k, v in g.items() if v.dim() == 0})


if __name__ == "__main__":
    main()
