#!/usr/bin/env python3
"""Tiny datasets in the exact on-disk formats promptcl reads, for its tests.

Writes crates/stream/tests/fixtures/:
- cifar-100-python/{train,test,meta}: dicts pickled as the official files are
  (Python 2 cPickle, protocol 2: py2 `str` as BINSTRING, so Python 3 reads them
  with encoding='bytes'; numpy arrays via numpy.core.multiarray._reconstruct);
  2 train + 1 test image per class, all 100 classes, real class names and
  superclass labels.
- cifar-100-binary/{train,test}.bin + {fine,coarse}_label_names.txt: the same
  images as 3074-byte records [coarse, fine, 3072 pixels].
- cifar-100-python-badshape/: a `train` whose `data` is [2, 1024], for the error test.
- py3_protocol5.pkl: a dict with str/bytes keys, a list and a numpy array as
  Python 3's default pickler writes it.
- imagenet-r-mini/<wnid>/*.{jpg,png}: 4 classes, real JPEG and PNG files of
  assorted sizes and aspect ratios.

Images are smooth colour gradients (so the fixtures compress well in git)
whose colour depends on the class.
"""
import io
import pathlib
import pickle
import struct

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/stream/tests/fixtures"

FINE = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
COARSE = """aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes
large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees
vehicles_1 vehicles_2""".split()
FINE_TO_COARSE = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3,
                  15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0,
                  17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2,
                  4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
assert len(FINE) == 100 and len(COARSE) == 20


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's `str` (SHORT_BINSTRING / BINSTRING) and numpy
    globals under their pre-2.0 module names, as cPickle did for CIFAR-100."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        name = name or obj.__qualname__
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_dump(obj, path):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def image(label, k, h, w):
    """A smooth gradient whose colour encodes (label, k)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.array([(label * 37) % 256, (label * 91 + k * 50) % 256, (label * 13 + 128) % 256])
    img = (base[:, None, None] + 40 * np.sin(x / (3 + k))[None] + 40 * np.cos(y / 5.0)[None]) % 256
    return img.astype(np.uint8)  # CHW


def cifar(per_class):
    rows, fine, coarse = [], [], []
    for k in range(per_class):
        for c in range(100):
            rows.append(image(c, k, 32, 32).reshape(-1))
            fine.append(c)
            coarse.append(FINE_TO_COARSE[c])
    return np.stack(rows), fine, coarse


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    py = OUT / "cifar-100-python"
    binary = OUT / "cifar-100-binary"
    py.mkdir(exist_ok=True)
    binary.mkdir(exist_ok=True)
    for split, per_class in [("train", 2), ("test", 1)]:
        data, fine, coarse = cifar(per_class)
        py2_dump({b"filenames": [f"{FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
                  b"batch_label": f"{split}ing batch 1 of 1".encode(),
                  b"fine_labels": fine, b"coarse_labels": coarse, b"data": data}, py / split)
        with open(binary / f"{split}.bin", "wb") as f:
            for row, fl, cl in zip(data, fine, coarse):
                f.write(bytes([cl, fl]) + row.tobytes())
    py2_dump({b"fine_label_names": [n.encode() for n in FINE],
              b"coarse_label_names": [n.encode() for n in COARSE]}, py / "meta")
    (binary / "fine_label_names.txt").write_text("\n".join(FINE) + "\n")
    (binary / "coarse_label_names.txt").write_text("\n".join(COARSE) + "\n")

    # A wrong-shaped file: rows of 1024 bytes instead of 3072.
    bad = OUT / "cifar-100-python-badshape"
    bad.mkdir(exist_ok=True)
    py2_dump({b"fine_labels": [0, 1], b"coarse_labels": [4, 1], b"data": np.zeros((2, 1024), np.uint8)}, bad / "train")
    (bad / "test").write_bytes((py / "test").read_bytes())
    (bad / "meta").write_bytes((py / "meta").read_bytes())

    with open(OUT / "py3_protocol5.pkl", "wb") as f:
        pickle.dump({"labels": [1, 300, 70000, -5], b"raw": b"\x00\x01", "arr": np.arange(6, dtype=np.uint8).reshape(2, 3),
                     "nested": {"pi": 3.25, "flag": True, "none": None}}, f, protocol=5)

    inr = OUT / "imagenet-r-mini"
    sizes = [(40, 30), (48, 64), (37, 53), (64, 64), (30, 90)]
    for c, wnid in enumerate(["n01443537", "n01484850", "n01494475", "n01498041"]):
        d = inr / wnid
        d.mkdir(parents=True, exist_ok=True)
        for k, (h, w) in enumerate(sizes):
            arr = image(c, k, h, w).transpose(1, 2, 0)
            ext = "png" if k % 2 else "jpg"
            Image.fromarray(arr).save(d / f"{wnid}_{k}.{ext}", quality=90)
    print(f"wrote fixtures to {OUT}")


if __name__ == "__main__":
    main()
