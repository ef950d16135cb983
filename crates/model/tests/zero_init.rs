//! Zero-initialised gated prefix attention against
//! `data-scripts/gen_zeroinit_fixtures.py` (the official `Attention.forward`
//! of Diep et al. / LLaMA-Adapter in the tiny ViT's blocks): outputs and
//! gradients within 1e-5, per-head and per-query gates; and the property the
//! gate exists for: at 0 the model is exactly the frozen one.

mod common;

use std::collections::HashMap;

use common::{fixture, max_abs, tiny_cfg};
use promptcl_model::weights::read_safetensors;
use promptcl_model::{frozen_vit, Precision, Prompts, VisionTransformer, ZeroInitGate};
use tch::{Device, Kind, Tensor};

fn model() -> (tch::nn::VarStore, VisionTransformer) {
    frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap()
}

fn golden() -> HashMap<String, Tensor> {
    read_safetensors(&fixture("zero_init_golden.safetensors")).unwrap()
}

fn leaf(t: &Tensor) -> Tensor {
    t.copy().set_requires_grad(true)
}

#[test]
fn gated_prefix_attention_matches_the_official_forward() {
    let g = golden();
    let (_vs, m) = model();
    for case in ["per_head", "per_query"] {
        let (key, value, gate) = (leaf(&g[&format!("{case}.key")]), leaf(&g[&format!("{case}.value")]), leaf(&g[&format!("{case}.gate")]));
        let gates: Vec<ZeroInitGate> =
            (0..3).map(|i| if case == "per_head" { ZeroInitGate::PerHead(gate.get(i)) } else { ZeroInitGate::PerQuery(gate.get(i)) }).collect();
        let (keys, values): (Vec<Tensor>, Vec<Tensor>) = (0..3).map(|i| (key.get(i).unsqueeze(0), value.get(i).unsqueeze(0))).unzip();
        let mut prompts = Prompts::none();
        for i in 0..3 {
            prompts = prompts.with_prefix(i, &keys[i], &values[i]).with_zero_gate(i, &gates[i]);
        }
        let cls = m.forward(&g["input"], &prompts).unwrap().cls;
        let err = max_abs(&cls, &g[&format!("{case}.cls")]);
        assert!(err < 1e-5, "{case} cls: {err}");
        (&cls * &g["probe"]).sum(Kind::Float).backward();
        // Relative to the gradient's scale, as the learner's parity tests: the gate's
        // gradient (up to 8 here) sums over every query and head dimension, and its
        // last bits differ between CPUs' kernels (1.04e-5 absolute on one Xeon).
        for (name, t) in [("key", &key), ("value", &value), ("gate", &gate)] {
            let want = &g[&format!("{case}.grad.{name}")];
            let err = max_abs(&t.grad(), want) / want.abs().max().double_value(&[]).max(1.0);
            assert!(err < 1e-5, "{case} gradient of the {name}: {err} relative");
        }
    }
}

/// At g = 0 the output is the frozen model's, bit for bit, whatever the
/// prefix; the gate gets a gradient and the prefix none (so a new prompt
/// starts as a no-op and opens through its gate). A gate without a prefix, or
/// of the wrong shape, is a clear error.
#[test]
fn a_zero_gate_is_exactly_the_frozen_model() {
    let g = golden();
    let (_vs, m) = model();
    let frozen = m.forward(&g["input"], &Prompts::none()).unwrap().cls;
    let (key, value) = (leaf(&g["per_head.key"].get(1).unsqueeze(0)), leaf(&g["per_head.value"].get(1).unsqueeze(0)));
    let zero = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let gate = ZeroInitGate::PerHead(zero.shallow_clone());
    let cls = m.forward(&g["input"], &Prompts::none().with_prefix(1, &key, &value).with_zero_gate(1, &gate)).unwrap().cls;
    assert!(cls.equal(&frozen), "a zero gate changed the output by {}", max_abs(&cls, &frozen));
    (&cls * &g["probe"]).sum(Kind::Float).backward();
    assert!(zero.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "the gate learns");
    assert_eq!(key.grad().abs().sum(Kind::Float).double_value(&[]), 0.0, "the prefix gets nothing through a closed gate");

    let err = m.forward(&g["input"], &Prompts::none().with_zero_gate(0, &gate)).unwrap_err().to_string();
    assert!(err.contains("needs a prefix"), "{err}");
    let wrong = ZeroInitGate::PerQuery(Tensor::zeros([4], (Kind::Float, Device::Cpu)));
    let err = m.forward(&g["input"], &Prompts::none().with_prefix(1, &key, &value).with_zero_gate(1, &wrong)).unwrap_err().to_string();
    assert!(err.contains("zero-init gate must be [4, 16]"), "{err}");
}

/// Gates given per sample (`[B, H]`, `[B, H, d]`: task-specific prompts routed
/// sample by sample) give each sample what its own gate gives it alone.
#[test]
fn per_sample_gates_act_sample_by_sample() {
    let g = golden();
    let (_vs, m) = model();
    let x = &g["input"];
    for case in ["per_head", "per_query"] {
        let (key, value) = (g[&format!("{case}.key")].get(0).unsqueeze(0), g[&format!("{case}.value")].get(0).unsqueeze(0));
        let gate = &g[&format!("{case}.gate")];
        // Sample 0 takes layer 0's gate values, sample 1 layer 1's.
        let both = Tensor::stack(&[gate.get(0), gate.get(1)], 0);
        let wrap = |t: Tensor| if case == "per_head" { ZeroInitGate::PerHead(t) } else { ZeroInitGate::PerQuery(t) };
        let joint = wrap(both);
        let cls = m.forward(x, &Prompts::none().with_prefix(0, &key, &value).with_zero_gate(0, &joint)).unwrap().cls;
        for b in 0..2 {
            let own = wrap(gate.get(b));
            let alone = m.forward(&x.narrow(0, b, 1), &Prompts::none().with_prefix(0, &key, &value).with_zero_gate(0, &own)).unwrap().cls;
            let err = max_abs(&cls.narrow(0, b, 1), &alone);
            assert!(err < 1e-5, "{case} sample {b}: {err}");
        }
    }
}
