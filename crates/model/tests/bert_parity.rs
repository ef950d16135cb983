//! The Rust BERT against transformers' BertModel (fixtures from
//! data-scripts/gen_bert_fixtures.py): outputs and prompt gradients within 1e-5.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use promptcl_model::{
    frozen_bert, mean_pool, AttentionImpl, BertConfig, EmbeddingTuning, ForwardOptions, GateActivation, ModelError, NoRGaGate, Prompts,
};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn golden() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("bert_golden.safetensors")).unwrap().into_iter().collect()
}

fn cfg() -> BertConfig {
    common::tiny_bert_cfg()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    let err = (a - b).abs().max().double_value(&[]);
    eprintln!("{what}: max abs error {err:.2e}");
    assert!(err <= 1e-5, "{what}: {err:e}");
}

fn leaf(g: &HashMap<String, Tensor>, k: &str) -> Tensor {
    g[k].copy().set_requires_grad(true)
}

#[test]
fn plain_forward_matches_transformers_with_padding() {
    let (vs, bert) = frozen_bert(&cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    assert!(vs.trainable_variables().iter().all(|t| !t.requires_grad()), "frozen");
    let g = golden();
    let mask = &g["attention_mask"];
    for attention in [AttentionImpl::Explicit, AttentionImpl::Fused] {
        let out = bert.forward(&g["input_ids"], Some(mask), &Prompts::none(), &ForwardOptions { attention, ..Default::default() }).unwrap();
        close(&out.hidden, &g["plain.hidden"], &format!("last_hidden_state ({attention:?})"));
    }
    let pooled = mean_pool(&g["plain.hidden"], mask);
    assert_eq!(pooled.size(), [2, 32]);
}

#[test]
fn prefixes_with_norga_gate_match_reference_with_gradients() {
    let (_vs, bert) = frozen_bert(&cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let g = golden();
    let [k0, v0, k1, v1] = ["k0", "v0", "k1", "v1"].map(|n| leaf(&g, &format!("prefix.{n}")));
    let gate = NoRGaGate { alpha: leaf(&g, "gate.alpha"), tau: leaf(&g, "gate.tau"), activation: GateActivation::Tanh };
    let prompts = Prompts::none().with_prefix(0, &k0, &v0).with_prefix(1, &k1, &v1).with_score_hook(0, &gate).with_score_hook(1, &gate);
    let out = bert.forward(&g["input_ids"], Some(&g["attention_mask"]), &prompts, &ForwardOptions::default()).unwrap();
    close(&out.hidden, &g["prefix.out"], "prefixed output");
    (out.hidden.select(1, 0) * &g["w"]).sum(Kind::Float).backward();
    for (t, n) in [(&k0, "k0"), (&v0, "v0"), (&k1, "k1"), (&v1, "v1")] {
        close(&t.grad(), &g[&format!("prefix.grad_{n}")], n);
    }
    close(&gate.alpha.grad(), &g["gate.grad_alpha"], "grad alpha");
    close(&gate.tau.grad(), &g["gate.grad_tau"], "grad tau");
}

#[test]
fn prompt_tokens_match_reference_with_gradients() {
    let (_vs, bert) = frozen_bert(&cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let g = golden();
    let t1 = leaf(&g, "tokens.t1");
    let opts = ForwardOptions { keep_prompt_tokens: true, ..Default::default() };
    let out = bert.forward(&g["input_ids"], Some(&g["attention_mask"]), &Prompts::none().with_tokens(1, &t1), &opts).unwrap();
    close(&out.hidden, &g["tokens.out"], "prompt tokens kept");
    (out.hidden.select(1, 0) * &g["w"]).sum(Kind::Float).backward();
    close(&t1.grad(), &g["tokens.grad_t1"], "grad tokens");
}

#[test]
fn integer_buffers_and_a_bert_prefix_are_accepted() {
    let mut tensors: Vec<(String, Tensor)> =
        Tensor::read_safetensors(fixture("bert_tiny_test.safetensors")).unwrap().into_iter().map(|(k, v)| (format!("bert.{k}"), v)).collect();
    tensors.push(("bert.embeddings.position_ids".into(), Tensor::arange(40, (Kind::Int64, Device::Cpu)).unsqueeze(0)));
    let path = std::env::temp_dir().join(format!("promptcl-bert-{}.safetensors", std::process::id()));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let (_vs, bert) = frozen_bert(&cfg(), Some(&path), Device::Cpu).unwrap();
    let g = golden();
    let out = bert.forward(&g["input_ids"], Some(&g["attention_mask"]), &Prompts::none(), &ForwardOptions::default()).unwrap();
    close(&out.hidden, &g["plain.hidden"], "prefixed checkpoint");
    std::fs::remove_file(path).ok();
}

#[test]
fn bad_bert_inputs_are_errors() {
    let (_vs, bert) = frozen_bert(&cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let opts = ForwardOptions::default();
    let ids = Tensor::from_slice(&[1i64, 2, 300]).view([1, 3]);
    let e = bert.forward(&ids, None, &Prompts::none(), &opts).unwrap_err().to_string();
    assert!(e.contains("vocabulary"), "{e}");
    let long = Tensor::ones([1, 41], (Kind::Int64, Device::Cpu));
    assert!(bert.forward(&long, None, &Prompts::none(), &opts).unwrap_err().to_string().contains("max_position_embeddings"));
    let ids = Tensor::ones([2, 4], (Kind::Int64, Device::Cpu));
    let bad_mask = Tensor::ones([2, 5], (Kind::Int64, Device::Cpu));
    assert!(bert.forward(&ids, Some(&bad_mask), &Prompts::none(), &opts).is_err());
    struct Never;
    impl promptcl_model::TokenGenerator for Never {
        fn tokens(&self, x: &Tensor, _: (i64, i64)) -> promptcl_model::Result<Tensor> {
            Ok(x.shallow_clone())
        }
    }
    let e = bert.forward(&ids, None, &Prompts::none().with_token_generator(1, &Never), &opts).unwrap_err().to_string();
    assert!(e.contains("layer 1: token generators") && e.contains("BERT has none"), "{e}");
    let wrong = BertConfig { hidden_size: 48, ..cfg() };
    let e = frozen_bert(&wrong, Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).err().unwrap();
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e}");
}

/// Entity markers grow the vocabulary: the trained rows stay, the new rows
/// follow the trained rows' per-dimension mean and spread.
#[test]
fn added_tokens_grow_the_embedding() {
    let grown = BertConfig { vocab_size: cfg().vocab_size + 4, ..cfg() };
    tch::manual_seed(3);
    let (vs, _bert) = frozen_bert(&grown, Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let w = vs.variables()["embeddings.word_embeddings.weight"].shallow_clone();
    let n = cfg().vocab_size;
    let file = promptcl_model::weights::read_safetensors(&fixture("bert_tiny_test.safetensors")).unwrap();
    let trained = &file["embeddings.word_embeddings.weight"];
    assert!(w.narrow(0, 0, n).equal(trained), "trained rows unchanged");
    let new = w.narrow(0, n, 4);
    assert!(new.isfinite().all().int64_value(&[]) == 1);
    let spread = trained.std_dim(0, true, false).max().double_value(&[]);
    let dist = (new - trained.mean_dim(0, true, Kind::Float)).abs().max().double_value(&[]);
    assert!(dist < 6.0 * spread, "new rows lie within the trained rows' spread ({dist} vs {spread})");
}

/// The embedding layer's tensors swapped for copies: with equal values the
/// forward pass is the plain one; gradients reach the marker rows the batch
/// reads and no other; a wrong shape is an error naming the tensor.
#[test]
fn embedding_tuning_replaces_the_embedding_layer() {
    let grown = BertConfig { vocab_size: cfg().vocab_size + 4, ..cfg() };
    tch::manual_seed(3);
    let (vs, bert) = frozen_bert(&grown, Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    assert_eq!(bert.new_rows(), 4, "the four rows beyond the file's 100");
    assert_eq!(frozen_bert(&cfg(), None, Device::Cpu).unwrap().1.new_rows(), 0);
    let v = vs.variables();
    let own = |k: &str| v[k].detach().copy().set_requires_grad(true);
    let tuning = EmbeddingTuning {
        new_rows: v["embeddings.word_embeddings.weight"].narrow(0, 100, 4).detach().copy().set_requires_grad(true),
        position: own("embeddings.position_embeddings.weight"),
        token_type: own("embeddings.token_type_embeddings.weight"),
        norm_weight: own("embeddings.LayerNorm.weight"),
        norm_bias: own("embeddings.LayerNorm.bias"),
    };
    let ids = Tensor::from_slice(&[2i64, 100, 7, 101, 9, 3, 2, 5, 6, 101, 8, 3]).view([2, 6]);
    let opts = ForwardOptions::default();
    let plain = bert.forward(&ids, None, &Prompts::none(), &opts).unwrap().hidden;
    let tuned = bert.forward(&ids, None, &Prompts::none().with_embeddings(&tuning), &opts).unwrap().hidden;
    close(&plain, &tuned, "tuned embeddings with the model's own values");
    tuned.sum(Kind::Float).backward();
    let rows = tuning.new_rows.grad().abs().sum_dim_intlist(1, false, Kind::Float);
    let used: Vec<bool> = (0..4).map(|r| rows.double_value(&[r]) > 0.0).collect();
    assert_eq!(used, [true, true, false, false], "only markers 100 and 101 are read");
    let positions = tuning.position.grad().abs().sum_dim_intlist(1, false, Kind::Float);
    assert!(positions.narrow(0, 0, 6).min().double_value(&[]) > 0.0 && positions.narrow(0, 6, 34).max().double_value(&[]) == 0.0);
    assert!(tuning.norm_weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Changed marker rows change the output (not by a constant: the LayerNorm would remove it).
    let moved = EmbeddingTuning {
        new_rows: tuning.new_rows.detach() + Tensor::randn([4, 32], (Kind::Float, Device::Cpu)),
        position: tuning.position.shallow_clone(),
        token_type: tuning.token_type.shallow_clone(),
        norm_weight: tuning.norm_weight.shallow_clone(),
        norm_bias: tuning.norm_bias.shallow_clone(),
    };
    let out = tch::no_grad(|| bert.forward(&ids, None, &Prompts::none().with_embeddings(&moved), &opts).unwrap().hidden);
    assert!((out - plain.detach()).abs().max().double_value(&[]) > 1e-3);
    let bad = EmbeddingTuning { new_rows: Tensor::zeros([3, 32], (Kind::Float, Device::Cpu)), ..moved };
    let e = bert.forward(&ids, None, &Prompts::none().with_embeddings(&bad), &opts).unwrap_err().to_string();
    assert!(e.contains("new_rows") && e.contains("[4, 32]"), "{e}");
}
