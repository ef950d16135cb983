#!/usr/bin/env python3
"""Goldens for the prompt parameterisations of issue #18, each reimplemented
from its official code in the tiny fixture ViT (prefixes at blocks 0 and 2,
L = 3 keys and values per layer):

- `reparam_mlp`, `reparam_linear`: Minhchuyentoancbn/ReparamPrefix @ 86c3ed6,
  CV/src/models/vit_prompt/vit.py `PrefixTransformer` with SHARE_KV: per layer
  `prompt_trans[i](prompt_embeddings[i])` (Linear(D, 48) -> Tanh ->
  Linear(48, 2D), or Linear(D, 2D) -> Tanh), then
  `reshape(num_experts, -1, 2).permute(2, 0, 1)` into key and value, joined
  to the block's keys and values (vit_backbones/vit.py `Attention.forward`,
  the `prefix_key` branch: one softmax over prefix and tokens);
- `frozen_projection`: the same repository's KV_ONLY path, prompt tokens
  through the block's own `self.key` / `self.value` (timm's qkv rows D..3D,
  with bias), no LayerNorm;
- `nonlinear`: duyhominhnguyen/llama-adaptor-nonlinear @ c014216,
  alpaca_finetuning_v1/llama/model.py `ParameterGenerator` (typ_act =
  "hypermodel": `layer_embed(layer_idx)` -> Linear(E, h) -> ReLU ->
  Linear(h, L*D), `view(-1, L, D)`), the prompt through `wk` / `wv`, and the
  zero-initialised gated attention of `Attention.forward` (`typ_gate =
  "random"`: `gate * softmax(prefix scores)` added to the tokens' softmax),
  with non-zero gates so the prefix matters.

Every case: the final-norm class token and the gradients of
`sum(cls * probe)` with respect to every trainable tensor, stored under the
promptcl variable names (`p.0`: task 0's embeddings, `p_gen.*`: the
generator). Run with `make fixtures`; writes
crates/learner/tests/fixtures/prompt_param_golden.safetensors.
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
D, HEADS, DEPTH, PATCH, L = 64, 4, 3, 8, 3
LAYERS = [0, 2]
HD = D // HEADS


def lin(h, w, b):
    return F.linear(h, w, b)


def vit(w, x, prefixes, gates=None):
    """prefixes: {block: (key [L, D], value [L, D])} in key/value space."""
    norm = lambda h, name: F.layer_norm(h, (D,), w[name + ".weight"], w[name + ".bias"], 1e-6)
    x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(x.shape[0], -1, -1), x], 1) + w["pos_embed"]
    for i in range(DEPTH):
        b, n, B = f"blocks.{i}.", x.shape[1], x.shape[0]
        q, k, v = lin(norm(x, b + "norm1"), w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).reshape(B, n, 3, HEADS, HD).permute(2, 0, 3, 1, 4).unbind(0)
        if i in prefixes:
            pk, pv = prefixes[i]
            # Attention.forward: prefix_key.reshape(B, L, heads, -1).permute(0, 2, 1, 3)
            pk = pk.expand(B, -1, -1).reshape(B, L, HEADS, HD).permute(0, 2, 1, 3)
            pv = pv.expand(B, -1, -1).reshape(B, L, HEADS, HD).permute(0, 2, 1, 3)
            if gates is None:
                scores = torch.cat([pk, k], 2)
                a = F.softmax(q @ scores.transpose(2, 3) / HD ** 0.5, dim=-1) @ torch.cat([pv, v], 2)
            else:
                tok = F.softmax(q @ k.transpose(2, 3) / HD ** 0.5, dim=-1) @ v
                g = torch.tanh(gates[LAYERS.index(i)]).view(1, HEADS, 1, 1)
                a = tok + (g * F.softmax(q @ pk.transpose(2, 3) / HD ** 0.5, dim=-1)) @ pv
        else:
            a = F.softmax(q @ k.transpose(2, 3) / HD ** 0.5, dim=-1) @ v
        x = x + lin(a.transpose(1, 2).reshape(B, n, D), w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        x = x + lin(F.gelu(lin(norm(x, b + "norm2"), w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])), w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
    return norm(x, "norm")[:, 0]


def frozen_kv(w, block, prompt):
    qkv_w, qkv_b = w[f"blocks.{block}.attn.qkv.weight"], w[f"blocks.{block}.attn.qkv.bias"]
    return lin(prompt, qkv_w[D : 2 * D], qkv_b[D : 2 * D]), lin(prompt, qkv_w[2 * D :], qkv_b[2 * D :])


def leaf(*shape, scale=1.0):
    return (scale * torch.randn(*shape)).requires_grad_(True)


def main():
    w = load_file(ROOT / "crates/model/tests/fixtures/vit_tiny_test.safetensors")
    torch.manual_seed(47)
    x = torch.randn(2, 3, 32, 32)
    probe = torch.randn(2, D)
    out = {"input": x, "probe": probe}

    def run(case, leaves, prefixes, gates=None):
        cls = vit(w, x, prefixes, gates)
        (cls * probe).sum().backward()
        out[f"{case}.cls"] = cls.detach()
        for name, t in leaves.items():
            out[f"{case}.{name}"] = t.detach()
            out[f"{case}.grad.{name}"] = t.grad

    # ReparamPrefix, SHARE_KV, non-linear and linear.
    for case, hidden in [("reparam_mlp", 48), ("reparam_linear", None)]:
        emb = leaf(len(LAYERS), L, D, scale=0.3)
        leaves, prefixes = {"p.0": emb}, {}
        for i, block in enumerate(LAYERS):
            if hidden:
                fc1w, fc1b, fc2w, fc2b = leaf(hidden, D, scale=0.15), leaf(hidden, scale=0.1), leaf(2 * D, hidden, scale=0.15), leaf(2 * D, scale=0.1)
                leaves.update({f"p_gen.{i}.fc1.weight": fc1w, f"p_gen.{i}.fc1.bias": fc1b, f"p_gen.{i}.fc2.weight": fc2w, f"p_gen.{i}.fc2.bias": fc2b})
                kv = lin(torch.tanh(lin(emb[i], fc1w, fc1b)), fc2w, fc2b)
            else:
                fc1w, fc1b = leaf(2 * D, D, scale=0.15), leaf(2 * D, scale=0.1)
                leaves.update({f"p_gen.{i}.fc1.weight": fc1w, f"p_gen.{i}.fc1.bias": fc1b})
                kv = torch.tanh(lin(emb[i], fc1w, fc1b))
            kv = kv.reshape(L, -1, 2).permute(2, 0, 1)  # (2, num_experts, D)
            prefixes[block] = (kv[0].unsqueeze(0), kv[1].unsqueeze(0))
        run(case, leaves, prefixes)

    # KV_ONLY: prompts through the frozen key and value.
    tokens = leaf(len(LAYERS), L, D, scale=0.5)
    run("frozen_projection", {"p.0": tokens}, {b: tuple(t.unsqueeze(0) for t in frozen_kv(w, b, tokens[i])) for i, b in enumerate(LAYERS)})

    # Hypermodel prompts, through wk / wv, with zero-init gates opened.
    E, H = 8, 6
    layer_embed = leaf(DEPTH, E)
    fc1w, fc1b, fc2w, fc2b = leaf(H, E, scale=0.3), leaf(H, scale=0.1), leaf(L * D, H, scale=0.3), leaf(L * D, scale=0.1)
    gates = leaf(len(LAYERS), HEADS, scale=0.5)
    prompt = lin(F.relu(lin(layer_embed[torch.tensor(LAYERS)], fc1w, fc1b)), fc2w, fc2b).view(-1, L, D)
    prefixes = {b: tuple(t.unsqueeze(0) for t in frozen_kv(w, b, prompt[i])) for i, b in enumerate(LAYERS)}
    cls = vit(w, x, prefixes, gates)
    (cls * probe).sum().backward()
    out["nonlinear.cls"] = cls.detach()
    # promptcl keeps the prompted layers' rows of the embedding, per task `[M = 1, layers, E]`.
    out["nonlinear.p.0"] = layer_embed.detach()[torch.tensor(LAYERS)].unsqueeze(0)
    out["nonlinear.grad.p.0"] = layer_embed.grad[torch.tensor(LAYERS)].unsqueeze(0)
    for name, t in [("p_gen.fc1.weight", fc1w), ("p_gen.fc1.bias", fc1b), ("p_gen.fc2.weight", fc2w), ("p_gen.fc2.bias", fc2b), ("zero_gate.0", gates)]:
        out[f"nonlinear.{name}"] = t.detach()
        out[f"nonlinear.grad.{name}"] = t.grad
    # The other cases' embeddings gain promptcl's pool dimension M = 1.
    for case in ["reparam_mlp", "reparam_linear", "frozen_projection"]:
        for k in [f"{case}.p.0", f"{case}.grad.p.0"]:
            out[k] = out[k].unsqueeze(0)

    dest = ROOT / "crates/learner/tests/fixtures/prompt_param_golden.safetensors"
    save_file({n: t.contiguous() for n, t in out.items()}, dest)
    print(f"wrote {len(out)} tensors to {dest}")


if __name__ == "__main__":
    main()
