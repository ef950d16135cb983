//! The prompt parameterisations of issue #18 against
//! `data-scripts/gen_prompt_param_fixtures.py` (official ReparamPrefix
//! `PrefixTransformer`, its KV_ONLY path, and the zero-init paper's
//! hypermodel prompts with gated attention, in the tiny ViT): class token and
//! every trainable tensor's gradient within 1e-5. Then the properties the
//! continual methods rest on: a sealed task's prefixes do not move when a
//! shared generator trains on; a per-task generator trains only in its task.

use promptcl_learner::parts::gate::PrefixGate;
use promptcl_learner::parts::prompt_param::{Generator, PrefixExpert, PromptParam};
use promptcl_learner::parts::task_prompts::{prefix_prompts, LayerGates, PromptSetConfig, TaskPrompts};
use promptcl_learner::{Inputs, OptimConfig};
use promptcl_model::{Prompts, ZeroInitGate};
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

mod common;

fn set(expert: PrefixExpert) -> PromptSetConfig {
    PromptSetConfig { prompt_name: "p", key_name: Some("k"), layers: vec![0, 2], length: 3, pool_size: 1, top_k: 1, seed_tag: 9, expert }
}

#[test]
fn parameterisations_match_their_official_code() {
    let g = common::golden("prompt_param_golden.safetensors");
    let ctx = common::vit_ctx(2, 2, OptimConfig::default(), None);
    let x = Inputs::Images(g["input"].shallow_clone());
    let cases = [
        ("reparam_mlp", PrefixExpert { param: PromptParam::ReparamMlp, ..Default::default() }),
        ("reparam_linear", PrefixExpert { param: PromptParam::ReparamLinear, ..Default::default() }),
        ("frozen_projection", PrefixExpert { param: PromptParam::FrozenProjection, ..Default::default() }),
        (
            "nonlinear",
            PrefixExpert {
                param: PromptParam::Nonlinear,
                nonlinear_embed: 8,
                nonlinear_hidden: 6,
                gate: Some(PrefixGate::ZeroInit),
                ..Default::default()
            },
        ),
    ];
    for (case, expert) in cases {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut prompts = TaskPrompts::new(&vs.root(), &ctx, set(expert)).unwrap();
        prompts.begin_task(0, false);
        // The fixture's values into the store, by promptcl's names.
        let vars = vs.variables();
        let mut loaded = 0;
        for (name, t) in &vars {
            if let Some(v) = g.get(&format!("{case}.{name}")) {
                tch::no_grad(|| t.shallow_clone().copy_(v));
                loaded += 1;
            }
        }
        let gate = g.get(&format!("{case}.zero_gate.0")).map(|t| t.copy().set_requires_grad(true));
        let want = g.keys().filter(|k| k.starts_with(&format!("{case}.grad."))).count() - gate.is_some() as usize;
        assert_eq!(loaded, want, "{case}: every official tensor has its promptcl variable");
        let zero: Vec<ZeroInitGate> = gate.iter().flat_map(|t| (0..2).map(|i| ZeroInitGate::PerHead(t.get(i)))).collect();
        let gates = if zero.is_empty() { LayerGates::None } else { LayerGates::ZeroInit(&zero) };
        let e = prompts.pool(0).unsqueeze(0).select(1, 0);
        let cls = ctx.backbone.forward(&x, &prefix_prompts(Prompts::none(), prompts.layers(), &e, gates)).unwrap().feature;
        let err = common::rel_err(&cls, &g[&format!("{case}.cls")]);
        assert!(err < 1e-5, "{case} class token: {err}");
        (&cls * &g["probe"]).sum(Kind::Float).backward();
        common::assert_grads_match(&vars, &g, |name| format!("{case}.grad.{name}"), case);
        if let Some(gate) = &gate {
            let err = common::rel_err(&gate.grad(), &g[&format!("{case}.grad.zero_gate.0")]);
            assert!(err < 1e-5, "{case} gradient of the gate: {err}");
        }
    }
}

/// A shared generator keeps training after task 1; task 1's prefixes, sealed
/// at its end, stay bit-identical (and task 2's are generated, so they move).
/// A per-task generator trains only in its task and starts as a copy.
#[test]
fn sealed_prefixes_survive_a_shared_generator_and_per_task_generators_stay_apart() {
    let ctx = common::vit_ctx(3, 2, OptimConfig::default(), None);
    let x = Inputs::Images(Tensor::randn([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu)));
    for generator in [Generator::Shared, Generator::PerTask] {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let expert = PrefixExpert { param: PromptParam::ReparamMlp, generator, ..Default::default() };
        let mut prompts = TaskPrompts::new(&vs.root(), &ctx, set(expert)).unwrap();
        let mut opt = nn::Sgd::default().build(&vs, 0.5).unwrap();
        let mut train = |prompts: &TaskPrompts, t: usize| {
            for _ in 0..2 {
                let e = prompts.pool(t).unsqueeze(0).select(1, 0);
                let f = ctx.backbone.forward(&x, &prefix_prompts(Prompts::none(), prompts.layers(), &e, LayerGates::None)).unwrap().feature;
                opt.zero_grad();
                f.square().sum(Kind::Float).backward();
                opt.step();
            }
        };
        prompts.begin_task(0, true);
        train(&prompts, 0);
        prompts.seal(0, 0.0);
        let first = prompts.pool(0).copy();
        let generators = |vs: &nn::VarStore| -> Vec<(String, Tensor)> {
            let mut v: Vec<_> = vs.variables().into_iter().filter(|(n, _)| n.starts_with("p_gen.")).map(|(n, t)| (n, t.copy())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let before = generators(&vs);
        prompts.begin_task(1, true);
        if generator == Generator::PerTask {
            let g = generators(&vs);
            let of = |g: &[(String, Tensor)], t: usize| -> Vec<Tensor> {
                g.iter().filter(|(n, _)| n.starts_with(&format!("p_gen.{t}."))).map(|(_, v)| v.copy()).collect()
            };
            assert!(of(&g, 0).iter().zip(of(&g, 1)).all(|(a, b)| a.equal(&b)), "task 2's generator starts as task 1's");
        }
        let generated = prompts.pool(1).copy();
        train(&prompts, 1);
        assert!(prompts.pool(0).equal(&first), "{generator:?}: a sealed task's prefixes moved");
        assert!(!prompts.pool(1).equal(&generated), "{generator:?}: the current task's prefixes train");
        let after = generators(&vs);
        let moved: Vec<&str> = before.iter().zip(&after).filter(|(a, b)| !a.1.equal(&b.1)).map(|(a, _)| a.0.as_str()).collect();
        match generator {
            Generator::Shared => assert!(!moved.is_empty(), "the shared generator trains on"),
            Generator::PerTask => assert!(moved.iter().all(|n| n.starts_with("p_gen.1.")) && !moved.is_empty(), "moved: {moved:?}"),
        }
    }
}
