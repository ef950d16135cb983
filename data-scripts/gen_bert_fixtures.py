#!/usr/bin/env python3
"""Golden fixtures for the Rust BERT encoder: a tiny random-init
`transformers.BertModel` (eager attention), its weights in Hugging Face names,
a padded batch, and reference outputs/gradients with key/value prefixes + the
NoRGa gate, and with prompt tokens after [CLS].
Writes crates/model/tests/fixtures/{bert_tiny_test.safetensors,bert_golden.safetensors}.
Needs `transformers` in the promptcl venv."""
import math
import pathlib

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"


def layer_ref(layer, x, ext_mask, prefix=None, gate=None):
    sa = layer.attention.self
    B, T, D = x.shape
    H = sa.num_attention_heads
    hd = D // H
    split = lambda y: y.view(B, T, H, hd).transpose(1, 2)
    q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    mask = ext_mask
    if prefix is not None:
        pk, pv = (p.expand(B, -1, -1, -1) for p in prefix)
        ps = q @ pk.transpose(-2, -1) / math.sqrt(hd)
        if gate is not None:
            tau, alpha = gate
            ps = ps + torch.tanh(ps * tau) * alpha
        scores = torch.cat([ps, scores], -1)
        v = torch.cat([pv, v], 2)
        mask = torch.cat([torch.zeros(B, 1, 1, pk.shape[2]), ext_mask], -1)
    probs = (scores + mask).softmax(-1)
    ctx = (probs @ v).transpose(1, 2).reshape(B, T, D)
    h = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate(h)) + h)


def ref_forward(model, ids, mask, prefixes=None, gates=None, tokens=None):
    prefixes, gates, tokens = prefixes or {}, gates or {}, tokens or {}
    x = model.embeddings(input_ids=ids)
    m = mask.float()
    n_prompt = 0
    for i, layer in enumerate(model.encoder.layer):
        if i in tokens:
            t = tokens[i].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], t, x[:, 1 + n_prompt:]], 1)
            m = torch.cat([m[:, :1], torch.ones(x.shape[0], t.shape[1]), m[:, 1 + n_prompt:]], 1)
            n_prompt = t.shape[1]
        ext = (1.0 - m)[:, None, None, :] * torch.finfo(torch.float32).min
        x = layer_ref(layer, x, ext, prefixes.get(i), gates.get(i))
    return x


def main():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=40, type_vocab_size=2, attn_implementation="eager")
    model = BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    for p in model.parameters():
        p.requires_grad_(False)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "bert_tiny_test.safetensors")
    ids = torch.randint(1, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    g = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = ref_forward(model, ids, mask)
        assert (hf - ref).abs().max() < 1e-5, (hf - ref).abs().max()
    g["plain.hidden"] = hf
    H, hd = 4, 8
    pre = {i: tuple((torch.randn(1, H, 3, hd) * 0.5).requires_grad_() for _ in range(2)) for i in range(2)}
    alpha, tau = torch.tensor(0.6, requires_grad=True), torch.tensor(1.4, requires_grad=True)
    out = ref_forward(model, ids, mask, prefixes=pre, gates={0: (tau, alpha), 1: (tau, alpha)})
    w = torch.randn(32)
    (out[:, 0] * w).sum().backward()
    g["w"] = w
    g["prefix.out"] = out.detach()
    for i in range(2):
        g[f"prefix.k{i}"], g[f"prefix.v{i}"] = pre[i][0].detach(), pre[i][1].detach()
        g[f"prefix.grad_k{i}"], g[f"prefix.grad_v{i}"] = pre[i][0].grad, pre[i][1].grad
    g["gate.alpha"], g["gate.tau"], g["gate.grad_alpha"], g["gate.grad_tau"] = alpha.detach(), tau.detach(), alpha.grad, tau.grad
    tok = (torch.randn(1, 2, 32) * 0.5).requires_grad_()
    out = ref_forward(model, ids, mask, tokens={1: tok})
    (out[:, 0] * w).sum().backward()
    g["tokens.t1"], g["tokens.out"], g["tokens.grad_t1"] = tok.detach(), out.detach(), tok.grad
    save_file({k: v.detach().contiguous() for k, v in g.items()}, OUT / "bert_golden.safetensors")
    print(f"wrote {len(g)} golden tensors")


if __name__ == "__main__":
    main()
