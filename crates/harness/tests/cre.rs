//! Continual relation extraction end to end through the same harness as the
//! vision track: the CFRL fixture stream (data-scripts/gen_cre_fixtures.py),
//! a tiny random-init BERT reading packed text batches, every CRE method.

use std::path::PathBuf;

mod common;

use promptcl_harness::{results, run};

#[test]
fn cre_methods_run_end_to_end_on_the_fixture_stream() {
    let out = std::env::temp_dir().join(format!("promptcl-cre-{}", std::process::id()));
    let cases = [
        ("finetune-head", ""),
        ("finetune-full", ""),
        ("l2p", "pool_size = 4, top_k = 2, length = 2, head_input = \"token\""),
        ("hide-prompt", "layers = [0, 1], length = 2, tii_epochs = 1, tii_align_epochs = 1, align_epochs = 2"),
        ("epi", "length = 2"),
        ("wave-cre", "layers = [0, 1], pool_size = 3, top_k = 2, tii_align_epochs = 1, align_epochs = 2, replay_samples = 16, head_hidden = [16], tii_net = { classifier = [16] }"),
    ];
    for (method, params) in cases {
        let cfg = common::cre_config(method, params, &out);
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
    let mut cfg = common::cre_config("l2p", "", &out);
    cfg.model.bert = None;
    cfg.model.preset = "vit_base_patch16_224".into();
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("needs a BERT encoder") && e.contains("all-minilm-l6-v2"), "{e}");
}
