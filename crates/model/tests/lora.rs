//! LoRA on the attention projections against PEFT itself
//! (`data-scripts/gen_lora_fixtures.py`: `inject_adapter_in_model` on the
//! tiny BERT and on the tiny ViT with q, k, v split out of the fused qkv):
//! outputs and the gradients of every A and B within 1e-5. And the
//! properties: a zero B is exactly the frozen model, merged weights compute
//! what the unmerged update does, gradients reach only A and B, per-sample
//! updates act sample by sample, misuse is a named error.

mod common;

use std::collections::HashMap;

use common::{assert_close, fixture, max_abs, tiny_bert_cfg, tiny_cfg};
use promptcl_model::{frozen_bert, frozen_vit, ForwardOptions, LayerLora, LoraTarget, LoraUpdate, Precision, Prompts};
use tch::{Device, Kind, Tensor};

fn golden() -> HashMap<String, Tensor> {
    // tch's reader, not the model loader: the fixture holds int64 token ids.
    Tensor::read_safetensors(fixture("lora_golden.safetensors")).unwrap().into_iter().collect()
}

fn scale(g: &HashMap<String, Tensor>) -> f64 {
    g["alpha"].double_value(&[]) / g["r"].double_value(&[])
}

/// One layer's updates and their trainable leaves (target, a, b).
type LayerLeaves = (usize, LayerLora, Vec<(LoraTarget, Tensor, Tensor)>);

/// The case's updates as trainable leaves, per layer.
fn updates(g: &HashMap<String, Tensor>, case: &str, layers: usize) -> Vec<LayerLeaves> {
    (0..layers)
        .filter_map(|l| {
            let mut lora = LayerLora::default();
            let mut leaves = Vec::new();
            for t in LoraTarget::ALL {
                let Some(a) = g.get(&format!("{case}.{l}.{}.a", t.name())) else { continue };
                let (a, b) = (a.copy().set_requires_grad(true), g[&format!("{case}.{l}.{}.b", t.name())].copy().set_requires_grad(true));
                lora.set(t, LoraUpdate { a: a.shallow_clone(), b: b.shallow_clone(), scale: scale(g) });
                leaves.push((t, a, b));
            }
            (!leaves.is_empty()).then_some((l, lora, leaves))
        })
        .collect()
}

fn check_grads(g: &HashMap<String, Tensor>, case: &str, ups: &[LayerLeaves]) {
    for (l, _, leaves) in ups {
        for (t, a, b) in leaves {
            assert_close(&a.grad(), &g[&format!("{case}.{l}.{}.grad_a", t.name())], 1e-5, &format!("{case} layer {l} {} grad A", t.name()));
            assert_close(&b.grad(), &g[&format!("{case}.{l}.{}.grad_b", t.name())], 1e-5, &format!("{case} layer {l} {} grad B", t.name()));
        }
    }
}

fn prompts<'a>(ups: &'a [LayerLeaves]) -> Prompts<'a> {
    ups.iter().fold(Prompts::none(), |p, (l, lora, _)| p.with_lora(*l, lora))
}

#[test]
fn vit_lora_matches_peft_with_gradients() {
    let g = golden();
    let (_vs, m) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    for case in ["vit_qv", "vit_all"] {
        let ups = updates(&g, case, 3);
        assert_eq!(ups.iter().map(|u| u.2.len()).sum::<usize>(), if case == "vit_qv" { 6 } else { 4 }, "{case}: fixture targets");
        let cls = m.forward(&g["vit.input"], &prompts(&ups)).unwrap().cls;
        assert_close(&cls, &g[&format!("{case}.cls")], 1e-5, &format!("{case} class token"));
        (&cls * &g[&format!("{case}.probe")]).sum(Kind::Float).backward();
        check_grads(&g, case, &ups);
    }
}

#[test]
fn bert_lora_matches_peft_with_gradients() {
    let g = golden();
    let (_vs, bert) = frozen_bert(&tiny_bert_cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let ups = updates(&g, "bert", 2);
    assert_eq!(ups.iter().map(|u| u.2.len()).sum::<usize>(), 8, "q, k, v, out on both layers");
    let hidden = bert.forward(&g["bert.input_ids"], Some(&g["bert.attention_mask"]), &prompts(&ups), &ForwardOptions::default()).unwrap().hidden;
    assert_close(&hidden, &g["bert.hidden"], 1e-5, "bert last hidden state");
    (&hidden * &g["bert.probe"]).sum(Kind::Float).backward();
    check_grads(&g, "bert", &ups);
}

/// A zero B (PEFT's and promptcl's initialisation) leaves the frozen model's
/// output bit for bit; gradients reach B (and, through B = 0, not A) and no
/// backbone weight.
#[test]
fn a_zero_initialised_update_is_exactly_the_frozen_model() {
    let g = golden();
    let (vs, m) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let x = &g["vit.input"];
    let frozen = m.forward(x, &Prompts::none()).unwrap().cls;
    let a = g["vit_all.1.q.a"].copy().set_requires_grad(true);
    let b = Tensor::zeros([64, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut lora = LayerLora::default();
    for t in LoraTarget::ALL {
        lora.set(t, LoraUpdate { a: a.shallow_clone(), b: b.shallow_clone(), scale: 2.0 });
    }
    let cls = m.forward(x, &Prompts::none().with_lora(1, &lora)).unwrap().cls;
    assert!(cls.equal(&frozen), "a zero B changed the output by {}", max_abs(&cls, &frozen));
    cls.sum(Kind::Float).backward();
    assert!(b.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "B learns");
    assert_eq!(a.grad().abs().sum(Kind::Float).double_value(&[]), 0.0, "A gets nothing through B = 0");
    assert!(vs.trainable_variables().iter().all(|w| !w.requires_grad()), "the backbone stays frozen");
}

/// Merging adds scale·B·A into the frozen weights: the plain forward then
/// computes what the unmerged update does, and unmerging gives the frozen model back.
#[test]
fn merged_and_unmerged_updates_agree() {
    let g = golden();
    let (_vs, mut vit) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let x = &g["vit.input"];
    let frozen = vit.forward(x, &Prompts::none()).unwrap().cls;
    let ups = updates(&g, "vit_all", 3);
    let unmerged = vit.forward(x, &prompts(&ups)).unwrap().cls;
    for (l, lora, _) in &ups {
        vit.merge_lora(*l, lora).unwrap();
    }
    assert_close(&vit.forward(x, &Prompts::none()).unwrap().cls, &unmerged, 1e-5, "ViT merged vs unmerged");
    for (l, lora, _) in &ups {
        vit.unmerge_lora(*l, lora).unwrap();
    }
    assert_close(&vit.forward(x, &Prompts::none()).unwrap().cls, &frozen, 1e-5, "ViT unmerged again vs frozen");

    let (_vs, mut bert) = frozen_bert(&tiny_bert_cfg(), Some(&fixture("bert_tiny_test.safetensors")), Device::Cpu).unwrap();
    let (ids, mask, opts) = (&g["bert.input_ids"], Some(&g["bert.attention_mask"]), ForwardOptions::default());
    let ups = updates(&g, "bert", 2);
    let unmerged = bert.forward(ids, mask, &prompts(&ups), &opts).unwrap().hidden;
    for (l, lora, _) in &ups {
        bert.merge_lora(*l, lora).unwrap();
    }
    assert_close(&bert.forward(ids, mask, &Prompts::none(), &opts).unwrap().hidden, &unmerged, 1e-5, "BERT merged vs unmerged");
}

/// Factors given per sample (`[B, r, in]`, `[B, out, r]`: task-specific
/// updates routed sample by sample) give each sample what its own update gives it alone.
#[test]
fn per_sample_updates_act_sample_by_sample() {
    let g = golden();
    let (_vs, m) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let x = &g["vit.input"];
    // Sample 0 takes block 0's q update, sample 1 block 2's, both on block 1.
    let own: Vec<(Tensor, Tensor)> = [0, 2].iter().map(|l| (g[&format!("vit_qv.{l}.q.a")].copy(), g[&format!("vit_qv.{l}.q.b")].copy())).collect();
    let mut joint = LayerLora::default();
    joint.set(LoraTarget::Q, LoraUpdate { a: Tensor::stack(&[&own[0].0, &own[1].0], 0), b: Tensor::stack(&[&own[0].1, &own[1].1], 0), scale: 2.0 });
    let cls = m.forward(x, &Prompts::none().with_lora(1, &joint)).unwrap().cls;
    for (i, (a, b)) in own.iter().enumerate() {
        let mut alone = LayerLora::default();
        alone.set(LoraTarget::Q, LoraUpdate { a: a.shallow_clone(), b: b.shallow_clone(), scale: 2.0 });
        let want = m.forward(&x.narrow(0, i as i64, 1), &Prompts::none().with_lora(1, &alone)).unwrap().cls;
        assert_close(&cls.narrow(0, i as i64, 1), &want, 1e-5, &format!("sample {i}"));
    }
    let mut vit = m;
    let err = vit.merge_lora(1, &joint).unwrap_err().to_string();
    assert!(err.contains("shared by the batch"), "{err}");
}

#[test]
fn misshapen_updates_are_named_errors() {
    let g = golden();
    let (_vs, m) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let zeros = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
    let mut lora = LayerLora::default();
    lora.set(LoraTarget::V, LoraUpdate { a: zeros(&[4, 32]), b: zeros(&[64, 4]), scale: 1.0 });
    let err = m.forward(&g["vit.input"], &Prompts::none().with_lora(2, &lora)).unwrap_err().to_string();
    assert!(err.contains("layer 2: LoRA `v` must be a [r, 64]"), "{err}");
    let mut lora = LayerLora::default();
    lora.set(LoraTarget::Out, LoraUpdate { a: zeros(&[3, 4, 64]), b: zeros(&[3, 64, 4]), scale: 1.0 });
    let err = m.forward(&g["vit.input"], &Prompts::none().with_lora(0, &lora)).unwrap_err().to_string();
    assert!(err.contains("LoRA `out`") && err.contains("[2 or 1"), "{err}");
    let err = m.forward(&g["vit.input"], &Prompts::none().with_lora(3, &lora)).unwrap_err().to_string();
    assert!(err.contains("layer 3"), "{err}");
}
