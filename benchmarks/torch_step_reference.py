#!/usr/bin/env python3
"""The promptcl step benchmark's PyTorch reference: the same prompt training and
eval step on a ViT-B/16 (pure torch, timm's layout), per expert (`--experts`):

  norga        direct prefixes in blocks 0-4, NoRGa's gate on the prefix logits
  zero-init    direct prefixes, zero-initialised gated attention (tanh(g) per head, LLaMA-Adapter)
  reparam-mlp  prefixes generated every step by ReparamPrefix's per-layer MLP
  lora         no prefixes: LoRA (rank 5, scale 1/5) on k and v of blocks 0-4, as HiDe-LoRA trains one task's
               (Linear(D, 48) -> Tanh -> Linear(48, 2D), key/value interleaved), NoRGa's gate

in three modes:

  official  fp32, explicit softmax attention everywhere (as the official code)
  eager     bf16 autocast + F.scaled_dot_product_attention where no gate needs the logits
  compile   eager + torch.compile

Prints one JSON line per (mode, batch) with the fields step_bench prints, plus
peak memory from torch.cuda.max_memory_allocated / _reserved.
Usage: torch_step_reference.py [--device cuda] [--batch 64,128] [--modes official,eager,compile] [--experts norga] [--tiny]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ZeroGate:
    def __init__(self, g):
        self.g = g


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, prefix=None, gate=None, fused=False, lora=None):
        B, N, C = x.shape
        qkv = self.qkv(x)
        if lora is not None:  # PEFT's scale * (x A^T) B^T on the k and v slices
            (ak, bk, av, bv), s = lora, 0.2
            qkv = qkv + torch.cat([torch.zeros_like(x), (x @ ak.t()) @ bk.t() * s, (x @ av.t()) @ bv.t() * s], -1)
        q, k, v = qkv.reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scale = (C // self.heads) ** -0.5
        if prefix is not None:
            pk, pv = (t.expand(B, -1, -1, -1) for t in prefix)
        if prefix is not None and isinstance(gate, ZeroGate):
            # Two softmaxes: the tokens' as the frozen layer, the prefix's scaled by tanh(g).
            tok = F.scaled_dot_product_attention(q, k, v) if fused else ((q @ k.transpose(-2, -1)) * scale).float().softmax(-1).to(v.dtype) @ v
            pa = ((q @ pk.transpose(-2, -1)) * scale).float().softmax(-1) * torch.tanh(gate.g.float()).view(1, -1, 1, 1)
            out = tok + pa.to(v.dtype) @ pv
        elif fused and gate is None:
            if prefix is not None:
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * scale
            if prefix is not None:
                pa = (q @ pk.transpose(-2, -1)) * scale
                if gate is not None:  # NoRGa: s + alpha * act(tau * s)
                    tau, alpha = gate
                    pa = pa + torch.sigmoid(pa * tau) * alpha
                attn = torch.cat([pa, attn], -1)
                v = torch.cat([pv, v], 2)
            out = attn.float().softmax(-1).to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, prefix=None, gate=None, fused=False, lora=None):
        x = x + self.attn(self.norm1(x), prefix, gate, fused, lora)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, img=224, patch=16, dim=768, depth=12, heads=12):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, prompts=None, gates=None, fused=False, loras=None):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for i, b in enumerate(self.blocks):
            p = prompts[i] if prompts is not None and i < len(prompts) else None
            g = gates[i] if gates is not None and p is not None else None
            l = loras[i] if loras is not None and i < len(loras) else None
            x = b(x, p, g, fused, l)
        return self.norm(x)[:, 0]


def bench(mode, batch, device, tiny, warmup, iters, expert="norga"):
    torch.manual_seed(0)
    cfg = dict(img=32, patch=8, dim=64, depth=6, heads=4) if tiny else {}
    vit = ViT(**cfg).to(device).requires_grad_(False)
    dim, heads = vit.norm.normalized_shape[0], vit.blocks[0].attn.heads
    hd, L = dim // heads, 5
    prompts = [tuple(nn.Parameter(torch.empty(1, heads, L, hd, device=device).uniform_(-1, 1)) for _ in range(2)) for _ in range(5)]
    act_scale = nn.Parameter(torch.ones(5, 2, device=device))
    zero = nn.Parameter(torch.full((5, heads), 0.1, device=device))
    emb = nn.Parameter(torch.empty(5, L, dim, device=device).uniform_(-0.0625, 0.0625))
    gen = nn.ModuleList(nn.Sequential(nn.Linear(dim, 48), nn.Tanh(), nn.Linear(48, 2 * dim)) for _ in range(5)).to(device)
    head = nn.Linear(dim, 100).to(device)
    r = 5
    loras = [tuple(nn.Parameter(torch.empty(*shape, device=device).uniform_(-0.2, 0.2) if shape[0] == r else torch.zeros(*shape, device=device))
                   for shape in [(r, dim), (dim, r), (r, dim), (dim, r)]) for _ in range(5)]
    if expert == "lora":
        trained = [p for quad in loras for p in quad]
    elif expert == "reparam-mlp":
        trained = [emb, act_scale] + list(gen.parameters())
    elif expert == "zero-init":
        trained = [p for pair in prompts for p in pair] + [zero]
    else:
        trained = [p for pair in prompts for p in pair] + [act_scale]
    params = trained + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    img = cfg.get("img", 224)
    x = torch.rand(batch, 3, img, img, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    fused = mode != "official"
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=fused and device.type == "cuda")

    def gates():
        if expert == "zero-init":
            return [ZeroGate(zero[i]) for i in range(5)]
        return [(act_scale[i, 0], act_scale[i, 1]) for i in range(5)]

    def prefixes():
        if expert != "reparam-mlp":
            return prompts
        out = []
        for i in range(5):
            kv = gen[i](emb[i]).reshape(L, dim, 2)  # even columns the key, odd the value
            out.append(tuple(kv[..., j].reshape(1, L, heads, hd).permute(0, 2, 1, 3) for j in range(2)))
        return out

    def forward(inp):
        with amp:
            with torch.no_grad():
                vit(inp, fused=fused)  # the query forward
            if expert == "lora":
                return head(vit(inp, fused=fused, loras=loras))
            return head(vit(inp, prefixes(), gates(), fused))

    fwd = torch.compile(forward) if mode == "compile" else forward

    def train():
        loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def evaluate():
        with torch.no_grad():
            fwd(x)

    def timed(fn):
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return iters * batch / (time.perf_counter() - t)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_ips = timed(train)
    eval_ips = timed(evaluate)
    out = dict(impl_name="pytorch", mode=mode, expert=expert, batch=batch, image_size=img, train_images_per_s=train_ips,
               eval_images_per_s=eval_ips, device=str(device), torch=torch.__version__)
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", default="64,128")
    ap.add_argument("--modes", default="official,eager,compile")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--experts", default="norga")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    for expert in a.experts.split(","):
        for mode in a.modes.split(","):
            for b in a.batch.split(","):
                print(json.dumps(bench(mode, int(b), torch.device(a.device), a.tiny, a.warmup, a.iters, expert)), flush=True)


if __name__ == "__main__":
    main()
