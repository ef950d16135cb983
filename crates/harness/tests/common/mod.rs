#![allow(dead_code)]
//! The tiny fixture run shared by the harness tests.

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A run config over the CIFAR fixture (5 tasks) with the timm-fixture ViT.
/// `params` is the inner text of `method.params = { … }`; `extra_run` adds
/// lines to `[run]`.
pub fn fixture_config(name: &str, method: &str, params: &str, epochs: usize, batch: usize, lr: f64, results: &Path, extra_run: &str) -> String {
    format!(
        r#"
name = "{name}"
seeds = [7]

[stream]
num_tasks = 5
order = {{ seed = 3 }}
dataset = {{ kind = "cifar100", root = "{data}" }}
transform = {{ size = 32 }}

[model]
preset = "custom"
weights = "{weights}"
vit = {{ img_size = 32, patch_size = 8, embed_dim = 64, depth = 3, num_heads = 4, num_classes = 0 }}

[method]
name = "{method}"
params = {{ {params} }}

[optim]
epochs = {epochs}
batch_size = {batch}
lr = {lr}
scale_lr_by_batch = false

[run]
device = "cpu"
results_dir = "{results}"
eval_batch_size = 50
{extra_run}
"#,
        data = repo().join("crates/stream/tests/fixtures").display(),
        weights = repo().join("crates/model/tests/fixtures/vit_tiny_test.safetensors").display(),
        results = results.display(),
    )
}
