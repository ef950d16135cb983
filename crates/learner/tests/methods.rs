//! The properties that make each method what it is, on the tiny timm-fixture ViT.

use promptcl_learner::drive::Held;
use promptcl_learner::{drive, registry, BatchSource, ContinualMethod, Inputs, MethodContext, OptimConfig, TaskInfo};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

const TASKS: usize = 5;
const PER_TASK: usize = 2;

mod common;

fn ctx() -> MethodContext {
    common::vit_ctx(TASKS, PER_TASK, OptimConfig::default(), None)
}

fn build(name: &str, params: &str) -> Box<dyn ContinualMethod> {
    registry::build(name, &ctx(), &toml::from_str(params).unwrap()).unwrap()
}

fn build_err(name: &str, params: &str) -> String {
    registry::build(name, &ctx(), &toml::from_str(params).unwrap()).err().expect("a build error").to_string()
}

fn task(t: usize) -> TaskInfo {
    TaskInfo::new(t, TASKS, t * PER_TASK..(t + 1) * PER_TASK, 0..(t + 1) * PER_TASK)
}

fn images(seed: i64) -> Inputs {
    tch::manual_seed(seed);
    Inputs::Images(Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)))
}

fn labels(t: usize) -> Tensor {
    let l = (t * PER_TASK) as i64;
    Tensor::from_slice(&[l, l + 1, l, l + 1])
}

fn var(m: &dyn ContinualMethod, name: &str) -> Tensor {
    m.vars().variables().get(name).unwrap_or_else(|| panic!("no variable {name}")).shallow_clone()
}

fn has_grad(t: &Tensor) -> bool {
    t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0
}

/// A few Adam steps on task `t`, as the harness does (fresh optimizer per task).
fn train(m: &mut dyn ContinualMethod, t: usize, steps: usize) {
    let info = task(t);
    m.begin_task(&info).unwrap();
    let mut opt = nn::Adam::default().build(m.vars(), 0.01).unwrap();
    for s in 0..steps {
        let loss = m.train_step(&images(s as i64), &labels(t), &info).unwrap().loss;
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
}

fn snapshot(m: &dyn ContinualMethod, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = m.vars().variables().into_iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, t)| (k, t.copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn dualprompt_trains_only_the_current_e_prompt_and_keeps_old_ones() {
    let mut m = build("dualprompt", "g_layers = [0]\ne_layers = [1, 2]\ne_length = 3");
    train(&mut *m, 0, 3);
    let old = snapshot(&*m, "e_prompt.0").into_iter().chain(snapshot(&*m, "e_key.0")).collect::<Vec<_>>();
    let info = task(1);
    m.begin_task(&info).unwrap();
    // As the harness: a fresh optimizer per task, gradients cleared before backward.
    let mut opt = nn::Adam::default().build(m.vars(), 0.01).unwrap();
    opt.zero_grad();
    let loss = m.train_step(&images(9), &labels(1), &info).unwrap().loss;
    loss.backward();
    assert!(has_grad(&var(&*m, "e_prompt.1")) && has_grad(&var(&*m, "e_key.1")));
    assert!(has_grad(&var(&*m, "g_prompt")) && has_grad(&var(&*m, "head.weight")));
    for name in ["e_prompt.0", "e_key.0", "e_prompt.2", "e_key.2"] {
        assert!(!has_grad(&var(&*m, name)), "{name} got a gradient");
    }
    train(&mut *m, 1, 3);
    for (name, before) in old {
        assert!(before.equal(&var(&*m, &name)), "{name} changed after a later task");
    }
}

#[test]
fn dualprompt_key_matching_routes_to_the_matching_task() {
    let m = build("dualprompt", "g_layers = [0]\ne_layers = [1, 2]");
    let x = images(3);
    let q = ctx().backbone.query(&x).unwrap();
    // Give task 2's key the query of sample 0, task 4's that of sample 1.
    tch::no_grad(|| {
        var(&*m, "e_key.2").copy_(&q.get(0));
        var(&*m, "e_key.4").copy_(&q.get(1));
    });
    let pred = m.predict(&x, TASKS * PER_TASK).unwrap();
    let ids: Vec<i64> = pred.task_ids.unwrap().try_into().unwrap();
    assert_eq!((ids[0], ids[1]), (2, 4));
    // Only tasks seen so far are candidates.
    let pred = m.predict(&x, 2 * PER_TASK).unwrap();
    let ids: Vec<i64> = pred.task_ids.unwrap().try_into().unwrap();
    assert!(ids.iter().all(|&i| i < 2), "{ids:?}");
}

#[test]
fn l2p_selects_the_nearest_keys_batchwise() {
    use promptcl_learner::methods::l2p::{Params, L2P};
    let l2p = L2P::new(&ctx(), Params { pool_size: 6, top_k: 2, length: 3, ..Default::default() }).unwrap();
    let q = ctx().backbone.query(&images(4)).unwrap();
    let mean_q = q.mean_dim(0, false, Kind::Float);
    tch::no_grad(|| {
        let mut keys = var(&l2p, "prompt_key");
        keys.copy_(&(-mean_q.unsqueeze(0).expand([6, 64], false)));
        keys.get(3).copy_(&mean_q);
        keys.get(5).copy_(&(&mean_q * 0.5 + q.get(0) * 0.5));
    });
    let (idx, sim) = l2p.select(&q);
    assert_eq!(idx.size(), [4, 2], "batchwise: every sample uses the batch's top prompts");
    for b in 0..4 {
        let mut ids: Vec<i64> = idx.get(b).try_into().unwrap();
        ids.sort();
        assert_eq!(ids, [3, 5]);
    }
    assert!(sim.double_value(&[]) > 0.5);
}

#[test]
fn coda_components_of_finished_tasks_are_frozen_and_new_ones_orthogonal() {
    let mut m = build("coda-prompt", "pool_size = 10\nlength = 4\nlayers = [0, 1]");
    train(&mut *m, 0, 3);
    let old = snapshot(&*m, "e.");
    let old0: Vec<_> = old.into_iter().filter(|(k, _)| k.ends_with(".0")).collect();
    assert_eq!(old0.len(), 5, "task 0's components (every layer) and its k, a in layers 0 and 1");
    train(&mut *m, 1, 3);
    for (name, before) in &old0 {
        assert!(before.equal(&var(&*m, name)), "{name} changed after task 1");
    }
    // Task 1's components start orthogonal to task 0's. (The official
    // Gram–Schmidt projects against earlier rows as they are, so this is exact
    // when those rows are still orthonormal, as here, and approximate once
    // training has moved them.)
    let mut fresh = build("coda-prompt", "pool_size = 10\nlength = 4\nlayers = [0, 1]");
    fresh.begin_task(&task(0)).unwrap();
    fresh.begin_task(&task(1)).unwrap();
    let (k0, k1) = (var(&*fresh, "e.0.k.0"), var(&*fresh, "e.0.k.1"));
    let cross = k1.matmul(&k0.tr()).abs().max().double_value(&[]);
    assert!(cross < 1e-4, "task-1 keys not orthogonal to task-0 keys: {cross}");
    let gram = k1.matmul(&k1.tr()) - Tensor::eye(2, (Kind::Float, Device::Cpu));
    assert!(gram.abs().max().double_value(&[]) < 1e-5);
}

/// CODA's `ortho_penalty` on K, A and P of every prompted layer, each
/// weighted by `ortho_mu` (official `zoo.py`), over the components seen so far.
#[test]
fn coda_orthogonality_penalty_weighs_k_a_and_p_by_ortho_mu() {
    let loss = |mu: f64| {
        let mut m = build("coda-prompt", &format!("pool_size = 10\nlength = 4\nlayers = [0, 1]\northo_mu = {mu}"));
        m.begin_task(&task(1)).unwrap();
        let step = m.train_step(&images(3), &labels(1), &task(1)).unwrap();
        (step.loss.double_value(&[]), m)
    };
    let (plain, _) = loss(0.0);
    let (with, m) = loss(0.5);
    let pen = |t: &Tensor| {
        let t = t.flatten(1, -1);
        (t.matmul(&t.tr()) - Tensor::eye(t.size()[0], (Kind::Float, Device::Cpu))).square().mean(Kind::Float).double_value(&[])
    };
    let want: f64 = [0, 1]
        .iter()
        .flat_map(|l| {
            let p = |t: usize| var(&*m, &format!("e.p.{t}")).select(1, *l);
            let [k, a] = ["k", "a"].map(|w| Tensor::cat(&[var(&*m, &format!("e.{l}.{w}.0")), var(&*m, &format!("e.{l}.{w}.1"))], 0));
            [k, a, Tensor::cat(&[p(0), p(1)], 0)]
        })
        .map(|t| 0.5 * pen(&t))
        .sum();
    assert!(want > 0.1, "the components are not orthonormal, so the penalty is not small: {want}");
    assert!(((with - plain) - want).abs() < 1e-4 * want, "{} vs {want}", with - plain);
}

#[test]
fn predictions_cover_exactly_the_seen_classes() {
    let params = [
        ("finetune-head", ""),
        ("finetune-full", ""),
        ("joint", ""),
        ("simplecil", ""),
        ("aper", "ffn_num = 8"),
        ("ease", "ffn_num = 8"),
        ("ranpac", "ffn_num = 8\nprojection = 16"),
        ("fecam", ""),
        ("fecam-pilot", "ffn_num = 8"),
        ("slca", "samples_per_class = 4"),
        ("l2p", "pool_size = 6\ntop_k = 2\nlength = 3"),
        ("dualprompt", "g_layers = [0]\ne_layers = [1, 2]"),
        ("coda-prompt", "pool_size = 10\nlength = 4\nlayers = [0]"),
        ("hide-prompt", HIDE),
        ("norga", HIDE),
        ("hide-lora", "n_centroids = 2\nlora = { layers = [0, 2] }\ntii_lora = { layers = [1] }"),
        ("wave-cre", "layers = [0, 1]\npool_size = 3\ntop_k = 2"),
        ("epi", "layers = [0, 1, 2]\nlength = 2"),
        ("vpt-nsp", "length = 3"),
    ];
    assert_eq!(params.len(), registry::METHODS.len(), "a new method needs a line here");
    for (name, p) in params {
        let m = build(name, p);
        for seen in [2, 6] {
            let pred = tch::no_grad(|| m.predict(&images(1), seen)).unwrap();
            assert_eq!(pred.logits.size(), [4, seen as i64], "{name}");
        }
    }
}

#[test]
fn training_scores_only_the_current_task_when_masked() {
    // With the task mask, the gradient on head rows of other classes is zero.
    let mut m = build("l2p", "pool_size = 6\ntop_k = 2\nlength = 3");
    let info = task(2);
    m.begin_task(&info).unwrap();
    m.train_step(&images(2), &labels(2), &info).unwrap().loss.backward();
    let g = var(&*m, "head.weight").grad();
    for class in 0..TASKS * PER_TASK {
        let norm = g.get(class as i64).abs().sum(Kind::Float).double_value(&[]);
        assert_eq!(norm > 0.0, info.classes.contains(&class), "class {class}");
    }
}

#[test]
fn finetune_full_trains_its_own_backbone_copy_only() {
    let c = ctx();
    let frozen_before: Vec<_> = c.backbone.vars.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
    let mut m = build("finetune-full", "");
    train(&mut *m, 0, 2);
    assert!(!var(&*m, "backbone.blocks.0.attn.qkv.weight").equal(&c.backbone.vars.variables()["blocks.0.attn.qkv.weight"]));
    for (k, v) in frozen_before {
        assert!(v.equal(&c.backbone.vars.variables()[&k]), "shared backbone {k} changed");
    }
}

#[test]
fn prototypes_are_class_means_of_frozen_features() {
    let c = ctx();
    // The older name still builds the same method.
    let mut m = build("prototype", "");
    assert!(m.stages(&task(0), &OptimConfig::default()).is_empty(), "SimpleCIL does not train");
    let (x1, x2) = (images(11), images(12));
    let y1 = Tensor::from_slice(&[0i64, 1, 0, 1]);
    let y2 = Tensor::from_slice(&[1i64, 1, 0, 0]);
    let f = Tensor::cat(&[c.backbone.query(&x1).unwrap(), c.backbone.query(&x2).unwrap()], 0);
    m.end_task(&task(0), &mut Held(vec![(x1, y1.shallow_clone()), (x2, y2.shallow_clone())])).unwrap();
    let y = Tensor::cat(&[y1, y2], 0);
    let sums = var(&*m, "proto_sums");
    for class in 0..2i64 {
        let mask = y.eq(class);
        let mean = f.index_select(0, &mask.nonzero().squeeze_dim(1)).mean_dim(0, false, Kind::Float);
        let counts = var(&*m, "proto_counts").get(class).double_value(&[]);
        let proto = sums.get(class) / counts;
        assert!((proto - mean).abs().max().double_value(&[]) < 1e-5);
    }
}

const HIDE: &str = "layers = [0, 1]\nlength = 2\ntii_epochs = 1\ntii_align_epochs = 2\nalign_epochs = 2\nstatistics = \"covariance\"";

/// A data source that counts how often it is read.
struct Counting(Vec<(Inputs, Tensor)>, usize);

impl BatchSource for Counting {
    fn for_each(&mut self, f: &mut dyn FnMut(&Inputs, &Tensor) -> promptcl_learner::Result<()>) -> promptcl_learner::Result<()> {
        self.1 += 1;
        self.0.iter().try_for_each(|(x, y)| f(x, y))
    }
}

fn task_data(t: usize) -> Counting {
    let l = (t * PER_TASK) as i64;
    let y = Tensor::from_slice(&[l, l + 1, l, l + 1, l, l + 1]);
    tch::manual_seed(100 + t as i64);
    Counting(vec![(Inputs::Images(Tensor::randn([6, 3, 32, 32], (Kind::Float, Device::Cpu))), y)], 0)
}

/// Task `t` in stage `stage` of its method.
fn in_stage(m: &dyn ContinualMethod, t: usize, stage: &str) -> TaskInfo {
    let info = task(t);
    let stages = m.stages(&info, &OptimConfig::default());
    let s = stages.iter().find(|s| s.name == stage).unwrap_or_else(|| panic!("no stage {stage}"));
    info.in_stage(s)
}

/// Task 0's features before training are exactly the frozen query's (`what`
/// makes them so); then one backward of the prompt stage, on the returned batch.
fn starts_as_the_frozen_model(m: &mut dyn ContinualMethod, what: &str) -> Inputs {
    m.begin_task(&task(0)).unwrap();
    let x = images(3);
    let frozen = tch::no_grad(|| ctx().backbone.query(&x).unwrap());
    let f = m.task_features(&x, &task(0)).unwrap().unwrap();
    assert!(f.equal(&frozen), "{what}: the frozen model, by {}", (&f - &frozen).abs().max().double_value(&[]));
    m.train_step(&x, &labels(0), &in_stage(m, 0, "prompt")).unwrap().loss.backward();
    x
}

/// One epoch of every stage of task `t` over two fixed batches (the harness's order of calls).
fn run_task(m: &mut dyn ContinualMethod, t: usize, data: &mut Counting) {
    let batches = vec![(images(10 + t as i64), labels(t)), (images(20 + t as i64), labels(t))];
    let optim = OptimConfig { epochs: 1, lr: 0.01, scale_lr_by_batch: false, ..OptimConfig::default() };
    drive::run_task(m, &task(t), &optim, &batches, data).unwrap();
}

#[test]
fn norga_gate_and_current_prompt_get_gradient_and_gate_freezes_after_task_one() {
    let mut m = build("norga", HIDE);
    m.begin_task(&task(0)).unwrap();
    m.train_step(&images(1), &labels(0), &in_stage(&*m, 0, "prompt")).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "act_scale")), "alpha/tau learn in the first task");
    assert!(has_grad(&var(&*m, "e_prompt.0")));
    for name in ["e_prompt.1", "e_prompt.2", "tii.head.weight"] {
        assert!(!has_grad(&var(&*m, name)), "{name}: the prompt stage trains prompts, gate and head only");
    }
    m.train_step(&images(1), &labels(0), &in_stage(&*m, 0, "tii")).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "tii.head.weight")), "TII trains on the frozen query in its own stage");
    run_task(&mut *m, 0, &mut task_data(0));
    m.begin_task(&task(1)).unwrap();
    let mut opt = nn::Adam::default().build(m.vars(), 0.01).unwrap();
    opt.zero_grad();
    m.train_step(&images(2), &labels(1), &in_stage(&*m, 1, "prompt")).unwrap().loss.backward();
    assert!(!has_grad(&var(&*m, "act_scale")), "frozen from the second task (official act_scale.requires_grad_(False))");
    assert!(has_grad(&var(&*m, "e_prompt.1")) && !has_grad(&var(&*m, "e_prompt.0")));
    // HiDe-Prompt has no gate at all.
    assert!(!build("hide-prompt", HIDE).vars().variables().contains_key("act_scale"));
}

/// The official recipe's stages, each over its own parameters with its own
/// optimizer (so TII and prompts are clipped apart, as in the two official runs).
#[test]
fn hide_prompt_stages_follow_the_official_runs_and_train_their_own_parameters() {
    use promptcl_learner::{OptimizerKind, Schedule, StageData};
    let m = build("norga", HIDE);
    let names = |t: usize| m.stages(&task(t), &OptimConfig::default()).iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(0), ["tii", "prompt"], "no alignment before there are old classes");
    assert_eq!(names(1), ["tii", "tii-align", "prompt", "align"]);
    let optim =
        OptimConfig { kind: OptimizerKind::Sgd, schedule: Schedule::Step { every: 30, rate: 0.1, step_late: false }, ..OptimConfig::default() };
    for s in m.stages(&task(1), &optim) {
        let opt = s.optimizer(m.vars());
        let trained = opt.names();
        let only = |prefixes: &[&str]| trained.iter().all(|n| prefixes.iter().any(|p| n.starts_with(p)));
        match s.name {
            "tii" => {
                assert!(only(&["tii."]), "{trained:?}");
                assert_eq!(
                    (s.optim.kind, s.optim.schedule, s.optim.clip_grad_norm),
                    (OptimizerKind::Adam, Schedule::Constant, 1.0),
                    "official TII run"
                );
            }
            "tii-align" => assert!(only(&["tii."]) && s.data == StageData::Generated && s.optim.clip_grad_norm == 0.0),
            "prompt" => {
                assert!(only(&["e_prompt.", "act_scale", "head."]) && trained.contains(&"act_scale"), "{trained:?}");
                assert_eq!(s.optim.kind, OptimizerKind::Sgd, "the prompt stage follows [optim]");
                assert_eq!(s.lr_scale("head.weight"), Some(0.1), "--larger_prompt_lr");
            }
            "align" => assert!(only(&["head."]) && s.data == StageData::Generated && s.optim.schedule == Schedule::CosineEpoch),
            other => panic!("unexpected stage {other}"),
        }
    }
}

/// Heads (and HiDe's TII MLP) start as each official code base starts them:
/// timm's `trunc_normal_(std=.02)` and zero bias in the timm-ViT codes (L2P,
/// DualPrompt, HiDe-Prompt, NoRGa), `nn.Linear`'s U(±1/√fan_in) in CODA-Prompt.
#[test]
fn heads_are_initialised_as_their_official_code() {
    let std_of = |t: &Tensor| t.std(true).double_value(&[]);
    let timm = |m: &dyn ContinualMethod, prefix: &str| {
        let (w, b) = (var(m, &format!("{prefix}.weight")), var(m, &format!("{prefix}.bias")));
        assert!((std_of(&w) - 0.02).abs() < 0.002, "{prefix}: std {}", std_of(&w));
        assert!(w.mean(Kind::Float).double_value(&[]).abs() < 0.002);
        assert_eq!(b.abs().max().double_value(&[]), 0.0, "{prefix}: zero bias");
    };
    timm(&*build("l2p", "pool_size = 6\ntop_k = 2\nlength = 3"), "head");
    timm(&*build("dualprompt", "g_layers = [0]\ne_layers = [1]"), "head");
    let hide = build("hide-prompt", HIDE);
    for prefix in ["head", "tii.head", "tii.mlp.0", "tii.mlp.1"] {
        timm(&*hide, prefix);
    }
    let coda = build("coda-prompt", "pool_size = 10\nlength = 4\nlayers = [0]");
    let (w, b) = (var(&*coda, "head.weight"), var(&*coda, "head.bias"));
    let bound = 1.0 / (w.size()[1] as f64).sqrt();
    assert!(w.abs().max().double_value(&[]) <= bound && b.abs().max().double_value(&[]) <= bound);
    assert!((std_of(&w) - bound / 3f64.sqrt()).abs() < 0.1 * bound, "U(±b) has std b/√3");
}

/// dualprompt-pytorch `engine.py` with `shared_prompt_pool = True` (its
/// configs): at the start of task t the E-prompt of task t−1 is copied into
/// task t's slot; the key is copied only under `shared_prompt_key`.
#[test]
fn dualprompt_starts_a_task_from_the_previous_e_prompt() {
    let value = |m: &dyn ContinualMethod, name: &str| var(m, name).copy();
    let mut m = build("dualprompt", "g_layers = [0]\ne_layers = [1]\ne_length = 2");
    m.begin_task(&task(0)).unwrap();
    let (p0, k1) = (value(&*m, "e_prompt.0"), value(&*m, "e_key.1"));
    assert!(value(&*m, "e_prompt.1") != p0, "fresh draws differ before the copy");
    m.begin_task(&task(1)).unwrap();
    assert!(value(&*m, "e_prompt.1") == p0);
    assert!(value(&*m, "e_key.1") == k1, "the key starts fresh by default");
    assert!(var(&*m, "e_prompt.1").requires_grad() && !var(&*m, "e_prompt.0").requires_grad());

    let mut m = build("dualprompt", "g_layers = [0]\ne_layers = [1]\ne_length = 2\nshared_prompt_pool = false\nshared_prompt_key = true");
    let (p1, k0) = (value(&*m, "e_prompt.1"), value(&*m, "e_key.0"));
    m.begin_task(&task(1)).unwrap();
    assert!(value(&*m, "e_prompt.1") == p1 && value(&*m, "e_key.1") == k0);
}

/// dualprompt-pytorch issue 8, worked out for B = 4: the official reshape
/// gives sample 0 (K₀, K₁), sample 1 (K₂, K₃), sample 2 (V₀, V₁), sample 3
/// (V₂, V₃); one prompt for the whole batch gives (K, K) and (V, V).
#[test]
fn official_prefix_layout_mixes_halves_across_the_batch_as_the_official_reshape() {
    use promptcl_learner::parts::task_prompts::PrefixLayout;
    // e[b, layer, half] = 100·b + 10·half + layer, in every element of the prefix.
    let e = Tensor::stack(
        &(0..4)
            .map(|b| {
                let halves: Vec<Tensor> = (0..2)
                    .map(|h| {
                        Tensor::stack(
                            &(0..3).map(|l| Tensor::full([2, 2, 4], (100 * b + 10 * h + l) as f64, (Kind::Float, Device::Cpu))).collect::<Vec<_>>(),
                            0,
                        )
                    })
                    .collect();
                Tensor::stack(&halves, 1)
            })
            .collect::<Vec<_>>(),
        0,
    );
    assert_eq!(e.size(), [4, 3, 2, 2, 2, 4]);
    let code = |t: &Tensor, b: i64, half: i64| t.get(b).get(1).get(half).double_value(&[0, 0, 0]) as i64;
    let got = PrefixLayout::Official.arrange(&e, 4);
    // (sample, half) → (source sample, source half), layer 1 throughout.
    for (b, h, src_b, src_h) in [(0, 0, 0, 0), (0, 1, 1, 0), (1, 0, 2, 0), (1, 1, 3, 0), (2, 0, 0, 1), (2, 1, 1, 1), (3, 0, 2, 1), (3, 1, 3, 1)] {
        assert_eq!(code(&got, b, h), 100 * src_b + 10 * src_h + 1, "sample {b} half {h}");
    }
    assert!(PrefixLayout::Correct.arrange(&e, 4).equal(&e));
    let shared = PrefixLayout::Official.arrange(&e.narrow(0, 2, 1), 4);
    let halves: Vec<(i64, i64)> = (0..4).map(|b| (code(&shared, b, 0), code(&shared, b, 1))).collect();
    assert_eq!(halves, [(201, 201), (201, 201), (211, 211), (211, 211)]);
    assert!(PrefixLayout::Official.arrange(&e.narrow(0, 0, 1), 1).equal(&e.narrow(0, 0, 1)), "one sample: nothing to mix");
}

/// The switch reaches DualPrompt and HiDe-Prompt: with it a batch's
/// predictions change, and a batch of one is unaffected.
#[test]
fn prefix_layout_switch_reaches_the_methods() {
    for (name, params) in [("dualprompt", "g_layers = [0]\ne_layers = [1, 2]\ne_length = 2"), ("hide-prompt", HIDE)] {
        let logits = |layout: &str, x: &Inputs| {
            let mut m = build(name, &format!("{params}\nprefix_layout = \"{layout}\""));
            m.begin_task(&task(0)).unwrap();
            m.train_step(x, &labels(0), &in_stage(&*m, 0, if name == "dualprompt" { "train" } else { "prompt" })).unwrap().loss.double_value(&[])
        };
        let x = images(4);
        assert!((logits("correct", &x) - logits("official", &x)).abs() > 1e-6, "{name}: the official layout changes the loss");
        let one = match &x {
            Inputs::Images(t) => Inputs::Images(t.narrow(0, 0, 1)),
            _ => unreachable!(),
        };
        let single = |layout: &str| {
            let mut m = build(name, &format!("{params}\nprefix_layout = \"{layout}\""));
            m.begin_task(&task(0)).unwrap();
            let p = m.predict(&one, PER_TASK).unwrap();
            p.logits
        };
        assert!(single("correct").equal(&single("official")), "{name}: a batch of one is the same");
    }
}

/// thu-ml's HiDe-Prompt and HierC draw the per-class count for every centroid
/// and use `#old classes` batches of it; MoE_PromptCL splits it across them.
#[test]
fn alignment_can_draw_per_centroid_and_use_a_fraction() {
    use promptcl_learner::parts::alignment::pseudo_batches_drawn;
    use promptcl_learner::stats::{ClassStats, StatsKind};
    let vs = nn::VarStore::new(Device::Cpu);
    let mut stats = ClassStats::new(&vs.root(), StatsKind::MultiCentroid, 3, 4, 2);
    tch::manual_seed(3);
    for c in 0..3 {
        let x = Tensor::randn([12, 4], (Kind::Float, Device::Cpu)) + c as f64 * 10.0;
        stats.fit(c, &x, c as u64).unwrap();
    }
    // 3 classes x 8 drawn, batches of 4, 2 steps: 8 of the 24 samples are used.
    let batches = pseudo_batches_drawn(&stats, 0..3, 8, 4, 2);
    assert_eq!(batches.iter().map(|(x, _)| x.size()).collect::<Vec<_>>(), [vec![4, 4], vec![4, 4]]);
    // Shuffled over the whole draw: the labels of a batch mix classes.
    let labels: Vec<i64> = batches.iter().flat_map(|(_, y)| Vec::<i64>::try_from(y).unwrap()).collect();
    assert!(labels.iter().any(|&l| l != labels[0]), "{labels:?}");
    // Through HiDe: the flag changes the draw (so the generator's stream), not the batch shape.
    let shapes = |flag: bool| {
        let mut m = build(
            "hide-prompt",
            &format!(
                "{}\nstatistics = \"multi-centroid\"\nn_centroids = 2\nalign_per_centroid = {flag}",
                HIDE.replace("statistics = \"covariance\"", "")
            ),
        );
        run_task(&mut *m, 0, &mut task_data(0));
        m.begin_task(&task(1)).unwrap();
        tch::manual_seed(9);
        let b = m.generate(&in_stage(&*m, 1, "align")).unwrap();
        (b.iter().map(|(x, _)| x.size()[0]).collect::<Vec<_>>(), b[0].0.copy())
    };
    let ((off, first_off), (on, first_on)) = (shapes(false), shapes(true));
    // Batches of 5 x batch (120), at most #old classes (2) of them; per centroid draws
    // twice as many here, enough for both steps where the split draw (one usable
    // centroid per class in this tiny fit) fills one.
    assert!(off.iter().chain(&on).all(|&n| n <= 120) && on.len() <= 2, "{off:?} {on:?}");
    assert!(on.len() >= off.len() && on.iter().sum::<i64>() > off.iter().sum::<i64>(), "{off:?} {on:?}");
    assert!(!first_off.equal(&first_on), "a different draw");
}

/// The official alignment optimizers: no weight decay (the argparse
/// duplicate), the TII-alignment rate scaled by batch/256 as the TII trainer
/// scales `ca_lr`, TAP's rate as given; `align_weight_decay` restores 5e-4.
#[test]
fn alignment_stages_have_the_official_weight_decay_and_rates() {
    let optim = OptimConfig { batch_size: 24, scale_lr_by_batch: true, ..OptimConfig::default() };
    let rates = |params: &str| {
        let m = build("hide-prompt", params);
        let stages = m.stages(&task(1), &optim);
        let get = |name: &str| stages.iter().find(|s| s.name == name).map(|s| (s.optim.lr, s.optim.weight_decay, s.optim.momentum)).unwrap();
        (get("tii-align"), get("align"))
    };
    let (tii_align, align) = rates(&format!("{HIDE}\ntii_align_lr = 0.005\nalign_lr = 0.05"));
    assert_eq!(tii_align, (0.005 * 24.0 / 256.0, 0.0, 0.9));
    assert_eq!(align, (0.05, 0.0, 0.9));
    let (tii_align, align) = rates(&format!("{HIDE}\nalign_weight_decay = 5e-4"));
    assert_eq!((tii_align.1, align.1), (5e-4, 5e-4));
    assert!(registry::build("hide-prompt", &ctx(), &toml::from_str(&format!("{HIDE}\nalign_weight_decay = -1.0")).unwrap()).is_err());
}

#[test]
fn task_prompts_mix_with_earlier_tasks_write_back_and_copy_forward() {
    use promptcl_learner::parts::task_prompts::{PromptSetConfig, TaskPrompts};
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = PromptSetConfig {
        prompt_name: "p",
        key_name: Some("k"),
        layers: vec![0, 1],
        length: 2,
        pool_size: 1,
        top_k: 1,
        seed_tag: 7,
        expert: Default::default(),
    };
    let mut p = TaskPrompts::new(&vs.root(), &ctx(), cfg).unwrap();
    let (p0, p1) = (p.pool(0).copy(), p.pool(1).copy());
    let want = &p1 * 0.99 + &p0 * 0.01;
    assert!((p.mixed(1, 0.01) - &want).abs().max().double_value(&[]) < 1e-7);
    p.seal(1, 0.01);
    assert!((&p.pool(1) - &want).abs().max().double_value(&[]) < 1e-7 && p.pool(0).equal(&p0));
    p.begin_task(2, true);
    assert!(p.pool(2).equal(&p.pool(1)), "shared_prompt_pool: task 2 starts from task 1");
    let grads: Vec<bool> = (0..5).map(|t| p.pool(t).requires_grad()).collect();
    assert_eq!(grads, [false, false, true, false, false]);
}

#[test]
fn hide_prompt_pipeline_keeps_finished_prompts_and_consolidates_from_statistics() {
    let mut m = build("hide-prompt", HIDE);
    run_task(&mut *m, 0, &mut task_data(0));
    let p0 = var(&*m, "e_prompt.0").copy();
    // begin_task(1) starts task 1's prompt from task 0's.
    m.begin_task(&task(1)).unwrap();
    assert!(var(&*m, "e_prompt.1").equal(&p0));
    let mut data = task_data(1);
    run_task(&mut *m, 1, &mut data);
    assert_eq!(data.1, 2, "the task's data is read twice: frozen queries after `tii`, prompted features after `prompt`");
    assert!(!var(&*m, "e_prompt.1").equal(&p0), "task 1's prompt trained");
    assert!(var(&*m, "e_prompt.0").equal(&p0), "task 0's prompt never changes after task 0");
    // Statistics: per-class Cholesky factors of positive-definite covariances, for fitted classes only.
    let chol = var(&*m, "tap_stats.cov_cholesky");
    assert_eq!(chol.size(), [10, 64, 64]);
    for c in 0..4 {
        let l = chol.get(c);
        let eig = l.matmul(&l.tr()).to_kind(Kind::Double).linalg_eigvalsh("L");
        assert!(eig.min().double_value(&[]) > 0.0, "class {c} covariance not PD");
    }
    for stats in ["tap_stats.fitted", "tii_stats.fitted"] {
        assert_eq!(var(&*m, stats).sum(Kind::Float).double_value(&[]), 4.0, "{stats}");
    }
    // The method keeps parameters and statistics only: nothing image-shaped.
    for (name, t) in m.vars().variables() {
        assert!(t.dim() < 4 || name.starts_with("e_prompt"), "{name} {:?}", t.size());
    }
    // Inference routes through TII: every predicted task is a seen one.
    let pred = m.predict(&images(5), 4).unwrap();
    let ids: Vec<i64> = pred.task_ids.unwrap().try_into().unwrap();
    assert!(ids.iter().all(|&t| t < 2), "{ids:?}");
}

/// APER adapts only in the first task: later tasks have no stage. Its
/// adapters start as a no-op (the adapted feature is the frozen one), take
/// gradients (the backbone none), and its prototypes are the class means of
/// `[frozen; adapted]` features; SSF also runs.
#[test]
fn aper_adapts_on_the_first_task_only_and_prototypes_concatenate_both_features() {
    let c = ctx();
    let mut m = build("aper", "ffn_num = 8");
    let optim = OptimConfig::default();
    assert_eq!(m.stages(&task(0), &optim).len(), 1);
    assert!((1..TASKS).all(|t| m.stages(&task(t), &optim).is_empty()), "APER trains in the first task only");
    let y = Tensor::from_slice(&[0i64, 1, 1, 0]);
    let q = c.backbone.query(&images(21)).unwrap();
    m.end_task(&task(0), &mut Held(vec![(images(21), y)])).unwrap();
    let proto = var(&*m, "proto_sums").get(0) / var(&*m, "proto_counts").get(0);
    let want = Tensor::cat(&[&q, &q], 1).index_select(0, &Tensor::from_slice(&[0i64, 3])).mean_dim(0, false, Kind::Float);
    assert!((proto - want).abs().max().double_value(&[]) < 1e-5, "zero-initialised adapters: adapted = frozen");

    let info = task(0);
    m.train_step(&images(22), &labels(0), &info).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "petl.adapter.0.up.weight")), "the up-projection learns");
    assert!(has_grad(&var(&*m, "cosine_head.sigma")));
    assert!(c.backbone.vars.variables().values().all(|t| !t.grad().defined()), "the backbone gets no gradient");

    let mut ssf = build("aper", "petl = \"ssf\"");
    ssf.train_step(&images(23), &labels(0), &info).unwrap().loss.backward();
    assert!(has_grad(&var(&*ssf, "petl.ssf.1.fc1.scale")) && has_grad(&var(&*ssf, "petl.ssf.final.shift")));

    // VPT: zero tokens per block (deep) or one set (shallow), trained in the first task.
    for (kind, rows) in [("vpt-deep", c.backbone.depth() as i64), ("vpt-shallow", 1)] {
        let mut vpt = build("aper", &format!("petl = \"{kind}\"\nprompt_tokens = 3"));
        let p = var(&*vpt, "petl.vpt.prompts");
        assert_eq!(p.size(), [rows, 3, c.token_dim()], "{kind}");
        assert_eq!(p.abs().max().double_value(&[]), 0.0, "{kind}: PILOT's zeros");
        vpt.train_step(&images(24), &labels(0), &info).unwrap().loss.backward();
        assert!(has_grad(&p), "{kind}: the tokens learn");
        assert_eq!(vpt.stages(&task(0), &optim)[0].lr_scale("petl.vpt.prompts"), Some(1.0));
    }
    assert!(build_err("aper", "petl = \"vpt-deep\"\nprompt_tokens = 0").contains("prompt_tokens"));
}

/// SLCA: the backbone copy and the task's own head train in the first stage
/// (the shared backbone and earlier heads do not); from the second task an
/// alignment stage trains every seen head, and the next task starts from the
/// heads as they were before it (the official `fc.recall()`).
#[test]
fn slca_trains_slowly_aligns_and_recalls_the_heads() {
    let c = ctx();
    let mut m = build("slca", "samples_per_class = 4");
    let optim = OptimConfig::default();
    let s0 = m.stages(&task(0), &optim);
    assert_eq!(s0.iter().map(|s| s.name).collect::<Vec<_>>(), ["train"]);
    assert_eq!(s0[0].lr_scale("backbone.blocks.0.attn.qkv.weight"), Some(0.01));
    assert_eq!(s0[0].lr_scale("head.0.weight"), Some(1.0));
    assert_eq!(s0[0].lr_scale("head.1.weight"), None, "a later task's head does not train now");
    let s1 = m.stages(&task(1), &optim);
    assert_eq!(s1.iter().map(|s| s.name).collect::<Vec<_>>(), ["train", "align"]);
    assert_eq!(s1[1].lr_scale("head.0.weight"), Some(1.0));
    assert_eq!(s1[1].lr_scale("backbone.norm.weight"), None);
    assert!(var(&*m, "backbone.norm.weight").equal(&Tensor::ones([64], (Kind::Float, Device::Cpu))), "a fresh final norm");

    let data = || Held((0..2).map(|i| (images(40 + i), Tensor::from_slice(&[0i64, 1, 2, 3]))).collect());
    m.end_stage(&task(0).in_stage(&s0[0]), &mut data()).unwrap();
    let info = task(1).in_stage(&s1[0]);
    m.begin_task(&info).unwrap();
    m.train_step(&images(30), &labels(1), &info).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "head.1.weight")) && has_grad(&var(&*m, "backbone.blocks.1.mlp.fc1.weight")));
    assert!(!has_grad(&var(&*m, "head.0.weight")), "CE over the task's classes: earlier heads get nothing");
    assert!(c.backbone.vars.variables().values().all(|t| !t.grad().defined()), "the shared backbone is untouched");
    m.end_stage(&info, &mut data()).unwrap();
    let before = var(&*m, "head.0.weight").copy();
    let _ = tch::no_grad(|| var(&*m, "head.0.weight").shallow_clone().fill_(3.0));
    m.begin_task(&task(2)).unwrap();
    assert!(var(&*m, "head.0.weight").equal(&before), "the heads are recalled");
    let align = task(1).in_stage(&s1[1]);
    let batches = m.generate(&align).unwrap();
    assert_eq!(batches.len(), 4);
    let (fx, fy) = &batches[0];
    assert_eq!(fx.size(), [4, 64]);
    m.train_step(&Inputs::Features(fx.shallow_clone()), fy, &align).unwrap().loss.backward();
}

/// HiDe-Prompt with task-specific zero-init gates: before its gate opens, a
/// task's prompted feature is exactly the frozen one; the prompt stage trains
/// the task's prompt, generator and gate only; after a later task, the
/// earlier task's sealed prefixes and gate are bit-identical; at inference,
/// each sample gets its identified task's gate.
#[test]
fn hide_prompt_experts_start_as_no_ops_train_their_own_parts_and_keep_finished_ones() {
    let params = format!("{HIDE}\nprompt = {{ param = \"nonlinear\", gate = \"zero-init\" }}");
    let mut m = build("hide-prompt", &params);
    starts_as_the_frozen_model(&mut *m, "a closed gate");
    assert!(has_grad(&var(&*m, "zero_gate.0")), "the gate opens by gradient");
    for name in ["e_prompt.1", "zero_gate.1", "tii.head.weight"] {
        assert!(!has_grad(&var(&*m, name)), "{name}");
    }
    run_task(&mut *m, 0, &mut task_data(0));
    assert_eq!(var(&*m, "e_prompt_sealed").double_value(&[0]), 1.0, "task 0 sealed after its prompt stage");
    let (stored, gate) = (var(&*m, "e_prompt_stored.0").copy(), var(&*m, "zero_gate.0").copy());
    assert!(stored.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    run_task(&mut *m, 1, &mut task_data(1));
    assert!(var(&*m, "e_prompt_stored.0").equal(&stored) && var(&*m, "zero_gate.0").equal(&gate), "task 0's expert moved");
    assert!(!var(&*m, "zero_gate.1").equal(&var(&*m, "zero_gate.2")), "task 1's gate trained");
    let pred = m.predict(&images(5), 4).unwrap();
    assert_eq!(pred.logits.size(), [4, 4]);

    // Every parameterisation and gate builds and runs a task's stages.
    for prompt in [
        "{ param = \"reparam-mlp\" }",
        "{ param = \"reparam-linear\", generator = \"per-task\" }",
        "{ param = \"frozen-projection\", gate = \"zero-init-query\" }",
        "{ param = \"reparam-mlp\", gate = \"sigmoid\" }",
    ] {
        let mut m = build("hide-prompt", &format!("{HIDE}\nprompt = {prompt}"));
        run_task(&mut *m, 0, &mut task_data(0));
        assert!(m.predict(&images(5), 2).unwrap().logits.isfinite().all().int64_value(&[]) == 1, "{prompt}");
    }
    let mut m = build("epi", "layers = [0, 1]\nlength = 2\nprompt = { param = \"reparam-mlp\" }");
    run_task(&mut *m, 0, &mut task_data(0));
    assert_eq!(var(&*m, "prompt_sealed").double_value(&[0]), 1.0, "EPI seals at the end of its task");

    // Bad values name the key.
    let err = build_err("hide-prompt", &format!("{HIDE}\nprompt = {{ gate = \"zero\" }}"));
    assert!(err.contains("unknown gate `zero`") && err.contains("zero-init"), "{err}");
    let err = build_err("hide-prompt", &format!("{HIDE}\nprompt = {{ param = \"mlp\" }}"));
    assert!(err.contains("mlp") && err.contains("reparam-mlp"), "{err}");
    let err = build_err("hide-prompt", &format!("{HIDE}\nprompt = {{ reparam_hidden = 0 }}"));
    assert!(err.contains("prompt.reparam_hidden"), "{err}");
    let err = build_err("epi", "prompt = { gate = \"zero-init\" }");
    assert!(err.contains("prompt.gate"), "{err}");
}

/// HiDe-LoRA: task 0's LoRA starts as the frozen model (B = 0) and its first
/// step moves B only; the prompt stage trains the current task's factors and
/// the head; a finished task's factors are bit-identical after a later task;
/// a new task starts from the previous task's factors and ends mixed with
/// the earlier ones' (momentum, on A and B); inference routes each sample to
/// its identified task's update. Then LoRA beside prompts, and bad values.
#[test]
fn hide_lora_trains_its_task_update_keeps_finished_ones_and_routes_by_tii() {
    let fast = "tii_epochs = 1\ntii_align_epochs = 1\nalign_epochs = 1\nn_centroids = 2\nlora = { layers = [0, 2] }\ntii_lora = { layers = [1] }";
    let mut m = build("hide-lora", fast);
    assert!(!m.vars().variables().keys().any(|k| k.starts_with("e_prompt")), "no task prompts");
    let x = starts_as_the_frozen_model(&mut *m, "B = 0");
    assert!(has_grad(&var(&*m, "lora.b.0")) && !has_grad(&var(&*m, "lora.a.0")), "at B = 0 only B has a gradient");
    for name in ["lora.a.1", "lora.b.1", "tii.head.weight", "tii_lora.b.0"] {
        assert!(!has_grad(&var(&*m, name)), "{name}");
    }
    // TII: the head and its shared LoRA train in the `tii` stage (the task LoRA does not);
    // from the second task the LoRA at 0.1 × the rate.
    m.train_step(&x, &labels(0), &in_stage(&*m, 0, "tii")).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "tii_lora.b.0")) && has_grad(&var(&*m, "tii.head.weight")));
    let scale = |t: usize| {
        let stages = m.stages(&task(t), &OptimConfig::default());
        let tii = stages.iter().find(|s| s.name == "tii").unwrap();
        tii.trains.iter().find(|g| g.prefix == "tii_lora").map(|g| g.lr_scale)
    };
    assert_eq!((scale(0), scale(1)), (Some(1.0), Some(0.1)));
    run_task(&mut *m, 0, &mut task_data(0));
    let (a0, b0) = (var(&*m, "lora.a.0").copy(), var(&*m, "lora.b.0").copy());
    assert!(b0.abs().sum(Kind::Float).double_value(&[]) > 0.0, "task 0's B trained");
    m.begin_task(&task(1)).unwrap();
    assert!(var(&*m, "lora.a.1").equal(&a0) && var(&*m, "lora.b.1").equal(&b0), "task 1 starts from task 0's factors");
    let tii_lora = var(&*m, "tii_lora.b.0").copy();
    run_task(&mut *m, 1, &mut task_data(1));
    assert!(var(&*m, "lora.a.0").equal(&a0) && var(&*m, "lora.b.0").equal(&b0), "task 0's update moved");
    assert!(!var(&*m, "tii_lora.b.0").equal(&tii_lora), "TII's LoRA trains on in every task");
    assert!(!var(&*m, "lora.b.1").equal(&b0), "task 1's update trained");
    // One batch for both calls: parallel tests share libtorch's generator.
    let x5 = images(5);
    let pred = m.predict(&x5, 4).unwrap();
    let ids: Vec<i64> = pred.task_ids.unwrap().try_into().unwrap();
    assert!(ids.iter().all(|&t| t < 2) && pred.logits.size() == [4, 4], "{ids:?}");
    // Each sample's prediction is what its identified task's update gives it alone.
    let feats = pred.features.unwrap();
    for (i, &t) in ids.iter().enumerate() {
        let own = m.task_features(&x5, &task(t as usize)).unwrap().unwrap();
        assert!((feats.get(i as i64) - own.get(i as i64)).abs().max().double_value(&[]) < 1e-5, "sample {i} routed to task {t}");
    }

    // LoRA beside the prompts: both train in the prompt stage.
    let mut m = build("hide-prompt", &format!("{HIDE}\nlora = {{ rank = 2, targets = [\"q\", \"out\"] }}"));
    m.begin_task(&task(0)).unwrap();
    m.train_step(&x, &labels(0), &in_stage(&*m, 0, "prompt")).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "e_prompt.0")) && has_grad(&var(&*m, "lora.b.0")));
    assert_eq!(var(&*m, "lora.a.0").size(), [6, 2, 64], "3 blocks × (q, out), rank 2");

    // Bad values name the key.
    let err = build_err("hide-lora", "lora = { rank = 0 }");
    assert!(err.contains("lora.rank = 0"), "{err}");
    let err = build_err("hide-lora", "lora = { layers = [3] }");
    assert!(err.contains("lora.layers: block 3"), "{err}");
    let err = build_err("hide-lora", "lora = { targets = [\"v\", \"v\"] }");
    assert!(err.contains("`v` twice"), "{err}");
    let err = build_err("hide-lora", "lora = { targets = [\"w\"] }");
    assert!(err.contains("w") && err.contains("out"), "{err}");
    let err = build_err("hide-prompt", "layers = []");
    assert!(err.contains("needs `lora`"), "{err}");
    let err = build_err("wave-cre", "tii_lora = { layers = [0] }");
    assert!(err.contains("tii_lora trains in the `tii` stage"), "{err}");
}

/// HiDe-Prompt with VAPT's adaptive prompts per task: the prompt stage trains
/// the current task's expert (not the next one's, nor TII), inference routes
/// by TII; the prefix-only compositions refuse `adaptive` by name.
#[test]
fn hide_prompt_takes_adaptive_prompts_and_prefix_methods_refuse_them() {
    let params = format!("{HIDE}\nlayers = [0, 1, 2]\nprompt = {{ param = \"adaptive\", adaptive_hidden = 4 }}");
    let mut m = build("hide-prompt", &params.replace("layers = [0, 1]\n", ""));
    assert!(!m.vars().variables().keys().any(|k| k.starts_with("e_prompt")), "no prefixes");
    m.begin_task(&task(0)).unwrap();
    m.train_step(&images(2), &labels(0), &in_stage(&*m, 0, "prompt")).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "vapt.0.prompt")) && has_grad(&var(&*m, "vapt.0.layer.1.proj_weight")));
    for name in ["vapt.1.prompt", "vapt.1.layer.1.proj_weight", "tii.head.weight"] {
        assert!(!has_grad(&var(&*m, name)), "{name}");
    }
    run_task(&mut *m, 0, &mut task_data(0));
    run_task(&mut *m, 1, &mut task_data(1));
    let pred = m.predict(&images(5), 4).unwrap();
    assert_eq!(pred.logits.size(), [4, 4]);

    let err = build_err("hide-prompt", &format!("{HIDE}\nprompt = {{ param = \"adaptive\", gate = \"zero-init\" }}"));
    assert!(err.contains("takes no prompt.gate"), "{err}");
    let err = build_err("epi", "prompt = { param = \"adaptive\" }");
    assert!(err.contains("not prefixes"), "{err}");
    let err = build_err("hide-prompt", &format!("{HIDE}\nprompt = {{ param = \"adaptive\", adaptive_kernel = 9 }}"));
    assert!(err.contains("adaptive_kernel 9"), "{err}");
}

/// DualPrompt's E-prompts as experts: with a reparameterised, zero-init gated
/// E-prompt and task LoRA, the current task's gate, key and B take gradients
/// (the next task's none); the generated E-prompt is sealed at the
/// end of its task and stays put through the next; inference routes gates
/// and LoRA by the matched key.
#[test]
fn dualprompt_e_prompts_take_experts_gates_and_lora() {
    let mut m = build(
        "dualprompt",
        "g_layers = [0]\ne_layers = [1, 2]\ne_length = 2\nprompt = { param = \"reparam-mlp\", gate = \"zero-init\" }\nlora = { rank = 2 }",
    );
    m.begin_task(&task(0)).unwrap();
    let x = images(4);
    m.train_step(&x, &labels(0), &task(0)).unwrap().loss.backward();
    // A closed gate passes no gradient to its prompt yet: the gate opens by gradient.
    for name in ["zero_gate.0", "lora.b.0", "e_key.0"] {
        assert!(has_grad(&var(&*m, name)), "{name}");
    }
    for name in ["e_prompt.1", "zero_gate.1", "lora.b.1", "lora.a.0"] {
        assert!(!has_grad(&var(&*m, name)), "{name}");
    }
    train(&mut *m, 0, 2);
    m.end_task(&task(0), &mut Held(vec![])).unwrap();
    assert_eq!(var(&*m, "e_prompt_sealed").double_value(&[0]), 1.0);
    let sealed = var(&*m, "e_prompt_stored.0").copy();
    train(&mut *m, 1, 2);
    assert!(var(&*m, "e_prompt_stored.0").equal(&sealed), "task 0's E-prompt moved while the shared generator trained");
    let pred = m.predict(&images(5), 4).unwrap();
    assert_eq!(pred.logits.size(), [4, 4]);
    assert!(pred.logits.isfinite().all().int64_value(&[]) == 1);
}

/// Multi-centroid statistics with as many centroids as examples per class
/// leave every cluster a single point, which sampling skips (as the official
/// code): the alignment stage is then an error naming `n_centroids`, not a
/// silent epoch without data.
#[test]
fn alignment_without_any_pseudo_sample_is_an_error() {
    let mut m =
        build("hide-prompt", &format!("{}\nstatistics = \"multi-centroid\"\nn_centroids = 3", HIDE.replace("statistics = \"covariance\"", "")));
    run_task(&mut *m, 0, &mut task_data(0));
    m.begin_task(&task(1)).unwrap();
    let err = m.generate(&in_stage(&*m, 1, "tii-align")).unwrap_err().to_string();
    assert!(err.contains("drew no pseudo-samples") && err.contains("n_centroids = 3"), "{err}");
}

/// EPI with task LoRA: the task's B trains beside its prompt (no other
/// task's), and inference routes LoRA by the Mahalanobis-identified task.
#[test]
fn epi_takes_task_lora_routed_by_its_task_identity() {
    let mut m = build("epi", "layers = [0, 1]\nlength = 2\nlora = { rank = 2 }");
    m.begin_task(&task(0)).unwrap();
    m.train_step(&images(6), &labels(0), &task(0)).unwrap().loss.backward();
    assert!(has_grad(&var(&*m, "lora.b.0")) && has_grad(&var(&*m, "prompt.0")));
    assert!(!has_grad(&var(&*m, "lora.b.1")));
    let mut data = task_data(0);
    train(&mut *m, 0, 2);
    m.end_task(&task(0), &mut data).unwrap();
    let mut data = task_data(1);
    train(&mut *m, 1, 2);
    m.end_task(&task(1), &mut data).unwrap();
    let pred = m.predict(&images(5), 4).unwrap();
    let ids: Vec<i64> = pred.task_ids.unwrap().try_into().unwrap();
    assert!(ids.iter().all(|&t| t < 2), "{ids:?}");
    let err = build_err("epi", "lora = { layers = [7] }");
    assert!(err.contains("lora.layers: block 7"), "{err}");
}

/// `promptcl methods --params` lists the keys of the nested tables too.
#[test]
fn parameter_help_lists_the_expert_and_lora_keys() {
    let entry = registry::METHODS.iter().find(|e| e.name == "hide-prompt").unwrap();
    let text = (entry.describe)();
    for key in ["prompt.param  (PromptParam)", "prompt.adaptive_kernel  (i64)", "lora.targets  (Vec<LoraTarget>)", "tii_lora.a_init  (LoraInit)"] {
        assert!(text.contains(key), "{key} missing in:\n{text}");
    }
}

/// Task 0's predicted features before training are exactly the frozen query's
/// (closed zero-init gates and LoRA with B = 0).
fn predicts_as_the_frozen_model(m: &mut dyn ContinualMethod) {
    m.begin_task(&task(0)).unwrap();
    let x = images(3);
    let frozen = tch::no_grad(|| ctx().backbone.query(&x).unwrap());
    let f = m.predict(&x, PER_TASK).unwrap().features.unwrap();
    assert!(f.equal(&frozen), "closed gates and B = 0: the frozen model, by {}", (&f - &frozen).abs().max().double_value(&[]));
}

/// CODA-Prompt with reparameterised components: task 0's prompted feature is
/// bit-identical after task 1 trained the shared generator (its components
/// are sealed with their task; its keys and attention vectors frozen), and
/// task 1's components start orthogonal to task 0's in what trains, the
/// embeddings.
#[test]
fn coda_generated_components_of_finished_tasks_are_sealed() {
    let params = "pool_size = 10\nlength = 4\nlayers = [0, 1]\nprompt = { param = \"reparam-mlp\", reparam_hidden = 8 }";
    let mut m = build("coda-prompt", params);
    train(&mut *m, 0, 2);
    m.end_task(&task(0), &mut Held(vec![])).unwrap();
    assert_eq!(var(&*m, "e.p_sealed").double_value(&[0]), 1.0);
    let x = images(7);
    let before = m.predict(&x, PER_TASK).unwrap().features.unwrap();
    let generator = snapshot(&*m, "e.p_gen.");
    train(&mut *m, 1, 2);
    let after = m.predict(&x, PER_TASK).unwrap().features.unwrap();
    assert!(before.equal(&after), "task 0's feature moved by {}", (&before - &after).abs().max().double_value(&[]));
    assert!(generator.iter().any(|(k, v)| !v.equal(&var(&*m, k))), "the shared generator trains in task 1");
    let rows = |t: usize| var(&*m, &format!("e.p.{t}")).select(1, 0).flatten(1, -1);
    let mut fresh = build("coda-prompt", params);
    fresh.begin_task(&task(0)).unwrap();
    fresh.begin_task(&task(1)).unwrap();
    let rows_fresh = |t: usize| var(&*fresh, &format!("e.p.{t}")).select(1, 0).flatten(1, -1);
    let cross = rows_fresh(1).matmul(&rows_fresh(0).tr()).abs().max().double_value(&[]);
    assert!(cross < 1e-5, "task-1 embeddings not orthogonal to task 0's: {cross}");
    assert_eq!(rows(0).size(), [2, 2 * 64], "two components per task, each length/2 × D embeddings");
}

/// A zero-initialised gate makes CODA-Prompt start as the frozen model; it is
/// one gate for every task (CODA infers no task), trained in each, and the
/// shared LoRA beside it too. A nonlinear parameterisation whose embeddings
/// are narrower than the pool cannot be orthogonalised: an error naming
/// `pool_size`, as is LoRA momentum, which needs per-task factors.
#[test]
fn coda_zero_gate_starts_as_the_frozen_model_and_is_shared_by_the_tasks() {
    let mut m = build("coda-prompt", "pool_size = 10\nlength = 4\nlayers = [0, 1]\nprompt = { gate = \"zero-init\" }\nlora = { rank = 2 }");
    assert!(!m.vars().variables().contains_key("zero_gate.1"), "one shared gate set");
    predicts_as_the_frozen_model(&mut *m);
    train(&mut *m, 0, 2);
    m.end_task(&task(0), &mut Held(vec![])).unwrap();
    m.begin_task(&task(1)).unwrap();
    m.train_step(&images(4), &labels(1), &task(1)).unwrap().loss.backward();
    for name in ["zero_gate.0", "lora.b.0", "e.p.1", "e.0.k.1"] {
        assert!(has_grad(&var(&*m, name)), "{name} trains in task 1");
    }
    for name in ["e.p.0", "e.0.k.0", "e.1.a.0"] {
        assert!(!has_grad(&var(&*m, name)), "{name} is task 0's and frozen");
    }
    let err = build_err("coda-prompt", "pool_size = 10\nlayers = [0]\nprompt = { param = \"nonlinear\", nonlinear_embed = 8 }");
    assert!(err.contains("pool_size 10 exceeds the 8 numbers"), "{err}");
    let err = build_err("coda-prompt", "pool_size = 100\nlayers = [0]");
    assert!(err.contains("pool_size 100 exceeds the query width 64"), "{err}");
    let err = build_err("coda-prompt", "pool_size = 10\nlayers = [0]\nlora = { momentum = 0.5 }");
    assert!(err.contains("lora.momentum"), "{err}");
}

/// L2P's prefix-tuned pool (dualprompt-pytorch's `EPrompt`): with each sample
/// choosing its own prompts and the correct layout, a batch computes what
/// each sample computes alone; the official layout pairs key and value halves
/// across the batch, so it does not.
#[test]
fn l2p_prefix_pool_gives_each_sample_its_own_prompts() {
    let base = "pool_size = 6\ntop_k = 2\nlength = 3\nprefix_layers = [0, 1]\nhead_input = \"token\"\nbatchwise_prompt = false";
    let alone_vs_batch = |m: &dyn ContinualMethod| {
        let Inputs::Images(x) = images(8) else { unreachable!() };
        let batch = m.predict(&Inputs::Images(x.shallow_clone()), PER_TASK).unwrap().features.unwrap();
        (0..4)
            .map(|i| {
                let one = m.predict(&Inputs::Images(x.narrow(0, i, 1)), PER_TASK).unwrap().features.unwrap();
                (one - batch.narrow(0, i, 1)).abs().max().double_value(&[])
            })
            .fold(0.0, f64::max)
    };
    let correct = build("l2p", base);
    assert!(alone_vs_batch(&*correct) < 1e-5, "{}", alone_vs_batch(&*correct));
    let official = build("l2p", &format!("{base}\nprefix_layout = \"official\""));
    assert!(alone_vs_batch(&*official) > 1e-3, "the official layout mixes samples");
    let frozen = tch::no_grad(|| ctx().backbone.query(&images(8)).unwrap());
    let f = correct.predict(&images(8), PER_TASK).unwrap().features.unwrap();
    assert!((f - frozen).abs().max().double_value(&[]) > 1e-3, "the prefixes act");
}

/// L2P's prefix pool as experts: a zero-init gate and a LoRA (B = 0) start it
/// as the frozen model; pool, generator, gate and LoRA are one set each that
/// keeps training from task to task. Token prompts take no expert, and a
/// prefix pool has no prompt tokens for the head to average: both errors.
#[test]
fn l2p_prefix_pool_takes_experts_and_trains_them_in_every_task() {
    let params = "pool_size = 6\ntop_k = 2\nlength = 3\nprefix_layers = [0, 1]\nhead_input = \"token\"\n\
                  prompt = { param = \"reparam-mlp\", reparam_hidden = 8, gate = \"zero-init\" }\nlora = { rank = 2 }";
    let mut m = build("l2p", params);
    predicts_as_the_frozen_model(&mut *m);
    assert!(!m.vars().variables().keys().any(|k| k.contains("stored") || k.contains("sealed") || k == "prompt.1"), "one pool, never sealed");
    train(&mut *m, 0, 2);
    m.end_task(&task(0), &mut Held(vec![])).unwrap();
    let before = snapshot(&*m, "prompt");
    m.begin_task(&task(1)).unwrap();
    m.train_step(&images(4), &labels(1), &task(1)).unwrap().loss.backward();
    for name in ["zero_gate.0", "lora.b.0", "lora.a.0", "prompt.0", "prompt_key", "prompt_gen.0.fc1.weight"] {
        assert!(has_grad(&var(&*m, name)), "{name} trains in task 1");
    }
    train(&mut *m, 1, 1);
    assert!(before.iter().any(|(k, v)| !v.equal(&var(&*m, k))), "the pool moves in task 1");
    let err = build_err("l2p", "prompt = { param = \"reparam-mlp\" }");
    assert!(err.contains("set prefix_layers"), "{err}");
    let err = build_err("l2p", "prefix_layers = [0]");
    assert!(err.contains("set head_input"), "{err}");
}
