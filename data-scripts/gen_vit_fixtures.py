#!/usr/bin/env python3
"""Golden fixtures for the Rust ViT: a tiny random-init timm VisionTransformer,
its weights in timm names, inputs, and reference outputs/gradients.

Run with `make fixtures` (installs timm into the promptcl venv). Writes
crates/model/tests/fixtures/{vit_tiny_test.safetensors,vit_golden.safetensors}.

The prompted references reimplement attention exactly as the official code does:
- prefix-tuning: HiDe-Prompt / MoE_PromptCL `PreT_Attention` (cat prefix keys/values);
- NoRGa: MoE_PromptCL `NoRGa_Attention`: s_p + act(s_p * tau) * alpha on prefix logits.
Prompt tokens follow VPT: inserted after the class token, no position embedding;
a deeper layer's tokens replace the earlier ones.
"""
import pathlib

import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"
CFG = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=3, num_heads=4,
           mlp_ratio=4.0, qkv_bias=True, num_classes=10)
B = 2


def attn_ref(attn, x, prefix=None, gate=None):
    Bn, N, C = x.shape
    H = attn.num_heads
    qkv = attn.qkv(x).reshape(Bn, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scale = (C // H) ** -0.5
    if prefix is None:
        a = (q @ k.transpose(-2, -1)) * scale
    else:
        pk, pv = (t.expand(Bn, -1, -1, -1) for t in prefix)
        v = torch.cat([pv, v], dim=2)
        if gate is None:  # PreT_Attention
            k = torch.cat([pk, k], dim=2)
            a = (q @ k.transpose(-2, -1)) * scale
        else:  # NoRGa_Attention
            act, tau, alpha = gate
            pa = (q @ pk.transpose(-2, -1)) * scale
            pa = pa + act(pa * tau) * alpha
            a = torch.cat([pa, (q @ k.transpose(-2, -1)) * scale], dim=-1)
    a = a.softmax(dim=-1)
    return attn.proj((a @ v).transpose(1, 2).reshape(Bn, N, C))


def ref_forward(model, x, tokens=None, prefixes=None, gates=None):
    tokens, prefixes, gates = tokens or {}, prefixes or {}, gates or {}
    x = model._pos_embed(model.patch_embed(x))
    n_prompt = 0
    for i, blk in enumerate(model.blocks):
        if i in tokens:
            t = tokens[i].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], t, x[:, 1 + n_prompt:]], dim=1)
            n_prompt = t.shape[1]
        x = x + attn_ref(blk.attn, blk.norm1(x), prefixes.get(i), gates.get(i))
        x = x + blk.mlp(blk.norm2(x))
    x = model.norm(x)
    return x, n_prompt


def main():
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(**CFG).eval()
    with torch.no_grad():  # perturb so zero-init biases, unit LN weights etc. are exercised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for p in model.parameters():
        p.requires_grad_(False)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "vit_tiny_test.safetensors")

    g = {}
    x = torch.randn(B, 3, 32, 32)
    g["input"] = x
    D, H, hd = CFG["embed_dim"], CFG["num_heads"], CFG["embed_dim"] // CFG["num_heads"]
    w_cls, w_patch = torch.randn(D), torch.randn(D)
    g["w_cls"], g["w_patch"] = w_cls, w_patch

    def loss_of(feats, n_prompt):
        cls = feats[:, 0]
        patch_mean = feats[:, 1 + n_prompt:].mean(1)
        return (cls * w_cls).sum() + (patch_mean * w_patch).sum()

    # 1. plain timm forward, and our explicit reference must agree with it
    with torch.no_grad():
        feats = model.forward_features(x)
        g["plain.tokens"] = feats
        g["plain.cls"] = model.forward_head(feats, pre_logits=True)
        g["plain.logits"] = model(x)
        ref, _ = ref_forward(model, x)
        assert (ref - feats).abs().max() < 1e-5

    # 2. prompt tokens: shallow (layer 0, shared over batch) + deep (layer 2, per sample)
    t0 = (torch.randn(1, 4, D) * 0.5).requires_grad_()
    t2 = (torch.randn(B, 3, D) * 0.5).requires_grad_()
    feats, n_prompt = ref_forward(model, x, tokens={0: t0, 2: t2})
    loss_of(feats, n_prompt).backward()
    g.update({"tokens.t0": t0.detach(), "tokens.t2": t2.detach(), "tokens.out": feats.detach(),
              "tokens.grad_t0": t0.grad, "tokens.grad_t2": t2.grad})

    # 3. prefix-tuning in layers 0 and 1
    def prefix_pair(batch, length):
        return [(torch.randn(batch, H, length, hd) * 0.5).requires_grad_() for _ in range(2)]
    p0, p1 = prefix_pair(1, 5), prefix_pair(B, 3)
    feats, _ = ref_forward(model, x, prefixes={0: p0, 1: p1})
    loss_of(feats, 0).backward()
    g.update({"prefix.k0": p0[0].detach(), "prefix.v0": p0[1].detach(),
              "prefix.k1": p1[0].detach(), "prefix.v1": p1[1].detach(),
              "prefix.out": feats.detach(),
              "prefix.grad_k0": p0[0].grad, "prefix.grad_v0": p0[1].grad,
              "prefix.grad_k1": p1[0].grad, "prefix.grad_v1": p1[1].grad})

    # 4. NoRGa gate (tanh) on the prefixes of layers 0 and 1, learnable alpha/tau
    for t in p0 + p1:
        t.grad = None
    alphas = [torch.tensor(0.7, requires_grad=True), torch.tensor(1.0, requires_grad=True)]
    taus = [torch.tensor(1.3, requires_grad=True), torch.tensor(1.0, requires_grad=True)]
    gates = {i: (torch.tanh, taus[i], alphas[i]) for i in range(2)}
    feats, _ = ref_forward(model, x, prefixes={0: p0, 1: p1}, gates=gates)
    loss_of(feats, 0).backward()
    g.update({"norga.out": feats.detach(),
              "norga.grad_k0": p0[0].grad, "norga.grad_v0": p0[1].grad,
              "norga.grad_k1": p1[0].grad, "norga.grad_v1": p1[1].grad})
    for i in range(2):
        g[f"norga.alpha{i}"] = alphas[i].detach()
        g[f"norga.tau{i}"] = taus[i].detach()
        g[f"norga.grad_alpha{i}"] = alphas[i].grad
        g[f"norga.grad_tau{i}"] = taus[i].grad

    # 5. position-embedding resampling to 48x48 (grid 4 -> 6), as timm's checkpoint_filter_fn
    with torch.no_grad():
        pos48 = resample_abs_pos_embed(model.pos_embed, new_size=(6, 6), num_prefix_tokens=1)
        big = timm.models.vision_transformer.VisionTransformer(**{**CFG, "img_size": 48}).eval()
        sd = dict(model.state_dict())
        sd["pos_embed"] = pos48
        big.load_state_dict(sd)
        x48 = torch.randn(B, 3, 48, 48)
        g["resample.pos_embed"] = pos48
        g["resample.input"] = x48
        g["resample.tokens"] = big.forward_features(x48)

    save_file({k: v.detach().contiguous() for k, v in g.items()}, OUT / "vit_golden.safetensors")
    print(f"wrote {len(g)} golden tensors to {OUT}")


if __name__ == "__main__":
    main()
