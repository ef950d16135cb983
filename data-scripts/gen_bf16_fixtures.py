#!/usr/bin/env python3
"""Golden for the bf16 ViT: the tiny fixture ViT's class token under the dtypes
CUDA autocast gives timm's ViT (vit_reference.py, bf16=True: matmuls and
convolutions in bf16; LayerNorm, softmax and the residual stream in fp32), with
and without a prefix, and the fp32 result beside it.

Run with `make fixtures`; writes crates/model/tests/fixtures/vit_bf16_golden.safetensors.
CPU bf16 GEMMs round differently on CPUs with and without AVX512-BF16, so the
Rust test re-runs this script on the machine it tests (`--out`) and falls back
to the committed file only without a Python.
"""
import argparse
import pathlib

import torch
from safetensors.torch import load_file, save_file

from vit_reference import vit

FIX = pathlib.Path(__file__).resolve().parent.parent / "crates/model/tests/fixtures"
CFG = dict(embed_dim=64, num_heads=4, depth=3, patch_size=8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path, default=FIX / "vit_bf16_golden.safetensors")
    out = ap.parse_args().out
    w = load_file(FIX / "vit_tiny_test.safetensors")
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    k, v = (torch.randn(1, 4, 5, 16) * 0.5 for _ in range(2))
    g = {"input": x, "prefix.k0": k, "prefix.v0": v}
    with torch.no_grad():
        for name, prefixes in [("plain", None), ("prefix", {0: (k, v)})]:
            g[f"{name}.fp32"] = vit(w, x, CFG, prefixes)
            g[f"{name}.bf16"] = vit(w, x, CFG, prefixes, bf16=True)
    save_file({n: t.contiguous() for n, t in g.items()}, out)
    print(f"wrote {len(g)} tensors to {out}")


if __name__ == "__main__":
    main()
