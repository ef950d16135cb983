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

/// A run config over the CFRL fixture (3 tasks, 2 shots) with a tiny random-init BERT.
pub fn cre_config(method: &str, params: &str, out: &std::path::Path) -> promptcl_harness::config::RunConfig {
    let fixtures = repo().join("crates/stream/tests/fixtures/cre");
    let text = format!(
        r#"
name = "cre-fixture"
seeds = [2021]

[stream]
num_tasks = 3
dataset = {{ kind = "cfrl-few-shot", root = "{root}", shots = 2, tokenizer = "{tok}", max_length = 32 }}

[model]
preset = "custom"
bert = {{ vocab_size = 64, hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 4, intermediate_size = 64, max_position_embeddings = 64, type_vocab_size = 2, layer_norm_eps = 1e-12, hidden_act = "gelu" }}

[method]
name = "{method}"
params = {{ {params} }}

[optim]
epochs = 2
batch_size = 4
lr = 0.01
scale_lr_by_batch = false

[run]
device = "cpu"
results_dir = "{out}"
eval_batch_size = 8
"#,
        root = fixtures.join("cfrl").display(),
        tok = fixtures.join("tokenizer.json").display(),
        out = out.display(),
    );
    let cfg: promptcl_harness::config::RunConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Accuracy matrices (and per-epoch training losses) of tiny fixture runs,
/// recorded before a refactor and asserted after it
/// (`tests/golden/matrices.json`). `PROMPTCL_BLESS=1` rewrites every entry, `PROMPTCL_BLESS=key,key` only those.
pub mod golden {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use serde_json::Value;

    fn file() -> PathBuf {
        super::repo().join("crates/harness/tests/golden/matrices.json")
    }

    /// What a run left that a refactor must not change: the matrix, and the
    /// loss of every logged epoch (in log order, with its stage).
    pub fn record(dir: &Path) -> Value {
        let m = promptcl_harness::results::load_metrics(dir).unwrap();
        let log = std::fs::read_to_string(dir.join(promptcl_harness::results::LOG)).unwrap();
        let losses: Vec<Value> =
            log.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v.get("epoch").is_some()).map(|v| v["loss"].clone()).collect();
        serde_json::json!({ "matrix": m.matrix.rows, "losses": losses })
    }

    /// Asserts the run at `dir` equals the golden `key`: the matrix exactly,
    /// the losses to 1e-5 relative (they are f32 sums; the matrix is counts).
    /// On one machine a rerun is bit-exact; across CPUs libtorch's f32 kernels
    /// round differently (an AVX-512 EPYC against the blessing machine: up to
    /// 2.6e-6 for prompt methods, 4.9e-4 when the whole backbone trains, whose
    /// drift compounds through every weight), so `finetune-full` gets 1e-3.
    pub fn check(key: &str, dir: &Path) {
        let got = record(dir);
        let path = file();
        let read =
            || -> BTreeMap<String, Value> { std::fs::read_to_string(&path).ok().map(|t| serde_json::from_str(&t).unwrap()).unwrap_or_default() };
        let bless = std::env::var("PROMPTCL_BLESS").unwrap_or_default();
        if bless == "1" || bless.split(',').any(|k| k == key) {
            // Tests run in parallel threads: serialise the read-modify-write.
            let _guard = LOCK.lock().unwrap();
            let mut all = read();
            all.insert(key.to_string(), got);
            std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap() + "\n").unwrap();
            return;
        }
        let all = read();
        let want = all.get(key).unwrap_or_else(|| panic!("no golden `{key}` in {} (record it with PROMPTCL_BLESS=1)", path.display()));
        assert_eq!(got["matrix"], want["matrix"], "{key}: the accuracy matrix differs from the golden");
        let (g, w) = (got["losses"].as_array().unwrap(), want["losses"].as_array().unwrap());
        assert_eq!(g.len(), w.len(), "{key}: number of logged epochs");
        let tol = if key.ends_with("/finetune-full") { 1e-3 } else { 1e-5 };
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= tol * b.abs().max(1.0), "{key}: epoch {i} loss {a} vs golden {b}");
        }
    }

    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
}
