#!/usr/bin/env python3
"""Exports a pretrained ViT-B/16 to promptcl's safetensors layout (timm
state-dict names, fp32, no classifier head unless --keep-head).

Checkpoints used by the prompt-CL papers (NoRGa, HiDe-Prompt):

| name in configs | source | how |
| --- | --- | --- |
| sup21k   | the original Google ViT-B/16 ImageNet-21K (`ViT-B_16.npz`), which the L2P / DualPrompt / HiDe / NoRGa code loads as `vit_base_patch16_224`; timm `vit_base_patch16_224.orig_in21k` | `--timm vit_base_patch16_224.orig_in21k` |
| sup21k-augreg | the newer AugReg ImageNet-21K weights (not what those papers used) | `--timm vit_base_patch16_224.augreg_in21k` |
| in1k     | ImageNet-1K fine-tuned ViT-B/16 (CODA-Prompt's `vit_pt_imnet`) | `--timm vit_base_patch16_224.augreg2_in21k_ft_in1k` |
| ibot21k  | iBOT ViT-B/16 IN-21K (`checkpoint_teacher.pth`, github.com/bytedance/ibot) | `--torch FILE --key state_dict` |
| ibot1k   | iBOT ViT-B/16 IN-1K teacher | `--torch FILE --key state_dict` |
| dino1k   | DINO ViT-B/16 (`dino_vitbase16_pretrain.pth`) | `--torch FILE` |
| mocov3   | MoCo v3 ViT-B/16 (`linear-vit-b-300ep.pth.tar`) | `--torch FILE --key state_dict --strip module.` |

Usage:
  export_vit_weights.py --timm vit_base_patch16_224.orig_in21k -o weights/sup21k.safetensors
  export_vit_weights.py --torch dino_vitbase16_pretrain.pth -o weights/dino1k.safetensors
Needs timm (`PROMPTCL_EXTRAS=timm scripts/bootstrap.sh`) and internet for --timm.
"""
import argparse

import torch
from safetensors.torch import save_file

VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "head.")


def from_timm(name):
    import timm
    model = timm.create_model(name, pretrained=True, num_classes=0)
    return model.state_dict()


def from_torch(path, key, strip):
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if key:
        sd = sd[key]
    out = {}
    for k, v in sd.items():
        for p in strip:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--timm", help="timm model name with pretrained weights")
    src.add_argument("--torch", help="a torch checkpoint file with timm-compatible names")
    ap.add_argument("--key", help="sub-dict holding the weights (e.g. state_dict)")
    ap.add_argument("--strip", action="append", default=[], help="key prefix to remove (repeatable)")
    ap.add_argument("--keep-head", action="store_true")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    sd = from_timm(a.timm) if a.timm else from_torch(a.torch, a.key, a.strip)
    keep = {k: v.float().contiguous() for k, v in sd.items()
            if k.startswith(VIT_KEYS) and (a.keep_head or not k.startswith("head."))}
    dropped = sorted(set(sd) - set(keep))
    if dropped:
        print(f"dropped {len(dropped)} non-backbone tensors, e.g. {dropped[:5]}")
    save_file(keep, a.out)
    print(f"wrote {len(keep)} tensors to {a.out}")


if __name__ == "__main__":
    main()
