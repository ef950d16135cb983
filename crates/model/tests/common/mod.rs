#![allow(dead_code)]
use std::collections::HashMap;
use std::path::PathBuf;

use promptcl_model::{weights::read_safetensors, ViTConfig};
use tch::Tensor;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The config of `data-scripts/gen_vit_fixtures.py`.
pub fn tiny_cfg() -> ViTConfig {
    ViTConfig {
        img_size: 32,
        patch_size: 8,
        in_chans: 3,
        embed_dim: 64,
        depth: 3,
        num_heads: 4,
        mlp_ratio: 4.0,
        qkv_bias: true,
        num_classes: 10,
        layer_norm_eps: 1e-6,
    }
}

pub struct Golden(HashMap<String, Tensor>);

impl Golden {
    pub fn load() -> Self {
        Self(read_safetensors(&fixture("vit_golden.safetensors")).expect("golden fixture"))
    }
    pub fn get(&self, k: &str) -> Tensor {
        self.0.get(k).unwrap_or_else(|| panic!("no golden tensor {k}")).shallow_clone()
    }
    /// A leaf copy that records gradients.
    pub fn leaf(&self, k: &str) -> Tensor {
        self.get(k).copy().set_requires_grad(true)
    }
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a - b).abs().max().double_value(&[])
}

#[track_caller]
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let err = max_abs(a, b);
    eprintln!("{what}: max abs error {err:.2e}");
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
}

/// The config of `data-scripts/gen_bert_fixtures.py`.
pub fn tiny_bert_cfg() -> promptcl_model::BertConfig {
    promptcl_model::BertConfig {
        vocab_size: 100,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 40,
        ..promptcl_model::BertConfig::default()
    }
}
