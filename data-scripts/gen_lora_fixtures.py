#!/usr/bin/env python3
"""Golden for LoRA on the attention projections as PEFT computes it
(`peft.tuners.lora.layer.Linear.forward`: `y = base(x) + lora_B(lora_A(dropout(x))) * alpha / r`),
by PEFT itself (`peft.inject_adapter_in_model`, `LoraConfig`) on:

- the tiny fixture BERT (`transformers.BertModel`, eager attention), LoRA on
  `attention.self.{query,key,value}` and `attention.output.dense` of every layer;
- the tiny fixture ViT, written here as timm's blocks with the fused `qkv`
  split into three `nn.Linear` (`q`, `k`, `v`: rows 0..D, D..2D, 2D..3D of
  timm's weight, mathematically the same layer) so that PEFT can target
  q, k, v and `proj` one by one, as promptcl does on the fused projection.

PEFT initialises B at zero (a no-op update); B is redrawn here so that the
updates matter. Outputs: the final hidden state (BERT) / final-norm class
token (ViT), and the gradients of `sum(out · probe)` with respect to every A
and B. Run with `make fixtures` (needs `transformers` and `peft`); writes
crates/model/tests/fixtures/lora_golden.safetensors.
"""
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

FIX = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"
R, ALPHA = 4, 8


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        split = lambda y: y.view(b, n, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = ((q @ k.transpose(-2, -1)) / (d // self.heads) ** 0.5).softmax(-1) @ v
        return self.proj(a.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyVit(nn.Module):
    """timm's VisionTransformer forward (class token, no head) on the fixture weights."""

    def __init__(self, w, heads):
        super().__init__()
        d = w["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
        self.patch = w["patch_embed.proj.weight"].shape[-1]
        self.w = w
        self.blocks = nn.ModuleList(Block(d, heads, w["blocks.0.mlp.fc1.weight"].shape[0]) for _ in range(depth))
        with torch.no_grad():
            for i, blk in enumerate(self.blocks):
                p = f"blocks.{i}."
                qkv_w, qkv_b = w[p + "attn.qkv.weight"].chunk(3, 0), w[p + "attn.qkv.bias"].chunk(3, 0)
                for lin, wt, bs in zip([blk.attn.q, blk.attn.k, blk.attn.v], qkv_w, qkv_b):
                    lin.weight.copy_(wt), lin.bias.copy_(bs)
                for mod, name in [(blk.attn.proj, "attn.proj"), (blk.fc1, "mlp.fc1"), (blk.fc2, "mlp.fc2"), (blk.norm1, "norm1"), (blk.norm2, "norm2")]:
                    mod.weight.copy_(w[p + name + ".weight"]), mod.bias.copy_(w[p + name + ".bias"])

    def forward(self, x):
        w = self.w
        x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=self.patch).flatten(2).transpose(1, 2)
        x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
        for blk in self.blocks:
            x = blk(x)
        return F.layer_norm(x, (x.shape[-1],), w["norm.weight"], w["norm.bias"], 1e-6)[:, 0]


def lora_tensors(model):
    """The injected (A, B) of every targeted module, by module name."""
    return {name: (m.lora_A["default"].weight, m.lora_B["default"].weight) for name, m in model.named_modules() if hasattr(m, "lora_A")}


def redraw_b(model, gen):
    with torch.no_grad():
        for _, (_, b) in lora_tensors(model).items():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.3)


def record(out, prefix, model, names):
    for name, (a, b) in lora_tensors(model).items():
        key = names(name)
        out[f"{prefix}.{key}.a"], out[f"{prefix}.{key}.b"] = a.detach(), b.detach()
        out[f"{prefix}.{key}.grad_a"], out[f"{prefix}.{key}.grad_b"] = a.grad, b.grad


def main():
    gen = torch.Generator().manual_seed(41)
    out = {"r": torch.tensor(float(R)), "alpha": torch.tensor(float(ALPHA))}

    # BERT: the fixture model, LoRA on the four attention projections.
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=40, type_vocab_size=2, attn_implementation="eager")
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    bert.load_state_dict({k: v for k, v in load_file(FIX / "bert_tiny_test.safetensors").items() if not k.startswith("pooler.")}, strict=False)
    for p in bert.parameters():
        p.requires_grad_(False)
    target = r".*attention\.(self\.(query|key|value)|output\.dense)"
    bert = inject_adapter_in_model(LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=target), bert)
    redraw_b(bert, gen)
    ids = torch.randint(1, 100, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    # Scaled so the gradients are O(1): an absolute 1e-5 then means what it says.
    probe = torch.randn(hidden.shape, generator=gen) / 32
    (hidden * probe).sum().backward()
    out.update({"bert.input_ids": ids, "bert.attention_mask": mask, "bert.probe": probe, "bert.hidden": hidden.detach()})
    short = {"self.query": "q", "self.key": "k", "self.value": "v", "output.dense": "out"}

    def bert_name(name):
        layer = name.split("layer.")[1].split(".")[0]
        return f"{layer}.{short[name.split('attention.')[1]]}"

    record(out, "bert", bert, bert_name)

    # ViT: q and v of every block (the usual choice), and all four on block 1.
    w = load_file(FIX / "vit_tiny_test.safetensors")
    x = torch.randn(2, 3, 32, 32, generator=gen)
    for case, target in [("vit_qv", r"blocks\.\d+\.attn\.(q|v)"), ("vit_all", r"blocks\.1\.attn\.(q|k|v|proj)")]:
        vit = TinyVit(w, heads=4).eval()
        for p in vit.parameters():
            p.requires_grad_(False)
        vit = inject_adapter_in_model(LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=target), vit)
        redraw_b(vit, gen)
        cls = vit(x)
        probe = torch.randn(cls.shape, generator=gen) / 16
        (cls * probe).sum().backward()
        out.update({f"{case}.probe": probe, f"{case}.cls": cls.detach()})
        record(out, case, vit, lambda n: f"{n.split('.')[1]}.{ {'q': 'q', 'k': 'k', 'v': 'v', 'proj': 'out'}[n.split('.')[-1]] }")
    out["vit.input"] = x
    save_file({n: t.contiguous() for n, t in out.items()}, FIX / "lora_golden.safetensors")
    print(f"wrote {len(out)} tensors to {FIX / 'lora_golden.safetensors'}")


if __name__ == "__main__":
    main()
