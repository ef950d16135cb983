#![allow(dead_code)]
//! The tiny timm-fixture ViT the learner tests share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use promptcl_learner::{Backbone, Encoder, MethodContext, OptimConfig};
use promptcl_model::{frozen_vit, Precision, ViTConfig};
use tch::{Device, Tensor};

/// `tasks` tasks of `per_task` classes on the 3-block, 64-wide fixture ViT (32×32 images).
pub fn vit_ctx(tasks: usize, per_task: usize, optim: OptimConfig, groups: Option<Vec<usize>>) -> MethodContext {
    let cfg = ViTConfig { img_size: 32, patch_size: 8, embed_dim: 64, depth: 3, num_heads: 4, num_classes: 0, ..ViTConfig::vit_tiny_patch16_224() };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/vit_tiny_test.safetensors");
    let (vars, vit) = frozen_vit(&cfg, Some(&path), Device::Cpu, Precision::F32).unwrap();
    MethodContext {
        backbone: Rc::new(Backbone::new(Encoder::Vit(vit), vars)),
        num_classes: tasks * per_task,
        num_tasks: tasks,
        task_sizes: vec![per_task; tasks],
        optim,
        device: Device::Cpu,
        seed: 5,
        groups,
    }
}

/// A golden file of `tests/fixtures/` (tch's reader: fixtures may hold int64 tensors).
pub fn golden(file: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// max |a − b| relative to max |b| (b cast to a's dtype).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let b = b.to_kind(a.kind());
    ((a - &b).abs().max() / b.abs().max().clamp_min(1e-30)).double_value(&[])
}

/// Every variable with a golden gradient (`golden[key(name)]`) matches it to 1e-5 (relative).
pub fn assert_grads_match(vars: &HashMap<String, Tensor>, golden: &HashMap<String, Tensor>, key: impl Fn(&str) -> String, what: &str) {
    for (name, t) in vars {
        if let Some(want) = golden.get(&key(name)) {
            let err = rel_err(&t.grad(), want);
            assert!(err < 1e-5, "{what} gradient of {name}: {err}");
        }
    }
}
