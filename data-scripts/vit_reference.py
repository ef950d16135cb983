"""The timm ViT forward in plain PyTorch from a timm state dict, shared by the
fixture scripts: prefix-tuning as the official PreT_Attention, and (with
`bf16=True`) the dtypes CUDA autocast gives each op of timm's ViT: convolutions
and matmuls in bf16, LayerNorm and softmax in fp32, the residual stream fp32
(a bf16 branch added to it is promoted), GELU in the dtype it receives.
"""
import torch
import torch.nn.functional as F


def vit(w, x, cfg, prefixes=None, bf16=False):
    """forward_features' final-norm class token `[B, D]`; prefixes {layer: (k, v)}, `[B, H, L, hd]`."""
    d, heads, depth, patch = cfg["embed_dim"], cfg["num_heads"], cfg["depth"], cfg["patch_size"]
    hd = d // heads
    prefixes = prefixes or {}
    low = (lambda t: t.to(torch.bfloat16)) if bf16 else (lambda t: t)
    lin = lambda h, name: F.linear(low(h), low(w[name + ".weight"]), low(w[name + ".bias"]))
    norm = lambda h, name: F.layer_norm(h.float(), (d,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    x = F.conv2d(low(x), low(w["patch_embed.proj.weight"]), low(w["patch_embed.proj.bias"]), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x.float()], 1) + w["pos_embed"]
    for i in range(depth):
        p = f"blocks.{i}."
        n = x.shape[1]
        q, k, v = lin(norm(x, p + "norm1"), p + "attn.qkv").reshape(-1, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        if i in prefixes:
            pk, pv = prefixes[i]
            k, v = torch.cat([low(pk).expand(k.shape[0], -1, -1, -1), k], 2), torch.cat([low(pv).expand(v.shape[0], -1, -1, -1), v], 2)
        a = ((q @ k.transpose(-2, -1)) * hd ** -0.5).float().softmax(-1)
        x = x + lin((low(a) @ v).transpose(1, 2).reshape(-1, n, d), p + "attn.proj").float()
        x = x + lin(F.gelu(lin(norm(x, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2").float()
    return norm(x, "norm")[:, 0]
