//! AdaptFormer adapters and SSF on the ViT against
//! `data-scripts/gen_adapter_fixtures.py` (LAMDA-PILOT's `vit_adapter.py` and
//! `vit_ssf.py` on the tiny fixture ViT): outputs and gradients within 1e-5;
//! and the properties a method relies on.

mod common;

use std::collections::HashMap;

use common::{fixture, max_abs, tiny_cfg};
use promptcl_model::weights::read_safetensors;
use promptcl_model::{frozen_bert, frozen_vit, AdaptFormer, BertConfig, Precision, Prompts, Ssf, SsfBlock, VisionTransformer};
use tch::{Device, Kind, Tensor};

fn model() -> (tch::nn::VarStore, VisionTransformer) {
    frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap()
}

fn golden() -> HashMap<String, Tensor> {
    read_safetensors(&fixture("vit_adapter_golden.safetensors")).unwrap()
}

fn leaf(g: &HashMap<String, Tensor>, k: &str) -> Tensor {
    g[k].copy().set_requires_grad(true)
}

fn adapters(g: &HashMap<String, Tensor>, up_scale: f64) -> Vec<AdaptFormer> {
    (0..3)
        .map(|i| {
            let t = |n: &str| leaf(g, &format!("adapter.{i}.{n}"));
            AdaptFormer {
                down_weight: t("down.weight"),
                down_bias: t("down.bias"),
                up_weight: (t("up.weight") * up_scale).detach().set_requires_grad(true),
                up_bias: (t("up.bias") * up_scale).detach().set_requires_grad(true),
                scale: 0.1,
                dropout: 0.1,
                train: false,
            }
        })
        .collect()
}

fn ssf(g: &HashMap<String, Tensor>, name: &str) -> Ssf {
    Ssf { scale: leaf(g, &format!("ssf.{name}.scale")), shift: leaf(g, &format!("ssf.{name}.shift")) }
}

fn ssf_blocks(g: &HashMap<String, Tensor>) -> Vec<SsfBlock> {
    (0..3)
        .map(|i| {
            let s = |op: &str| ssf(g, &format!("{i}.{op}"));
            SsfBlock { norm1: s("norm1"), qkv: s("qkv"), proj: s("proj"), norm2: s("norm2"), fc1: s("fc1"), fc2: s("fc2") }
        })
        .collect()
}

#[test]
fn adapter_forward_and_gradients_match_pilot() {
    let g = golden();
    let (_vs, m) = model();
    let ads = adapters(&g, 1.0);
    let mut prompts = Prompts::none();
    for (i, a) in ads.iter().enumerate() {
        prompts = prompts.with_adapter(i, a);
    }
    let cls = m.forward(&g["input"], &prompts).unwrap().cls;
    assert!(max_abs(&cls, &g["adapter.cls"]) < 1e-5, "cls {}", max_abs(&cls, &g["adapter.cls"]));
    (&cls * &g["probe"]).sum(Kind::Float).backward();
    for (i, a) in ads.iter().enumerate() {
        for (name, t) in [("down.weight", &a.down_weight), ("down.bias", &a.down_bias), ("up.weight", &a.up_weight), ("up.bias", &a.up_bias)] {
            let want = &g[&format!("adapter.grad.adapter.{i}.{name}")];
            let err = max_abs(&t.grad(), want);
            assert!(err < 1e-5, "layer {i} {name}: {err}");
        }
    }
}

#[test]
fn ssf_forward_and_gradients_match_pilot() {
    let g = golden();
    let (_vs, m) = model();
    let blocks = ssf_blocks(&g);
    let (embed, fin) = (ssf(&g, "embed"), ssf(&g, "final"));
    let mut prompts = Prompts::none().with_ssf_ends(&embed, &fin);
    for (i, b) in blocks.iter().enumerate() {
        prompts = prompts.with_ssf(i, b);
    }
    let cls = m.forward(&g["input"], &prompts).unwrap().cls;
    assert!(max_abs(&cls, &g["ssf.cls"]) < 1e-5, "cls {}", max_abs(&cls, &g["ssf.cls"]));
    (&cls * &g["probe"]).sum(Kind::Float).backward();
    let mut checked = 0;
    let mut check = |name: String, s: &Ssf| {
        for (part, t) in [("scale", &s.scale), ("shift", &s.shift)] {
            let err = max_abs(&t.grad(), &g[&format!("ssf.grad.ssf.{name}.{part}")]);
            assert!(err < 1e-5, "{name}.{part}: {err}");
            checked += 1;
        }
    };
    check("embed".into(), &embed);
    check("final".into(), &fin);
    for (i, b) in blocks.iter().enumerate() {
        for (op, s) in [("norm1", &b.norm1), ("qkv", &b.qkv), ("proj", &b.proj), ("norm2", &b.norm2), ("fc1", &b.fc1), ("fc2", &b.fc2)] {
            check(format!("{i}.{op}"), s);
        }
    }
    assert_eq!(checked, 2 * (2 + 3 * 6));
}

/// PILOT's init (up-projection zero) leaves the frozen model's output exactly
/// unchanged; gradients still reach the up-projection, and not the backbone.
#[test]
fn a_zero_initialised_adapter_is_exactly_the_frozen_model() {
    let g = golden();
    let (vs, m) = model();
    let ads = adapters(&g, 0.0);
    let mut prompts = Prompts::none();
    for (i, a) in ads.iter().enumerate() {
        prompts = prompts.with_adapter(i, a);
    }
    let plain = m.forward(&g["input"], &Prompts::none()).unwrap().cls;
    let adapted = m.forward(&g["input"], &prompts).unwrap().cls;
    assert!(plain.equal(&adapted), "max diff {}", max_abs(&plain, &adapted));
    adapted.sum(Kind::Float).backward();
    assert!(ads[0].up_weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    for (name, t) in vs.variables() {
        assert!(!t.grad().defined(), "backbone {name} got a gradient");
    }
}

/// Identity SSF (scale 1, shift 0) is exactly the frozen model; a wrong width names the op.
#[test]
fn identity_ssf_is_the_frozen_model_and_bad_widths_are_named() {
    let g = golden();
    let (_vs, m) = model();
    let one = |w: i64| Ssf { scale: Tensor::ones([w], (Kind::Float, Device::Cpu)), shift: Tensor::zeros([w], (Kind::Float, Device::Cpu)) };
    let block = SsfBlock { norm1: one(64), qkv: one(192), proj: one(64), norm2: one(64), fc1: one(256), fc2: one(64) };
    let (e, f) = (one(64), one(64));
    let prompts = Prompts::none().with_ssf_ends(&e, &f).with_ssf(1, &block);
    let plain = m.forward(&g["input"], &Prompts::none()).unwrap().cls;
    assert!(plain.equal(&m.forward(&g["input"], &prompts).unwrap().cls));
    let bad = SsfBlock { fc1: one(64), ..block };
    let err = m.forward(&g["input"], &Prompts::none().with_ssf(2, &bad)).unwrap_err().to_string();
    assert!(err.contains("layer 2 fc1: SSF scale must be [256]"), "{err}");
}

/// On BERT the adapter sits inside the post-LN FFN residual; zero-initialised it
/// changes nothing, otherwise it does; SSF is refused with a clear error.
#[test]
fn bert_takes_adapters_and_refuses_ssf() {
    let cfg = BertConfig {
        vocab_size: 64,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        ..BertConfig::default()
    };
    tch::manual_seed(0);
    let (_vs, bert) = frozen_bert(&cfg, None, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&[1i64, 5, 9, 3, 2, 7]).view([2, 3]);
    let opts = promptcl_model::ForwardOptions::default();
    let t = |s: &[i64], scale: f64| Tensor::randn(s, (Kind::Float, Device::Cpu)) * scale;
    let mk = |up: f64| AdaptFormer {
        down_weight: t(&[4, 32], 0.2),
        down_bias: t(&[4], 0.1),
        up_weight: t(&[32, 4], 0.2) * up,
        up_bias: t(&[32], 0.1) * up,
        scale: 0.1,
        dropout: 0.0,
        train: false,
    };
    let plain = bert.forward(&ids, None, &Prompts::none(), &opts).unwrap().hidden;
    let zero = mk(0.0);
    assert!(plain.equal(&bert.forward(&ids, None, &Prompts::none().with_adapter(1, &zero), &opts).unwrap().hidden));
    let live = mk(1.0);
    assert!(max_abs(&plain, &bert.forward(&ids, None, &Prompts::none().with_adapter(1, &live), &opts).unwrap().hidden) > 1e-4);
    let s = Ssf { scale: Tensor::ones([32], (Kind::Float, Device::Cpu)), shift: Tensor::zeros([32], (Kind::Float, Device::Cpu)) };
    let err = bert.forward(&ids, None, &Prompts::none().with_ssf_ends(&s, &s), &opts).unwrap_err().to_string();
    assert!(err.contains("SSF is implemented for the ViT only"), "{err}");
}

/// APER's VPT variant (PILOT `vpt.py`): deep tokens per block replace the
/// previous block's, shallow ones enter before the first block and stay; both
/// give PILOT's class token and prompt gradients (its tokens sit after the
/// patches, promptcl's after the class token: the attention does not care).
#[test]
fn vpt_deep_and_shallow_match_pilot() {
    let g = golden();
    let (_vs, m) = model();
    for (case, rows) in [("vpt_deep", 3), ("vpt_shallow", 1)] {
        let p = leaf(&g, &format!("{case}.prompts"));
        let mut prompts = Prompts::none();
        for i in 0..rows {
            prompts = prompts.with_tokens(i as usize, &p.narrow(0, i, 1));
        }
        let cls = m.forward(&g["input"], &prompts).unwrap().cls;
        assert!(max_abs(&cls, &g[&format!("{case}.cls")]) < 1e-5, "{case} cls {}", max_abs(&cls, &g[&format!("{case}.cls")]));
        (&cls * &g["probe"]).sum(Kind::Float).backward();
        let err = max_abs(&p.grad(), &g[&format!("{case}.grad")]);
        assert!(err < 1e-5, "{case} prompt gradient: {err}");
    }
}
