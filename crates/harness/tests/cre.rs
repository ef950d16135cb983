//! Continual relation extraction end to end through the same harness as the
//! vision track: the CFRL fixture stream (data-scripts/gen_cre_fixtures.py),
//! a tiny random-init BERT reading packed text batches, every CRE method.

use std::path::PathBuf;

mod common;

use common::repo;
use promptcl_harness::{config::RunConfig, results, run};

fn config(method: &str, params: &str, out: &std::path::Path) -> RunConfig {
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
    let cfg: RunConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

#[test]
fn cre_methods_run_end_to_end_on_the_fixture_stream() {
    let out = std::env::temp_dir().join(format!("promptcl-cre-{}", std::process::id()));
    let cases = [
        ("finetune-head", ""),
        ("finetune-full", ""),
        ("l2p", "pool_size = 4, top_k = 2, length = 2, head_input = \"token\""),
        ("hide-prompt", "layers = [0, 1], length = 2, tii_epochs = 1, tii_align_epochs = 1, align_epochs = 2"),
        ("epi", "length = 2"),
        ("wave-cre", "layers = [0, 1], pool_size = 3, top_k = 2, tii_epochs = 1, tii_align_epochs = 1, align_epochs = 2"),
    ];
    for (method, params) in cases {
        let cfg = config(method, params, &out);
        let dir = run::run(&cfg, 2021, None, run::RunOptions { quiet: true, ..Default::default() }).unwrap_or_else(|e| panic!("{method}: {e:#}"));
        let m = results::load_metrics(&dir).unwrap();
        assert_eq!(m.matrix.num_tasks(), 3, "{method}");
        assert_eq!(m.dataset, "fewrel-cfrl-2shot");
        for (i, row) in m.matrix.rows.iter().enumerate() {
            assert_eq!(row.len(), i + 1, "{method}");
            assert!(row.iter().all(|a| (0.0..=100.0).contains(a)), "{method}: {row:?}");
        }
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn a_text_dataset_needs_a_text_encoder() {
    let out = PathBuf::from("/nonexistent");
    let mut cfg = config("l2p", "", &out);
    cfg.model.bert = None;
    cfg.model.preset = "vit_base_patch16_224".into();
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("needs a BERT encoder") && e.contains("all-minilm-l6-v2"), "{e}");
}
