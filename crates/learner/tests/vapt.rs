//! VAPT's adaptive prompts ([`promptcl_learner::parts::adaptive_prompt`])
//! against `data-scripts/gen_vapt_fixtures.py` (the official
//! `PromptedTransformerAdaptive` in the tiny ViT): class token and every
//! tensor's gradient. Then: at initialisation the adaptive tokens are
//! exactly zero (the projection is), the prompts depend on the input where
//! static ones do not, per-sample routing gives each sample its task's
//! expert, and a finished task's expert does not move.

use promptcl_learner::parts::adaptive_prompt::{AdaptivePrompts, AdaptiveShape};
use promptcl_learner::parts::Route;
use promptcl_learner::{Inputs, OptimConfig};
use promptcl_model::{Prompts, TokenGenerator};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

mod common;

const SHAPE: AdaptiveShape = AdaptiveShape { kernel: 2, padding: 0, hidden: 5, conv_dropout: 0.1, mlp_dropout: 0.1 };

fn forward(ctx: &promptcl_learner::MethodContext, set: &AdaptivePrompts, x: &Inputs, route: Route, train: bool) -> Tensor {
    let first = set.first_tokens(route);
    let gens = set.generators(route, train);
    let mut p = Prompts::none().with_tokens(set.layers()[0], &first);
    for (l, g) in &gens {
        p = p.with_token_generator(*l, g as &dyn TokenGenerator);
    }
    ctx.backbone.forward(x, &p).unwrap().feature
}

#[test]
fn adaptive_prompts_match_the_official_code() {
    let g = common::golden("vapt_golden.safetensors");
    let ctx = common::vit_ctx(2, 2, OptimConfig::default(), None);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut set = AdaptivePrompts::new(&vs.root(), &ctx, &[0, 1, 2], 3, SHAPE, 1).unwrap();
    set.begin_task(0, false);
    let vars = vs.variables();
    let mut loaded = 0;
    for (name, t) in &vars {
        if let Some(v) = g.get(name) {
            tch::no_grad(|| t.shallow_clone().copy_(v));
            loaded += 1;
        }
    }
    assert_eq!(loaded, g.keys().filter(|k| k.starts_with("grad.")).count(), "every official tensor has its promptcl variable");
    let x = Inputs::Images(g["input"].shallow_clone());
    let cls = forward(&ctx, &set, &x, Route::Task(0), false);
    let err = common::rel_err(&cls, &g["cls"]);
    assert!(err < 1e-5, "class token: {err}");
    (&cls * &g["probe"]).sum(Kind::Float).backward();
    common::assert_grads_match(&vars, &g, |name| format!("grad.{name}"), "VAPT");
}

#[test]
fn adaptive_prompts_start_at_zero_follow_the_input_route_per_sample_and_keep_finished_experts() {
    let ctx = common::vit_ctx(3, 2, OptimConfig::default(), None);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut set = AdaptivePrompts::new(&vs.root(), &ctx, &[0, 1, 2], 3, SHAPE, 1).unwrap();
    let images = |seed: i64| {
        tch::manual_seed(seed);
        Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu))
    };
    // The tokens a block gets for the input entering it.
    let tokens = |set: &AdaptivePrompts, t: usize, seed: i64| {
        let x = images(seed);
        let seq = Tensor::randn([2, 17, 64], (Kind::Float, Device::Cpu)) + x.mean(Kind::Float);
        set.generators(Route::Task(t), false)[0].1.tokens(&seq, (4, 4)).unwrap()
    };
    set.begin_task(0, false);
    assert_eq!(tokens(&set, 0, 1).abs().max().double_value(&[]), 0.0, "a zero projection: adaptive tokens start at 0");

    // Train task 0, then task 1 (copied forward); task 0's expert stays.
    let mut opt = nn::Adam::default().build(&vs, 0.05).unwrap();
    let mut train = |set: &AdaptivePrompts, t: usize| {
        for s in 0..3 {
            let f = forward(&ctx, set, &Inputs::Images(images(s)), Route::Task(t), true);
            opt.zero_grad();
            f.square().sum(Kind::Float).backward();
            opt.step();
        }
    };
    train(&set, 0);
    let snapshot = |vs: &nn::VarStore, t: usize| -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = vs.variables().into_iter().filter(|(n, _)| n.starts_with(&format!("vapt.{t}."))).map(|(n, t)| (n, t.copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let task0 = snapshot(&vs, 0);
    assert!(tokens(&set, 0, 1).abs().max().double_value(&[]) > 0.0, "trained adaptive tokens are not zero");
    assert!(!tokens(&set, 0, 1).equal(&tokens(&set, 0, 2)), "an adaptive prompt depends on the input");
    assert!(set.first_tokens(Route::Task(0)).equal(&set.first_tokens(Route::Task(0))), "the static first-block prompt is a parameter");
    set.begin_task(1, true);
    let task1 = snapshot(&vs, 1);
    assert!(task0.iter().zip(&task1).all(|(a, b)| a.1.equal(&b.1)), "task 1 starts as task 0");
    train(&set, 1);
    assert!(snapshot(&vs, 0).iter().zip(&task0).all(|(a, b)| a.1.equal(&b.1)), "task 0's expert moved");
    assert!(snapshot(&vs, 1).iter().zip(&task1).any(|(a, b)| !a.1.equal(&b.1)), "task 1's expert trained");

    // Per-sample routing = each sample under its own task's expert.
    let x = Inputs::Images(images(9));
    let ids = Tensor::from_slice(&[1i64, 0]);
    let both = forward(&ctx, &set, &x, Route::Samples(&ids), false);
    for (i, t) in [(0i64, 1usize), (1, 0)] {
        let alone = forward(&ctx, &set, &x, Route::Task(t), false);
        assert!((both.get(i) - alone.get(i)).abs().max().double_value(&[]) < 1e-5, "sample {i} (task {t})");
    }

    // A grid the experts were not made for is an error, not a panic.
    let err = set.generators(Route::Task(0), false)[0].1.tokens(&Tensor::zeros([2, 26, 64], (Kind::Float, Device::Cpu)), (5, 5)).unwrap_err();
    assert!(err.to_string().contains("4×4 patch grid"), "{err}");
}
