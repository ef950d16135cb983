#!/usr/bin/env python3
"""Golden for promptcl's image transforms against torchvision's tensor
transforms (antialias=True, as torchvision's PIL path always antialiases):
RandomResizedCrop's crop-then-resize for given boxes (bilinear, bicubic,
flipped) and Resize + CenterCrop, on two random images larger than the output
so every case downscales. Inputs are float images (uint8 / 255); bicubic
outputs are clamped to [0, 1] as PIL's 8-bit images saturate.

Run with `make fixtures` (torchvision comes with timm); writes
crates/stream/tests/fixtures/transform_golden.safetensors.
"""
import pathlib

import torch
import torchvision.transforms.functional as TF
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/stream/tests/fixtures/transform_golden.safetensors"
SIZE, RESIZE = 32, 37          # size and round(size * 256 / 224)
BOX = (5, 10, 100, 90)         # top, left, height, width


def main():
    torch.manual_seed(0)
    g = {}
    for n, (h, w) in enumerate([(120, 170), (141, 100)]):
        img8 = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        img = img8.float() / 255
        g[f"img{n}"] = img8
        for name, mode in [("bilinear", InterpolationMode.BILINEAR), ("bicubic", InterpolationMode.BICUBIC)]:
            clamp = (lambda t: t.clamp(0, 1)) if name == "bicubic" else (lambda t: t)
            crop = TF.resized_crop(img, *BOX, [SIZE, SIZE], mode, antialias=True)
            g[f"img{n}.train.{name}"] = clamp(crop)
            g[f"img{n}.train_flip.{name}"] = clamp(TF.hflip(crop))
            test = TF.center_crop(TF.resize(img, RESIZE, mode, antialias=True), [SIZE, SIZE])
            g[f"img{n}.test.{name}"] = clamp(test)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in g.items()}, OUT)
    print(f"wrote {len(g)} tensors to {OUT}")


if __name__ == "__main__":
    main()
