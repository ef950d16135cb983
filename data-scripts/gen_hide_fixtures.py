#!/usr/bin/env python3
"""Golden fixture for one whole HiDe-Prompt task (task 1 of the stream): its
TII run and its prompt run, step by step as the official engines compute them,
on the tiny random-init ViT of crates/model/tests/fixtures/vit_tiny_test.safetensors.

Reimplements (no code copied) Minhchuyentoancbn/MoE_PromptCL @e418337:
- TII: trainers/tii_trainer.py + engines/hide_tii_engine.py::train_one_epoch:
  the frozen ViT's class token -> MlpMapping (Linear, GELU, Linear, + input,
  LayerNorm eps 1e-5) -> head; logits of other tasks' classes set to -inf;
  CrossEntropy; Adam(lr x batch/256, betas (0.9, 0.999), eps 1e-8, no weight
  decay); clip_grad_norm_(1.0) over the trainable parameters; constant lr.
- Prompt: trainers/hideprompt_trainer.py + engines/hide_promtp_wtp_and_tap_engine.py:
  the task's E-prompt as prefixes (peft/prompt/hide_prompt.py; task 1 has no
  momentum mix), PreT_Attention (prefix keys/values in front of the layer's own),
  pre_logits = the final-norm class token, head(pre_logits) masked to the task;
  CrossEntropy + reg x orth_loss (CE(F Fᵀ / 0.8, arange) over the batch: no
  class means exist in task 1); Adam with --larger_prompt_lr groups (prompts at
  lr, head at 0.1 lr); clip_grad_norm_(1.0) over both; StepLR (decay 30) is
  constant over these epochs.
The prompt run is recorded twice: with the official `reshape(L, B, 2, ...)` of
the `[L, 2, B, ...]` prompt tensor (prefix_layout = "official") and with the
permute that gives each sample its own key and value halves ("correct").

Parameters are stored in promptcl's names and layouts (`e_prompt.0` is
`[pool 1, layers, 2, length, heads, head_dim]`; the official tensor is
`[layers, 2, pool, length, heads, head_dim]`). Run with `make fixtures`; writes
crates/learner/tests/fixtures/hide_task_golden.safetensors.
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vit_reference import vit as vit_forward

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/learner/tests/fixtures/hide_task_golden.safetensors"
VIT = ROOT / "crates/model/tests/fixtures/vit_tiny_test.safetensors"
D, H, DEPTH, PATCH = 64, 4, 3, 8
CFG = dict(embed_dim=D, num_heads=H, depth=DEPTH, patch_size=PATCH)
HD = D // H
CLASSES, TASK = 6, [0, 1]          # 3 tasks x 2 classes; task 1 holds classes 0 and 1
LAYERS, LENGTH = [0, 1], 2
B, STEPS, EPOCHS = 4, 2, 2
LR, TII_LR, HEAD_SCALE, REG, CLIP = 1.0, 1.0, 0.1, 0.1, 1.0


def vit(w, x, prefixes=None):
    return vit_forward(w, x, CFG, prefixes)


def masked(logits):
    not_mask = torch.tensor([c for c in range(CLASSES) if c not in TASK])
    return logits.index_fill(1, not_mask, float("-inf"))


def tii_logits(p, q):
    h = F.linear(F.gelu(F.linear(q, p["tii.mlp.0.weight"], p["tii.mlp.0.bias"])), p["tii.mlp.1.weight"], p["tii.mlp.1.bias"])
    h = F.layer_norm(h + q, (D,), p["tii.norm_weight"], p["tii.norm_bias"], 1e-5)
    return F.linear(h, p["tii.head.weight"], p["tii.head.bias"])


def prefixes_of(prompt, official):
    """peft/prompt/hide_prompt.py for prompt_mask = task 0 on every row, then PreT_Attention's split."""
    raw = prompt[0].unsqueeze(2)[:, :, torch.zeros(B, 1, dtype=torch.long)]   # [L, 2, B, 1, len, H, hd]
    nl, dual, bs, top_k, length, nh, hd = raw.shape
    if not official:
        raw = raw.permute(0, 2, 1, 3, 4, 5, 6)
    batched = raw.reshape(nl, bs, dual, top_k * length, nh, hd)
    out = {}
    for i, layer in enumerate(LAYERS):
        pr = batched[i].permute(1, 0, 3, 2, 4)                                     # [2, B, H, len, hd]
        out[layer] = (pr[0], pr[1])
    return out


def run(params, names, batches, loss_fn, groups):
    opt = torch.optim.Adam([{"params": [params[n] for n in ns], "lr": lr} for ns, lr in groups], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(EPOCHS):
        for x, y in batches:
            loss = loss_fn(params, x, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([params[n] for n in names], CLIP)
            opt.step()
            losses.append(loss.detach())
    return torch.stack(losses)


def main():
    w = load_file(VIT)
    torch.manual_seed(0)
    g = {}
    batches = []
    for s in range(STEPS):
        x, y = torch.randn(B, 3, 32, 32), torch.tensor([0, 1, 1, 0]) if s == 0 else torch.tensor([1, 0, 0, 1])
        g[f"batch{s}.images"], g[f"batch{s}.labels"] = x, y
        batches.append((x, y))
    init = {
        "e_prompt.0": torch.rand(1, len(LAYERS), 2, LENGTH, H, HD) * 2 - 1,
        "tii.mlp.0.weight": torch.randn(2 * D, D) * 0.1, "tii.mlp.0.bias": torch.randn(2 * D) * 0.1,
        "tii.mlp.1.weight": torch.randn(D, 2 * D) * 0.1, "tii.mlp.1.bias": torch.randn(D) * 0.1,
        "tii.norm_weight": 1 + torch.randn(D) * 0.1, "tii.norm_bias": torch.randn(D) * 0.1,
        "tii.head.weight": torch.randn(CLASSES, D) * 0.1, "tii.head.bias": torch.randn(CLASSES) * 0.1,
        "head.weight": torch.randn(CLASSES, D) * 0.1, "head.bias": torch.randn(CLASSES) * 0.1,
    }
    g.update({f"init.{k}": v for k, v in init.items()})

    # TII run: the frozen query needs no graph.
    tii_names = [k for k in init if k.startswith("tii.")]
    p = {k: init[k].clone().requires_grad_() for k in tii_names}
    with torch.no_grad():
        queries = {id(x): vit(w, x) for x, _ in batches}
    tii_loss = lambda p, x, y: F.cross_entropy(masked(tii_logits(p, queries[id(x)])), y)
    g["tii.losses"] = run(p, tii_names, batches, tii_loss, [(tii_names, TII_LR * B / 256)])
    g.update({f"tii.final.{k}": v.detach() for k, v in p.items()})

    prompt_names = ["e_prompt.0", "head.weight", "head.bias"]
    for layout in ["official", "correct"]:
        p = {k: init[k].clone().requires_grad_() for k in prompt_names}

        def prompt_loss(p, x, y, official=layout == "official"):
            feats = vit(w, x, prefixes_of(p["e_prompt.0"], official))
            ce = F.cross_entropy(masked(F.linear(feats, p["head.weight"], p["head.bias"])), y)
            sim = feats @ feats.t() / 0.8
            return ce + REG * F.cross_entropy(sim, torch.arange(sim.shape[0]))

        lr = LR * B / 256
        g[f"{layout}.losses"] = run(p, prompt_names, batches, prompt_loss, [(["e_prompt.0"], lr), (["head.weight", "head.bias"], lr * HEAD_SCALE)])
        g.update({f"{layout}.final.{k}": v.detach() for k, v in p.items()})

    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in g.items()}, OUT)
    print(f"wrote {len(g)} tensors to {OUT}")


if __name__ == "__main__":
    main()
