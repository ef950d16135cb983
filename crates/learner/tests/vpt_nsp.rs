//! VPT-NSP against `data-scripts/gen_vptnsp_fixtures.py` (the official
//! prompted block, statistics, threshold, projection and `mod_adam.py` step
//! on the tiny ViT), and the property the method rests on: from the second
//! task, the prompts move only within the null space of earlier tasks'
//! statistics.

use promptcl_learner::drive::Held;
use promptcl_learner::optim::Optimizer;
use promptcl_learner::parts::null_space::{adaptive_threshold, null_projection, FrozenAttention};
use promptcl_learner::{registry, Encoder, Inputs, OptimConfig, StageOptim, TaskInfo, UpdateProjection};
use promptcl_model::{ForwardOptions, Prompts};
use tch::{nn, Device, Kind, Tensor};

mod common;

/// Prompts as prefixes through the frozen norm1/qkv give the official
/// appended-token block's class token and prompt gradients (1e-5); the
/// statistics of the batch match too, and so do the projections built from
/// them (f64, 1e-8).
#[test]
fn prompts_statistics_and_projections_match_the_official_code() {
    let g = common::golden("vptnsp_golden.safetensors");
    let ctx = common::vit_ctx(2, 2, OptimConfig::default(), None);
    let Encoder::Vit(vit) = &ctx.backbone.encoder else { unreachable!() };
    let attn: Vec<FrozenAttention> = (0..3).map(|i| FrozenAttention::of(&ctx.backbone, i).unwrap()).collect();
    let prompts: Vec<Tensor> = (0..3).map(|i| g[&format!("prompt.{i}")].copy().set_requires_grad(true)).collect();
    let prefixes: Vec<(Tensor, Tensor)> = attn.iter().zip(&prompts).map(|(a, p)| a.prefix(p)).collect();
    let mut with = Prompts::none();
    for (i, (k, v)) in prefixes.iter().enumerate() {
        with = with.with_prefix(i, k, v);
    }
    let out = vit.forward_with(&g["images"], &with, &ForwardOptions { return_block_inputs: true, ..Default::default() }).unwrap();
    assert!(common::rel_err(&out.cls, &g["cls"]) < 1e-5, "class token: {}", common::rel_err(&out.cls, &g["cls"]));
    (&out.cls * &g["probe"]).sum(Kind::Float).backward();
    for (i, p) in prompts.iter().enumerate() {
        let err = common::rel_err(&p.grad(), &g[&format!("grad.{i}")]);
        assert!(err < 1e-5, "layer {i} prompt gradient: {err}");
    }
    for (i, a) in attn.iter().enumerate() {
        let (m1, m2) = tch::no_grad(|| a.feature_matrices(&out.block_inputs[i], &prompts[i]));
        for (name, m) in [("m1", &m1), ("m2", &m2)] {
            let err = common::rel_err(m, &g[&format!("{name}.{i}")]);
            assert!(err < 1e-5, "layer {i} {name}: {err}");
            let err = common::rel_err(&null_projection(&g[&format!("{name}.{i}")], 0.97), &g[&format!("proj.{name}.{i}")]);
            assert!(err < 1e-8, "layer {i} projection of {name}: {err}");
        }
    }
    let spectrum: Vec<f64> = Vec::try_from(&g["spectrum"]).unwrap();
    assert_eq!(adaptive_threshold(&spectrum) as i64, g["spectrum.start"].int64_value(&[0]), "the smoothed elbow");
}

/// Two Adam steps with the update projected as `P₂ · Δ · P₁` equal
/// `mod_adam.py`'s (coupled weight decay included).
#[test]
fn projected_adam_steps_match_mod_adam() {
    let g = common::golden("vptnsp_golden.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root().var_copy("prompt", &g["adam.p0"]);
    let mut opt = Optimizer::new(&vs, &StageOptim::adam(0.01).weight_decay(5e-5), &|_| Some(1.0));
    let projection =
        || UpdateProjection { name: "prompt".into(), left: g["proj.m2.0"].to_kind(Kind::Float), right: g["proj.m1.0"].to_kind(Kind::Float) };
    opt.project(vec![projection()]).unwrap();
    for grad in ["adam.g1", "adam.g2"] {
        opt.zero_grad();
        (&p * &g[grad]).sum(Kind::Float).backward();
        opt.step();
    }
    let err = common::rel_err(&p, &g["adam.p2"]);
    assert!(err < 1e-6, "{err}");
    let wrong = UpdateProjection { name: "prompt".into(), left: g["proj.m1.0"].shallow_clone(), right: g["proj.m1.0"].shallow_clone() };
    assert!(opt.project(vec![wrong]).unwrap_err().to_string().contains("do not fit"));
    let missing = UpdateProjection { name: "head".into(), ..projection() };
    assert!(opt.project(vec![missing]).unwrap_err().to_string().contains("does not train"));
}

/// With η = 1 the projection keeps only the null space: a task-1 step moves
/// every layer's prompts by Δ with Δ·V₁ᵀ = 0 for the leading right singular
/// vectors V₁ of M₁ and U₂ᵀ·Δ = 0 for those of M₂ (to float precision). Task
/// 0 is not projected, the last task adds no statistics, and bad parameters
/// are config errors.
#[test]
fn later_tasks_move_the_prompts_only_in_the_null_space() {
    let ctx = common::vit_ctx(3, 2, OptimConfig::default(), None);
    let params: toml::Table = toml::from_str("eta = 1.0\nlength = 4").unwrap();
    let mut m = registry::build("vpt-nsp", &ctx, &params).unwrap();
    tch::manual_seed(4);
    let images = Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu));
    let batch = || Inputs::Images(images.shallow_clone());
    let t0 = TaskInfo::new(0, 3, 0..2, 0..2);
    assert!(m.update_projections(&t0).is_empty());
    m.end_task(&t0, &mut Held(vec![(batch(), Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1]))])).unwrap();

    let t1 = TaskInfo::new(1, 3, 2..4, 0..4);
    // A large rate, so that a prompt's change (values near 1) is far above f32's resolution.
    let optim: OptimConfig = toml::from_str("kind = \"adam\"\nlr = 0.5\nscale_lr_by_batch = false").unwrap();
    let stage = m.stages(&t1, &optim).remove(0);
    let mut opt = stage.optimizer(m.vars());
    let projections = m.update_projections(&t1);
    assert_eq!(projections.len(), 3);
    opt.project(projections).unwrap();
    let vars = m.vars().variables();
    let before: Vec<Tensor> = (0..3).map(|b| vars[&format!("prompt.{b}")].copy()).collect();
    let step = m.train_step(&batch(), &Tensor::from_slice(&[2i64, 3, 2, 3, 2, 3]), &t1.in_stage(&stage)).unwrap();
    opt.zero_grad();
    step.loss.backward();
    opt.step();
    for (b, before) in before.iter().enumerate() {
        let delta = (&vars[&format!("prompt.{b}")] - before).to_kind(Kind::Double);
        assert!(delta.abs().max().double_value(&[]) > 0.0, "layer {b} did not move");
        let leading = |name: &str| {
            let mat = &vars[&format!("null.{b}.{name}")];
            let (_, s, v) = mat.svd(true, true);
            let start = adaptive_threshold(&Vec::<f64>::try_from(&s).unwrap()) as i64;
            v.narrow(1, 0, start)
        };
        let (v1, u2) = (leading("m1"), leading("m2"));
        // Adam's first step moves each entry by about lr before the projection; the
        // gradient lives mostly in the range, so measure against that, not the small projected step.
        let scale = stage.lr_at(0, 0, 1);
        let right = delta.matmul(&v1).abs().max().double_value(&[]) / scale;
        let left = u2.tr().matmul(&delta).abs().max().double_value(&[]) / scale;
        assert!(right < 1e-5 && left < 1e-5, "layer {b}: the update leaves the null space ({right:.2e}, {left:.2e})");
    }

    let last = TaskInfo::new(2, 3, 4..6, 0..6);
    let m1 = vars["null.0.m1"].copy();
    m.end_task(&last, &mut Held(vec![(batch(), Tensor::from_slice(&[4i64, 5, 4, 5, 4, 5]))])).unwrap();
    assert_eq!(common::rel_err(&vars["null.0.m1"], &m1), 0.0, "the last task's statistics are never used");
    let logits = tch::no_grad(|| m.predict(&batch(), 6)).unwrap().logits;
    assert_eq!(logits.size(), [6, 6]);

    let entry = registry::METHODS.iter().find(|e| e.name == "vpt-nsp").unwrap();
    for bad in ["eta = 1.5", "length = 2", "temperature = 0.0"] {
        let err = (entry.check)(&toml::from_str(bad).unwrap()).unwrap_err().to_string();
        assert!(err.contains("vpt-nsp"), "{bad}: {err}");
    }
    let err = registry::build("vpt-nsp", &ctx, &toml::from_str("layers = [7]").unwrap()).err().unwrap().to_string();
    assert!(err.contains("layer 7 is beyond"), "{err}");
}
