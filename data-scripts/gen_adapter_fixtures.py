#!/usr/bin/env python3
"""Golden for the ViT's AdaptFormer adapters and SSF, as LAMDA-PILOT computes
them (sun-hailong/LAMDA-PILOT @ 2647455), reimplemented on the tiny fixture ViT:

- `backbone/vit_adapter.py`: `Adapter` with ffn_option="parallel", layernorm
  "none", scalar 0.1, called with add_residual=False, i.e.
  `x = x + attn(norm1(x)); x = x + mlp(norm2(x)) + 0.1 * up(dropout(relu(down(x))))`
  (dropout inactive here: the golden is in eval mode);
- `backbone/vit_ssf.py`: `ssf_ada(x, scale, shift) = x * scale + shift` after the
  patch embedding, norm1, qkv, proj, norm2, fc1 (before GELU), fc2 and the final norm;
- `backbone/vpt.py` `VPT_ViT.forward_features` (APER's VPT variant): "Deep" appends
  each block's prompt tokens to its input and drops their outputs after the
  block; "Shallow" appends them once before the first block and drops them
  after the last.

The adapter's up-projection is random here (PILOT zero-initialises it, which
would make the check trivial). Outputs: the final-norm class token and the
gradients of `sum(cls * probe)` with respect to every adapter and SSF tensor.

Run with `make fixtures`; writes crates/model/tests/fixtures/vit_adapter_golden.safetensors.
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FIX = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"
D, HEADS, DEPTH, PATCH, HIDDEN, R = 64, 4, 3, 8, 256, 8


def ssf(x, g, name):
    return x * g[name + ".scale"] + g[name + ".shift"] if name + ".scale" in g else x


def forward(w, x, g, adapters, use_ssf):
    s = g if use_ssf else {}
    hd = D // HEADS
    lin = lambda h, name: F.linear(h, w[name + ".weight"], w[name + ".bias"])
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = ssf(x, s, "ssf.embed")
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
    for i in range(DEPTH):
        p, a = f"blocks.{i}.", f"ssf.{i}."
        n = x.shape[1]
        h = ssf(norm(x, p + "norm1"), s, a + "norm1")
        qkv = ssf(lin(h, p + "attn.qkv"), s, a + "qkv")
        q, k, v = qkv.reshape(-1, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        x = x + ssf(lin((att @ v).transpose(1, 2).reshape(-1, n, D), p + "attn.proj"), s, a + "proj")
        h = ssf(norm(x, p + "norm2"), s, a + "norm2")
        mlp = ssf(lin(F.gelu(ssf(lin(h, p + "mlp.fc1"), s, a + "fc1")), p + "mlp.fc2"), s, a + "fc2")
        if adapters:
            b = f"adapter.{i}."
            adapt = F.linear(F.relu(F.linear(x, g[b + "down.weight"], g[b + "down.bias"])), g[b + "up.weight"], g[b + "up.bias"]) * 0.1
            x = x + mlp + adapt
        else:
            x = x + mlp
    return ssf(norm(x, "norm"), s, "ssf.final")[:, 0]


def forward_vpt(w, x, prompts, deep):
    hd = D // HEADS
    lin = lambda h, name: F.linear(h, w[name + ".weight"], w[name + ".bias"])
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)

    def block(x, i):
        p, n = f"blocks.{i}.", x.shape[1]
        q, k, v = lin(norm(x, p + "norm1"), p + "attn.qkv").reshape(-1, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(-1, n, D), p + "attn.proj")
        return x + lin(F.gelu(lin(norm(x, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")

    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
    L = prompts.shape[1]
    if deep:
        for i in range(DEPTH):
            x = torch.cat((x, prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1)), dim=1)
            x = block(x, i)[:, : x.shape[1] - L]
    else:
        x = torch.cat((x, prompts.expand(x.shape[0], -1, -1)), dim=1)
        for i in range(DEPTH):
            x = block(x, i)
        x = x[:, : x.shape[1] - L]
    return norm(x, "norm")[:, 0]


def main():
    w = load_file(FIX / "vit_tiny_test.safetensors")
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    probe = torch.randn(2, D)
    g = {}
    for i in range(DEPTH):
        b = f"adapter.{i}."
        bound = 1 / D ** 0.5  # kaiming_uniform_(a=sqrt(5)) on a [R, D] weight
        g[b + "down.weight"] = torch.empty(R, D).uniform_(-bound, bound)
        g[b + "down.bias"] = torch.randn(R) * 0.1
        g[b + "up.weight"] = torch.randn(D, R) * 0.2
        g[b + "up.bias"] = torch.randn(D) * 0.1
        for op, width in [("norm1", D), ("qkv", 3 * D), ("proj", D), ("norm2", D), ("fc1", HIDDEN), ("fc2", D)]:
            g[f"ssf.{i}.{op}.scale"] = 1 + 0.02 * torch.randn(width) * 10
            g[f"ssf.{i}.{op}.shift"] = 0.02 * torch.randn(width) * 10
    for end in ["embed", "final"]:
        g[f"ssf.{end}.scale"] = 1 + 0.2 * torch.randn(D)
        g[f"ssf.{end}.shift"] = 0.2 * torch.randn(D)
    out = {"input": x, "probe": probe}
    for case, adapters, use_ssf in [("adapter", True, False), ("ssf", False, True)]:
        params = {k: v.clone().requires_grad_(True) for k, v in g.items() if k.startswith("adapter." if adapters else "ssf.")}
        cls = forward(w, x, params, adapters, use_ssf)
        (cls * probe).sum().backward()
        out[f"{case}.cls"] = cls.detach()
        for k, v in params.items():
            out[k] = v.detach()
            out[f"{case}.grad.{k}"] = v.grad
    # Drawn after everything above, so the adapter and SSF tensors stay as they were.
    for case, deep, rows in [("vpt_deep", True, DEPTH), ("vpt_shallow", False, 1)]:
        prompts = (0.5 * torch.randn(rows, 3, D)).requires_grad_(True)
        cls = forward_vpt(w, x, prompts, deep)
        (cls * probe).sum().backward()
        out[f"{case}.prompts"] = prompts.detach()
        out[f"{case}.cls"] = cls.detach()
        out[f"{case}.grad"] = prompts.grad
    save_file({n: t.contiguous() for n, t in out.items()}, FIX / "vit_adapter_golden.safetensors")
    print(f"wrote {len(out)} tensors to {FIX / 'vit_adapter_golden.safetensors'}")


if __name__ == "__main__":
    main()
