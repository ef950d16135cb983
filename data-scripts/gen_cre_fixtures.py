#!/usr/bin/env python3
"""Tiny relation-extraction data in the exact on-disk formats promptcl reads.

Writes crates/stream/tests/fixtures/cre/:
- tokenizer.json: a WordPiece BERT tokenizer (Hugging Face `tokenizers`,
  BertNormalizer + BertPreTokenizer + [CLS]/[SEP] template) over the fixture
  vocabulary, with word pieces so that some words split.
- cfrl/: relation_name.txt, rel_index.npy (int64, 1-based, permuted),
  CFRLdata_10_100_10_2/{train_0.txt, test_0.txt, rel_cluster_label_0.npy}:
  6 relations in 3 clusters; the last cluster is the many-shot first task
  (8 examples per relation), the others 2-shot; 4 test examples per relation.
  Lines: 9 tab-separated fields as in the CFRL release.
- fewrel.json: FewRel-style {relation: [{tokens, h, t}]}, 4 relations × 12.
- bad/: malformed files for the error tests.

Sentences are generated from a seeded RNG: "<head> <trigger words> <tail> ...",
one trigger phrase per relation, so the relations are learnable.
"""
import json
import pathlib
import random

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/stream/tests/fixtures/cre"

RELATIONS = [
    ("place of birth", "was born in"),
    ("member of", "plays for the"),
    ("capital of", "is the capital of"),
    ("spouse", "is married to"),
    ("located in", "lies within"),
    ("developer", "was developed by"),
]
NAMES = ["anna", "berlin", "paris", "lions", "tigers", "bob", "carla", "rome", "acme", "nile", "alps", "zeta corp"]
FILLER = ["today", "according", "to", "reports", "however", "the", "and", "in", "1990", "since"]


def sentence(rng, rel):
    head = rng.choice(NAMES).split()
    tail = rng.choice([n for n in NAMES if n.split() != head]).split()
    pre = rng.sample(FILLER, rng.randint(0, 3))
    post = rng.sample(FILLER, rng.randint(0, 3))
    words = pre + head + RELATIONS[rel][1].split() + tail + post
    h0 = len(pre)
    t0 = h0 + len(head) + len(RELATIONS[rel][1].split())
    if rng.random() < 0.3:  # tail first, as real data often has
        words = pre + tail + ["whose"] + head + RELATIONS[rel][1].split() + ["it"] + post
        t0 = len(pre)
        h0 = t0 + len(tail) + 1
    return words, (head, list(range(h0, h0 + len(head)))), (tail, list(range(t0, t0 + len(tail))))


def cfrl_line(rel, words, h, t, rng):
    cands = [rel + 1] + rng.sample([r + 1 for r in range(len(RELATIONS)) if r != rel], 5)
    return "\t".join([
        str(rel + 1), " ".join(map(str, cands)), " ".join(words),
        " ".join(h[0]), " ".join(map(str, h[1])), " ".join(t[0]), " ".join(map(str, t[1])),
        "Q%d" % rng.randint(1, 9999), "Q%d" % rng.randint(1, 9999),
    ])


def tokenizer(words):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in sorted(words):
        if w not in vocab:
            vocab.append(w)
    # Split a few words into pieces so WordPiece continuation is exercised.
    for piece in ["corp", "##s", "##ers", "tig", "lion"]:
        if piece not in vocab:
            vocab.append(piece)
    vocab = [v for v in vocab if v not in ("tigers", "lions")]
    tok = Tokenizer(models.WordPiece({v: i for i, v in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def main():
    rng = random.Random(7)
    OUT.mkdir(parents=True, exist_ok=True)
    all_words = set()
    cfrl = OUT / "cfrl"
    k_dir = cfrl / "CFRLdata_10_100_10_2"
    k_dir.mkdir(parents=True, exist_ok=True)
    (cfrl / "relation_name.txt").write_text("".join(name + "\n" for name, _ in RELATIONS))
    rel_index = np.array([4, 1, 6, 2, 5, 3], dtype=np.int64)  # 1-based relation ids, permuted
    cluster = np.array([0, 2, 1, 0, 1, 2], dtype=np.int64)  # cluster of rel_index[i]
    np.save(cfrl / "rel_index.npy", rel_index)
    np.save(k_dir / "rel_cluster_label_0.npy", cluster)
    many = {int(r) - 1 for r, c in zip(rel_index, cluster) if c == 2}
    train, test = [], []
    for rel in range(len(RELATIONS)):
        for _ in range(8 if rel in many else 2):
            w, h, t = sentence(rng, rel)
            all_words.update(w)
            train.append(cfrl_line(rel, w, h, t, rng))
        for _ in range(4):
            w, h, t = sentence(rng, rel)
            all_words.update(w)
            test.append(cfrl_line(rel, w, h, t, rng))
    rng.shuffle(train)
    (k_dir / "train_0.txt").write_text("\n".join(train) + "\n")
    (k_dir / "test_0.txt").write_text("\n".join(test) + "\n")

    fewrel = {}
    for rel in range(4):
        samples = []
        for _ in range(12):
            w, h, t = sentence(rng, rel)
            all_words.update(w)
            samples.append({"tokens": w, "h": [" ".join(h[0]), "Q1", [h[1]]], "t": [" ".join(t[0]), "Q2", [t[1]]]})
        fewrel["P%d" % (100 + rel)] = samples
    (OUT / "fewrel.json").write_text(json.dumps(fewrel))

    tokenizer(all_words | {"whose", "it"}).save(str(OUT / "tokenizer.json"))

    bad = OUT / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "eight_fields.txt").write_text(train[0].rsplit("\t", 1)[0] + "\n")
    fields = train[1].split("\t")
    fields[4] = "40 41"
    (bad / "span_outside.txt").write_text("\t".join(fields) + "\n")
    fields = train[2].split("\t")
    fields[0] = "99"
    (bad / "label_range.txt").write_text("\t".join(fields) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
