//! EASE's prototype completion and reweighted classifier against
//! `data-scripts/gen_ease_fixtures.py` (the official loops), and the
//! method's properties on the tiny ViT.

use promptcl_learner::drive::Held;
use promptcl_learner::methods::ease::{complete_prototypes, reweighted_logits, Layout};
use promptcl_learner::{registry, Inputs, OptimConfig, TaskInfo};
use tch::{Device, Kind, Tensor};

mod common;

fn golden() -> std::collections::HashMap<String, Tensor> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ease_golden.safetensors");
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// After each of four tasks (3, 2, 2, 2 classes), the completed prototypes
/// and the logits equal the official code's within 1e-6, with and without
/// the pretrained subspace, for both completion routines.
#[test]
fn completion_and_logits_match_the_official_loops() {
    let g = golden();
    let (means, test) = (&g["class_means"], &g["test"]);
    let sizes = [3usize, 2, 2, 2];
    for ptm in [false, true] {
        for all in [true, false] {
            let name = format!("{}.{}", if ptm { "ptm" } else { "adapters" }, if all { "reset" } else { "newest" });
            let layout = Layout::new(&sizes, ptm);
            let d = means.size()[2];
            let protos = Tensor::zeros([9, layout.blocks(3) as i64, d], (Kind::Float, Device::Cpu));
            // The features' block 0 is the pretrained one.
            let first = if ptm { 0 } else { 1 };
            for t in 0..4 {
                let (c, blocks) = (layout.classes(t), layout.blocks(t) as i64);
                let rows = |x: &Tensor| x.narrow(0, c.start as i64, c.len() as i64).narrow(1, 0, blocks);
                rows(&protos).copy_(&rows(&means.narrow(1, first, blocks)));
                complete_prototypes(&protos, &layout, t, all);
                let end = c.end as i64;
                let err = max_err(&protos.narrow(0, 0, end).narrow(1, 0, blocks), &g[&format!("{name}.protos.{t}")]);
                assert!(err < 1e-6, "{name}, task {t}: prototypes differ by {err}");
                let logits = reweighted_logits(&test.narrow(1, first, blocks), &protos, &layout, t, 0.1, 0.3);
                let err = max_err(&logits, &g[&format!("{name}.logits.{t}")]);
                assert!(err < 1e-6, "{name}, task {t}: logits differ by {err}");
            }
        }
    }
}

/// Task 1 trains its own adapters and head only (gradients reach nothing
/// else); the task-0 classes keep their real prototypes in subspace 0 and get
/// completed ones in subspace 1; bad parameters are config errors.
#[test]
fn each_task_trains_its_own_subspace_and_completes_the_old_classes() {
    let ctx = common::vit_ctx(2, 2, OptimConfig::default(), None);
    let mut m = registry::build("ease", &ctx, &toml::Table::new()).unwrap();
    tch::manual_seed(3);
    let images = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x = Inputs::Images(images.shallow_clone());
    let batch = || Inputs::Images(images.shallow_clone());
    let t0 = TaskInfo::new(0, 2, 0..2, 0..2);
    let t1 = TaskInfo::new(1, 2, 2..4, 0..4);
    m.end_task(&t0, &mut Held(vec![(batch(), Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1]))])).unwrap();
    let vars = m.vars().variables();
    let protos_before = vars["prototypes"].copy();

    let stages = m.stages(&t1, &OptimConfig::default());
    assert_eq!(stages.len(), 1);
    let step = m.train_step(&x, &Tensor::from_slice(&[2i64, 3, 2, 3, 2, 3]), &t1.in_stage(&stages[0])).unwrap();
    step.loss.backward();
    let mut reached: Vec<&String> = vars.iter().filter(|(_, v)| v.grad().defined()).map(|(k, _)| k).collect();
    reached.sort();
    assert!(!reached.is_empty());
    for name in &reached {
        assert!(name.starts_with("subspace.1.") || name.starts_with("proxy.1."), "{name} got a gradient at task 1");
        assert!(stages[0].lr_scale(name).is_some(), "{name} has a gradient but the stage does not train it");
    }
    assert!(reached.iter().any(|n| n.as_str() == "subspace.1.adapter.0.up.weight"));
    for name in vars.keys().filter(|n| n.starts_with("subspace.0.") || n.starts_with("proxy.0.")) {
        assert!(stages[0].lr_scale(name).is_none(), "task 1 trains {name}");
    }

    m.end_task(&t1, &mut Held(vec![(batch(), Tensor::from_slice(&[2i64, 3, 2, 3, 2, 3]))])).unwrap();
    let protos = &vars["prototypes"];
    let old = |p: &Tensor, block: i64| p.narrow(0, 0, 2).select(1, block);
    assert_eq!(max_err(&old(protos, 0), &old(&protos_before, 0)), 0.0, "a real prototype changed");
    assert_eq!(old(&protos_before, 1).abs().max().double_value(&[]), 0.0);
    assert!(old(protos, 1).abs().max().double_value(&[]) > 0.0, "no completed prototype in subspace 1");
    let logits = tch::no_grad(|| m.predict(&x, 4)).unwrap().logits;
    assert_eq!(logits.size(), [6, 4]);
    assert!(logits.isfinite().all().int64_value(&[]) == 1);

    for (key, value) in [("ffn_num", toml::Value::Integer(0)), ("alpha", toml::Value::Float(-1.0)), ("adapter_dropout", toml::Value::Float(1.0))] {
        let params: toml::Table = [(key.to_string(), value)].into_iter().collect();
        let entry = registry::METHODS.iter().find(|e| e.name == "ease").unwrap();
        let err = (entry.check)(&params).unwrap_err().to_string();
        assert!(err.contains("ease"), "{key}: {err}");
    }
}
