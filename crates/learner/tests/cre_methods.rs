//! Properties of the rehearsal-free relation-extraction methods on a tiny
//! random BERT reading packed text batches: no example is retained, finished
//! pools stay frozen, the predictor covers every seen relation.

use std::collections::BTreeMap;
use std::rc::Rc;

use promptcl_learner::{drive, registry, Backbone, ContinualMethod, Encoder, Inputs, MethodContext, OptimConfig, TaskInfo};
use promptcl_model::{frozen_bert, BertConfig};
use promptcl_stream::text::{pack, EncodedText};
use tch::{Device, Kind, Tensor};

const TASKS: usize = 3;
const PER_TASK: usize = 2;

fn ctx() -> MethodContext {
    let cfg = BertConfig {
        vocab_size: 50,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 32,
        ..BertConfig::default()
    };
    tch::manual_seed(1);
    let (vars, bert) = frozen_bert(&cfg, None, Device::Cpu).unwrap();
    MethodContext {
        backbone: Rc::new(Backbone::new(Encoder::Bert(bert), vars)),
        num_classes: TASKS * PER_TASK,
        num_tasks: TASKS,
        task_sizes: vec![PER_TASK; TASKS],
        optim: OptimConfig::default(),
        device: Device::Cpu,
        seed: 5,
        groups: None,
    }
}

const WAVE: &str = "layers = [0, 1]\npool_size = 4\ntop_k = 2\ntii_epochs = 1\ntii_align_epochs = 2\nalign_epochs = 2";

fn build(name: &str, params: &str) -> Box<dyn ContinualMethod> {
    registry::build(name, &ctx(), &toml::from_str(params).unwrap()).unwrap()
}

fn task(t: usize) -> TaskInfo {
    TaskInfo::new(t, TASKS, t * PER_TASK..(t + 1) * PER_TASK, 0..(t + 1) * PER_TASK)
}

/// `n` random sentences of task `t` (labels alternate over its classes).
fn batch(t: usize, n: usize, seed: u64) -> (Inputs, Tensor) {
    let mut rng = promptcl_stream::SplitMix64::new(seed);
    let texts: Vec<EncodedText> = (0..n)
        .map(|_| {
            let len = 6 + rng.below(6) as usize;
            let mut ids: Vec<u32> = (0..len).map(|_| 5 + rng.below(45) as u32).collect();
            ids[0] = 2;
            ids[len - 1] = 3;
            EncodedText { ids, head: 1 + rng.below(2) as usize, tail: 3 + rng.below(2) as usize }
        })
        .collect();
    let refs: Vec<&EncodedText> = texts.iter().collect();
    let labels: Vec<i64> = (0..n).map(|i| (t * PER_TASK + i % PER_TASK) as i64).collect();
    (Inputs::Text(pack(&refs, Device::Cpu)), Tensor::from_slice(&labels))
}

/// Every stage of task `t`: one epoch of `steps` batches; `n` examples for the statistics.
fn train_task(m: &mut dyn ContinualMethod, t: usize, n: usize, steps: usize) {
    let train: Vec<_> = (0..steps).map(|s| batch(t, 8, (t * 100 + s) as u64)).collect();
    let data: Vec<_> = (0..n.div_ceil(8)).map(|i| batch(t, 8.min(n - 8 * i), 1000 + (t * 10 + i) as u64)).collect();
    let optim = OptimConfig { epochs: 1, lr: 0.01, scale_lr_by_batch: false, ..OptimConfig::default() };
    drive::run_task(m, &task(t), &optim, &train, &mut drive::Held(data)).unwrap();
}

fn shapes(m: &dyn ContinualMethod) -> BTreeMap<String, Vec<i64>> {
    m.vars().variables().into_iter().map(|(k, v)| (k, v.size())).collect()
}

#[test]
fn wave_cre_keeps_no_example_only_parameters_and_statistics() {
    // The same stream seen with 10 or 30 examples per task leaves state of identical shape:
    // nothing grows with the data, so no example (or its feature) can be stored.
    let (mut small, mut large) = (build("wave-cre", WAVE), build("wave-cre", WAVE));
    let before = shapes(&*small);
    for t in 0..2 {
        train_task(&mut *small, t, 10, 2);
        train_task(&mut *large, t, 30, 2);
    }
    assert_eq!(shapes(&*small), before);
    assert_eq!(shapes(&*large), before);
    for (name, dims) in &before {
        assert!(!dims.contains(&10) && !dims.contains(&30), "{name} {dims:?} has a data-sized dimension");
    }
}

#[test]
fn wave_cre_freezes_finished_pools_and_trains_only_the_current_one() {
    let mut m = build("wave-cre", WAVE);
    train_task(&mut *m, 0, 8, 3);
    let vars = m.vars().variables();
    let snapshot: BTreeMap<String, Tensor> =
        vars.iter().filter(|(k, _)| k.starts_with("e_prompt.0") || k.starts_with("e_key.0")).map(|(k, v)| (k.clone(), v.copy())).collect();
    assert_eq!(snapshot.len(), 2);
    // One step of task 1: gradient reaches pool 1 (prompts and keys), never pool 0.
    let info = task(1);
    m.begin_task(&info).unwrap();
    let (x, y) = batch(1, 8, 9);
    let prompt = m.stages(&info, &OptimConfig::default()).into_iter().find(|s| s.name == "prompt").unwrap();
    m.train_step(&x, &y, &info.in_stage(&prompt)).unwrap().loss.backward();
    let grad = |name: &str| vars[name].grad().defined() && vars[name].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
    assert!(grad("e_prompt.1") && grad("e_key.1"), "the current pool learns");
    assert!(!grad("e_prompt.0") && !grad("e_key.0") && !grad("e_prompt.2"), "other pools get no gradient");
    train_task(&mut *m, 1, 8, 3);
    for (k, v) in &snapshot {
        assert!(m.vars().variables()[k].equal(v), "{k} changed after task 1");
    }
}

#[test]
fn wave_cre_predictor_covers_every_seen_relation() {
    let mut m = build("wave-cre", WAVE);
    for t in 0..2 {
        train_task(&mut *m, t, 8, 2);
    }
    let vars = m.vars().variables();
    for stats in ["tii_stats.fitted", "tap_stats.fitted"] {
        let fitted: Vec<f64> = Vec::try_from(&vars[stats]).unwrap();
        assert_eq!(fitted, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0], "{stats}: every seen relation, no unseen one");
    }
    // Each seen relation's query mean is routed to that relation's task.
    let mean: Tensor = vars["tii_stats.mean"].narrow(0, 0, 4);
    let (x, _) = batch(0, 4, 77);
    let p = m.predict(&x, 4).unwrap();
    assert_eq!(p.logits.size(), [4, 4]);
    let ids: Vec<i64> = Vec::try_from(p.task_ids.unwrap()).unwrap();
    assert!(ids.iter().all(|&t| t == 0 || t == 1));
    assert_eq!(mean.size(), [4, 64], "queries are [h(E11); h(E21)]");
}

/// The official shared covariance (Dicer-Zz/EPI): per task the mean of its
/// classes' `torch.cov` of the frozen queries, averaged over tasks; the
/// precision is its Hermitian pseudo-inverse.
#[test]
fn epi_shares_the_official_covariance() {
    // One context: the frozen encoder is drawn from libtorch's global generator, which parallel tests share.
    let ctx = ctx();
    let mut m = promptcl_learner::methods::epi::Epi::new(&ctx, Default::default()).unwrap();
    let backbone = ctx.backbone.clone();
    let mut per_task = Vec::new();
    for t in 0..TASKS {
        train_task(&mut m, t, 16, 1);
        // The data `train_task` hands to `end_task`, through the same frozen encoder.
        let (qs, ys): (Vec<Tensor>, Vec<Tensor>) =
            (0..2).map(|i| batch(t, 8, 1000 + (t * 10 + i) as u64)).map(|(x, y)| (backbone.query(&x).unwrap(), y)).unzip();
        let (q, y) = (Tensor::cat(&qs, 0), Tensor::cat(&ys, 0));
        let covs: Vec<Tensor> = (t * PER_TASK..(t + 1) * PER_TASK)
            .map(|c| q.index_select(0, &y.eq(c as i64).nonzero().squeeze_dim(1)).tr().cov(1, None::<Tensor>, None::<Tensor>))
            .collect();
        per_task.push(Tensor::stack(&covs, 0).mean_dim(0, false, Kind::Float));
    }
    let want = Tensor::stack(&per_task, 0).mean_dim(0, false, Kind::Float);
    let vars = m.vars().variables();
    let got = &vars["query_cov_sum"] / &vars["query_tasks"];
    let scale = want.abs().max().double_value(&[]);
    let err = (&got - &want).abs().max().double_value(&[]);
    assert!(err < 1e-5 * scale, "shared covariance: {err} at scale {scale}");
    let p = &vars["query_precision"];
    let apa = want.matmul(p).matmul(&want);
    assert!((apa - &want).abs().max().double_value(&[]) < 1e-3 * scale, "a pseudo-inverse: A·P·A = A");
}

#[test]
fn epi_identifies_the_task_of_a_class_mean() {
    let mut m = promptcl_learner::methods::epi::Epi::new(&ctx(), Default::default()).unwrap();
    for t in 0..TASKS {
        train_task(&mut m, t, 16, 1);
    }
    let means = m.vars().variables()["query_mean"].shallow_clone();
    let tasks = m.identify(&means, TASKS * PER_TASK);
    assert_eq!(tasks, [0, 0, 1, 1, 2, 2]);
    let (x, _) = batch(1, 5, 3);
    let p = m.predict(&x, 6).unwrap();
    // Only the identified task's classes are finite.
    let finite: Vec<i64> = Vec::try_from(p.logits.isfinite().sum_dim_intlist(1, false, Kind::Int64)).unwrap();
    assert!(finite.iter().all(|&n| n == PER_TASK as i64), "{finite:?}");
}
