#!/usr/bin/env python3
"""Golden for zero-initialised gated prefix attention as the official code of
Diep et al., "On Zero-Initialized Attention" (ICML 2025;
duyhominhnguyen/llama-adaptor-nonlinear @ c014216, `llama/model.py`
`Attention.forward`, itself LLaMA-Adapter's) computes it, reimplemented in a
ViT block of the tiny fixture model:

    scores = q·[k_pre; k_tok]ᵀ / √d (+ mask on the token columns)
    attn   = [tanh(g) · softmax(scores_pre), softmax(scores_tok)]
    out    = attn · [v_pre; v_tok]

with g one scalar per head (`typ_gate = "random"`) or g = q_h · w_h per query
(`typ_gate = "adapt"`, the query before any rotary embedding; the ViT has none).
Prefix keys and values are given in key/value space per layer (random here),
as any prefix method supplies them. Outputs: the final-norm class token and
the gradients of `sum(cls * probe)` with respect to the prefixes and gates.

Run with `make fixtures`; writes crates/model/tests/fixtures/zero_init_golden.safetensors.
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FIX = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"
D, HEADS, DEPTH, PATCH, L = 64, 4, 3, 8, 3


def forward(w, x, pk, pv, gates, per_query):
    hd = D // HEADS
    lin = lambda h, name: F.linear(h, w[name + ".weight"], w[name + ".bias"])
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
    for i in range(DEPTH):
        b, n = f"blocks.{i}.", x.shape[1]
        q, k, v = lin(norm(x, b + "norm1"), b + "attn.qkv").reshape(-1, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4).unbind(0)
        keys = torch.cat([pk[i].unsqueeze(0).expand(x.shape[0], -1, -1, -1), k], 2)
        values = torch.cat([pv[i].unsqueeze(0).expand(x.shape[0], -1, -1, -1), v], 2)
        scores = q @ keys.transpose(2, 3) / hd ** 0.5
        if per_query:
            gate = torch.tanh(q @ gates[i].unsqueeze(0).unsqueeze(-1))  # [B, H, N, 1]
        else:
            gate = torch.tanh(gates[i]).view(1, HEADS, 1, 1)
        scores = torch.cat([gate * F.softmax(scores[..., :L], dim=-1), F.softmax(scores[..., L:], dim=-1)], -1)
        a = (scores @ values).transpose(1, 2).reshape(-1, n, D)
        x = x + lin(a, b + "attn.proj")
        x = x + lin(F.gelu(lin(norm(x, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")
    return norm(x, "norm")[:, 0]


def main():
    w = load_file(FIX / "vit_tiny_test.safetensors")
    torch.manual_seed(31)
    x = torch.randn(2, 3, 32, 32)
    probe = torch.randn(2, D)
    hd = D // HEADS
    out = {"input": x, "probe": probe}
    for case, per_query in [("per_head", False), ("per_query", True)]:
        pk = (torch.randn(DEPTH, HEADS, L, hd)).requires_grad_(True)
        pv = (torch.randn(DEPTH, HEADS, L, hd)).requires_grad_(True)
        shape = (DEPTH, HEADS, hd) if per_query else (DEPTH, HEADS)
        gates = (0.5 * torch.randn(*shape)).requires_grad_(True)
        cls = forward(w, x, pk, pv, gates, per_query)
        (cls * probe).sum().backward()
        for name, t in [("key", pk), ("value", pv), ("gate", gates)]:
            out[f"{case}.{name}"] = t.detach()
            out[f"{case}.grad.{name}"] = t.grad
        out[f"{case}.cls"] = cls.detach()
    save_file({n: t.contiguous() for n, t in out.items()}, FIX / "zero_init_golden.safetensors")
    print(f"wrote {len(out)} tensors to {FIX / 'zero_init_golden.safetensors'}")


if __name__ == "__main__":
    main()
