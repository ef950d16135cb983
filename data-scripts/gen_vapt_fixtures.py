#!/usr/bin/env python3
"""Goldens for VAPT's adaptive prompts (issue #18), reimplemented from the
official code in the tiny fixture ViT (depth 3, D = 64, 32x32 images, a 4x4
patch grid): Minhchuyentoancbn/VAPT @ff3e65b, src/models/vit_prompt/vit.py
`PromptedTransformerAdaptive` with its defaults (DEEP, ADAPTIVE, VPT_DEPTH 1,
CONV, CHANNELWISE, KERNEL 2, PADDING 0, SHARE_PROJECTOR, FEAT_PROJECTOR,
ReLU, LEARNABLE_SCALE False) and NUM_TOKENS 3, HIDDEN_DIM 5:

- `incorporate_prompt`: [CLS, prompt_embeddings, patches] after the position
  embedding;
- `forward_deep_prompt`, block i >= 1: drop the previous prompts,
  `deep_prompt_norm[i-1]` (nn.LayerNorm, eps 1e-5) over [CLS; patches], drop
  CLS, `permute(0, 2, 1).reshape(B, D, 4, 4)`, `PromptDownSample`
  (`ChannelWiseConv2d`: one (1, 1, k, k) kernel expanded to (D, 1, k, k),
  `groups = D`; `Dropout2d(0.1)`; `Linear(9, T)` on the flattened grid),
  `permute(0, 2, 1)`, then `PromptMLP` (x + Linear(D, h, bias=False) -> ReLU
  -> dropout -> Linear(h, D, bias=False)), shared by the blocks; the tokens
  replace the previous prompts.

Eval mode (dropouts off). The zero-initialised projection and the unit
LayerNorm are redrawn so every tensor matters. Stored: the final-norm class
token, and every trainable tensor with its gradient of `sum(cls * probe)`,
under promptcl's names (`vapt.0.*`). Run with `make fixtures`; writes
crates/learner/tests/fixtures/vapt_golden.safetensors.
"""
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
D, HEADS, DEPTH, PATCH, GRID = 64, 4, 3, 8, 4
T, HIDDEN, KERNEL = 3, 5, 2
HD = D // HEADS


class ChannelWiseConv2d(nn.Module):
    def __init__(self, channels, kernel):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.randn(1, 1, kernel, kernel))

    def forward(self, x):
        return F.conv2d(x, self.weight.expand(self.channels, 1, -1, -1), groups=self.channels, padding=0)


class PromptDownSample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ChannelWiseConv2d(D, KERNEL)
        self.dropout = nn.Dropout2d(0.1)
        out = GRID - KERNEL + 1
        self.linear = nn.Linear(out * out, T)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        x = self.dropout(self.conv(x))
        return self.linear(x.reshape(x.shape[0], D, -1))


class PromptMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(D, HIDDEN, bias=False), nn.ReLU(inplace=True), nn.Linear(HIDDEN, D, bias=False))
        self.block[1].register_forward_hook(lambda m, i, o: F.dropout(o, p=0.1, training=m.training))

    def forward(self, x):
        return x + 1.0 * self.block(x)


def block(w, i, x):
    b, n, B = f"blocks.{i}.", x.shape[1], x.shape[0]
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    q, k, v = F.linear(norm(x, b + "norm1"), w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).reshape(B, n, 3, HEADS, HD).permute(2, 0, 3, 1, 4).unbind(0)
    a = F.softmax(q @ k.transpose(2, 3) / HD**0.5, dim=-1) @ v
    x = x + F.linear(a.transpose(1, 2).reshape(B, n, D), w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
    return x + F.linear(F.gelu(F.linear(norm(x, b + "norm2"), w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])), w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])


def main():
    w = load_file(ROOT / "crates/model/tests/fixtures/vit_tiny_test.safetensors")
    torch.manual_seed(53)
    x = torch.randn(2, 3, 32, 32)
    probe = torch.randn(2, D)
    val = (6.0 / (3 * PATCH * PATCH + D)) ** 0.5
    prompt = nn.Parameter(torch.empty(1, T, D).uniform_(-val, val))
    norms = nn.ModuleList([nn.LayerNorm(D, eps=1e-5) for _ in range(DEPTH - 1)])
    downs = nn.ModuleList([PromptDownSample() for _ in range(DEPTH - 1)])
    mlp = PromptMLP()
    with torch.no_grad():
        for m in list(norms):
            m.weight.add_(0.2 * torch.randn(D))
            m.bias.add_(0.1 * torch.randn(D))
        for d in downs:
            d.linear.weight.normal_(0, 0.3)
            d.linear.bias.normal_(0, 0.1)
    for m in [norms, downs, mlp]:
        m.eval()

    h = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    h = torch.cat([w["cls_token"].expand(2, -1, -1), h], 1) + w["pos_embed"]
    h = torch.cat([h[:, :1], prompt.expand(2, -1, -1), h[:, 1:]], 1)
    for i in range(DEPTH):
        if i >= 1:
            t = torch.cat([h[:, :1], h[:, 1 + T :]], 1)
            t = norms[i - 1](t)[:, 1:, :]
            t = t.permute(0, 2, 1).reshape(2, D, GRID, GRID)
            t = downs[i - 1](t).permute(0, 2, 1)
            p = mlp(t)
            h = torch.cat([h[:, :1], p, h[:, 1 + T :]], 1)
        h = block(w, i, h)
    cls = F.layer_norm(h, (D,), w["norm.weight"], w["norm.bias"], 1e-6)[:, 0]
    (cls * probe).sum().backward()

    leaves = {"vapt.0.prompt": prompt, "vapt.0.mlp_fc1": mlp.block[0].weight, "vapt.0.mlp_fc2": mlp.block[2].weight}
    for j in range(1, DEPTH):
        n, d = norms[j - 1], downs[j - 1]
        leaves.update({
            f"vapt.0.layer.{j}.norm_weight": n.weight, f"vapt.0.layer.{j}.norm_bias": n.bias,
            f"vapt.0.layer.{j}.kernel": d.conv.weight,
            f"vapt.0.layer.{j}.proj_weight": d.linear.weight, f"vapt.0.layer.{j}.proj_bias": d.linear.bias,
        })
    out = {"input": x, "probe": probe, "cls": cls.detach()}
    for name, t in leaves.items():
        out[name] = t.detach()
        out[f"grad.{name}"] = t.grad
    dest = ROOT / "crates/learner/tests/fixtures/vapt_golden.safetensors"
    save_file({n: t.contiguous() for n, t in out.items()}, dest)
    print(f"wrote {len(out)} tensors to {dest}")


if __name__ == "__main__":
    main()
