#!/usr/bin/env python3
"""Golden for VPT-NSP as its official code computes it
(zugexiaodui/VPTinNSforCL @ 0d9c547), reimplemented on the tiny fixture ViT:

- `utils/vit_builder.py` `Block.forward` with prompts: the layer's prompt
  tokens are appended to its tokens, go through `norm1` and the attention
  with them, and only the first N outputs are kept (no MLP or residual for
  the prompts); outputs: the final-norm class token and the gradients of
  `sum(cls * probe)` with respect to every layer's prompts;
- `train_eval.py` `get_interm_tensor_dict`: per layer, `interm_reader_1`
  (the image tokens' queries before scaling times each head's W_k, XᵀX / rows)
  and `interm_reader_2` (their post-softmax attention to the prompts);
- `get_update_projection_dict`: `adaptive_threshold` (scipy's
  `gaussian_filter1d(sigma=10)` for spectra of 128 values or more), the
  null-space basis, `B / ‖B‖_F` and `η·B + (1 − η)·I`, in float64 here (the
  official SVD runs in float32), on each layer's matrices and on a synthetic
  300-value spectrum that takes the smoothing path;
- `utils/mod_adam.py`: two Adam steps (coupled weight decay) whose updates
  are projected `P₂ · Δ · P₁`.

Run with `make fixtures`; writes crates/learner/tests/fixtures/vptnsp_golden.safetensors.
"""
import pathlib

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "crates/model/tests/fixtures/vit_tiny_test.safetensors"
OUT = ROOT / "crates/learner/tests/fixtures/vptnsp_golden.safetensors"
D, HEADS, DEPTH, PATCH, L = 64, 4, 3, 8, 4


def forward(w, x, prompts, readers=None):
    hd = D // HEADS
    lin = lambda h, name: F.linear(h, w[name + ".weight"], w[name + ".bias"])
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
    n = x.shape[1]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        z = torch.cat([x, prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1)], 1)
        h = norm(z, b + ".norm1")
        B, S, _ = h.shape
        qkv = lin(h, b + ".attn.qkv").reshape(B, S, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if readers is not None:
            readers.setdefault(i, {})["q"] = q.detach()
        attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        if readers is not None:
            readers[i]["attn"] = attn.detach()
        a = (attn @ v).transpose(1, 2).reshape(B, S, D)
        x = x + lin(a, b + ".attn.proj")[:, :n]
        x = x + lin(F.gelu(lin(norm(x, b + ".norm2"), b + ".mlp.fc1")), b + ".mlp.fc2")
    return norm(x, "norm")[:, 0]


def interm(w, readers, n):
    out = {}
    for i, r in readers.items():
        w_k = w[f"blocks.{i}.attn.qkv.weight"].reshape(3, D, D).unbind(0)[1].reshape(HEADS, D // HEADS, D)
        t = r["q"][:, :, :n] @ w_k.unsqueeze(0).expand(r["q"].shape[0], -1, -1, -1)
        t = t.reshape(-1, D)
        out[f"m1.{i}"] = t.T @ t / t.shape[0]
        t = r["attn"][:, :, :n, n:].reshape(-1, L)
        out[f"m2.{i}"] = t.T @ t / t.shape[0]
    return out


def adaptive_threshold(points):
    if len(points) >= 128:
        fil = scipy.ndimage.gaussian_filter1d(points, sigma=10)
        d1 = fil[:-1] - fil[1:]
        d2 = d1[:-1] - d1[1:]
        drop = int(len(points) * 0.03 / 2)
        valid = d2[drop:-drop]
        thres = points[np.argmax(valid) + int((len(points) - len(valid)) / 2)]
    else:
        d1 = points[:-1] - points[1:]
        d2 = d1[:-1] - d1[1:]
        thres = points[np.argmax(d2) + int((len(points) - len(d2)) / 2)]
    return int(np.arange(len(points))[points >= thres].max())


def projection(m, eta):
    _, s, vh = torch.linalg.svd(m.double(), full_matrices=True)
    i = adaptive_threshold(s.numpy())
    u0 = vh[i:]
    b = u0.T @ u0
    b = b / torch.norm(b)
    return eta * b + (1 - eta) * torch.eye(b.shape[0], dtype=b.dtype), i


def mod_adam(p, grads, lr, wd, p1, p2, betas=(0.9, 0.999), eps=1e-8):
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g + wd * p
        m = torch.lerp(m, g, 1 - betas[0])
        v = v * betas[1] + (1 - betas[1]) * g * g
        step_size = -lr / (1 - betas[0] ** t)
        denom = v.sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
        update = m / denom * step_size
        update = p2 @ update @ p1
        p = p + update
    return p


def main():
    torch.manual_seed(23)
    w = load_file(str(WEIGHTS))
    images = torch.randn(2, 3, 32, 32)
    prompts = [(torch.rand(L, D) * 2 - 1).requires_grad_() for _ in range(DEPTH)]
    probe = torch.randn(2, D)
    readers = {}
    cls = forward(w, images, prompts, readers)
    (cls * probe).sum().backward()
    n = 1 + (32 // PATCH) ** 2
    out = {"images": images, "probe": probe, "cls": cls.detach()}
    for i, p in enumerate(prompts):
        out[f"prompt.{i}"] = p.detach()
        out[f"grad.{i}"] = p.grad
    mats = interm(w, readers, n)
    out.update(mats)
    eta = 0.97
    for i in range(DEPTH):
        for m in ("m1", "m2"):
            proj, start = projection(mats[f"{m}.{i}"], eta)
            out[f"proj.{m}.{i}"] = proj
            out[f"start.{m}.{i}"] = torch.tensor([start])
    # A long spectrum with an elbow, through the smoothing path.
    k = np.arange(300)
    spectrum = np.sort(np.exp(-k / 15.0) * 50 + 0.01 * np.exp(-k / 400.0) + np.random.default_rng(3).uniform(0, 1e-3, 300))[::-1].copy()
    out["spectrum"] = torch.from_numpy(spectrum)
    out["spectrum.start"] = torch.tensor([adaptive_threshold(spectrum)])
    # Two projected Adam steps on layer 0's prompts.
    p1, p2 = out["proj.m1.0"].float(), out["proj.m2.0"].float()
    g1, g2 = torch.randn(L, D), torch.randn(L, D)
    out["adam.p0"], out["adam.g1"], out["adam.g2"] = prompts[0].detach().clone(), g1, g2
    out["adam.p2"] = mod_adam(prompts[0].detach().clone(), [g1, g2], 0.01, 5e-5, p1, p2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
