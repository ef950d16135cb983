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

/// A 2-layer, 32-wide BERT.
fn tiny_bert(vocab_size: i64, max_position_embeddings: i64) -> BertConfig {
    BertConfig {
        vocab_size,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings,
        ..BertConfig::default()
    }
}

fn ctx() -> MethodContext {
    tch::manual_seed(1);
    let (vars, bert) = frozen_bert(&tiny_bert(50, 32), None, Device::Cpu).unwrap();
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

/// WAVE-CRE's own schedule, shrunk: replay of 12 samples per relation, 16-wide MLP heads.
const WAVE: &str =
    "layers = [0, 1]\npool_size = 4\ntop_k = 2\ntii_align_epochs = 2\nalign_epochs = 2\nreplay_samples = 12\nhead_hidden = [16]\ntii_net = { classifier = [16] }";

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

/// Algorithm 1: the prompts (and classifier) learn from the task's data; then, after every task
/// from the first, predictor and classifier learn from Gaussian samples of all seen relations
/// only, `replay_samples` of each per epoch, in batches of `[optim].batch_size`.
#[test]
fn wave_cre_replays_every_seen_relation_after_every_task() {
    let mut m = build("wave-cre", WAVE);
    let optim = OptimConfig::default();
    for t in 0..2 {
        let info = task(t);
        let names: Vec<&str> = m.stages(&info, &optim).iter().map(|s| s.name).collect();
        assert_eq!(names, ["prompt", "tii-align", "align"], "task {t}");
        let stages = m.stages(&info, &optim);
        assert_eq!(stages[1].trains.iter().map(|g| g.prefix.as_str()).collect::<Vec<_>>(), ["tii"]);
        assert_eq!(stages[2].trains.iter().map(|g| g.prefix.as_str()).collect::<Vec<_>>(), ["head"]);
        assert_eq!(stages[1].data, promptcl_learner::StageData::Generated);
        train_task(&mut *m, t, 8, 2);
        for stage in &stages[1..] {
            let batches = m.generate(&info.in_stage(stage)).unwrap();
            let labels = Tensor::cat(&batches.iter().map(|(_, y)| y.shallow_clone()).collect::<Vec<_>>(), 0);
            let counts: Vec<i64> = Vec::try_from(labels.bincount(None::<Tensor>, 0)).unwrap();
            assert_eq!(counts, vec![12; (t + 1) * PER_TASK], "task {t} `{}`: 12 samples of every seen relation", stage.name);
            let batch = OptimConfig::default().batch_size as i64;
            assert!(
                batches.iter().all(|(x, _)| x.size()[0] <= batch) && batches[0].0.size()[0] == batch.min(labels.size()[0]),
                "batches of the run's size"
            );
        }
    }
}

/// A tiny BERT from the model crate's fixture (100 rows) grown by four
/// entity-marker rows, as the harness grows all-MiniLM-L6-v2's.
fn ctx_with_markers() -> MethodContext {
    let cfg = tiny_bert(104, 40);
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/bert_tiny_test.safetensors");
    tch::manual_seed(1);
    let (vars, bert) = frozen_bert(&cfg, Some(&weights), Device::Cpu).unwrap();
    MethodContext { backbone: Rc::new(Backbone::new(Encoder::Bert(bert), vars)), ..ctx() }
}

/// [`batch`] with markers (ids 100–103) at the head, the tail and after each.
fn marked_batch(t: usize, n: usize, seed: u64) -> (Inputs, Tensor) {
    let mut rng = promptcl_stream::SplitMix64::new(seed);
    let texts: Vec<EncodedText> = (0..n)
        .map(|_| {
            let mut ids: Vec<u32> = (0..10).map(|_| 5 + rng.below(90) as u32).collect();
            (ids[0], ids[9]) = (2, 3);
            let (head, tail) = (1 + rng.below(2) as usize, 5 + rng.below(2) as usize);
            (ids[head], ids[head + 1], ids[tail], ids[tail + 1]) = (100, 101, 102, 103);
            EncodedText { ids, head, tail }
        })
        .collect();
    let refs: Vec<&EncodedText> = texts.iter().collect();
    let labels: Vec<i64> = (0..n).map(|i| (t * PER_TASK + i % PER_TASK) as i64).collect();
    (Inputs::Text(pack(&refs, Device::Cpu)), Tensor::from_slice(&labels))
}

/// The group code's embedding training (`embedding_epochs`): a first stage of
/// the first task only, training the marker rows, position and token-type
/// embeddings and the LayerNorm (and nothing of the frozen encoder), frozen
/// afterwards; predictions read the tuned tensors.
#[test]
fn wave_cre_embedding_stage_tunes_the_markers_on_the_first_task_only() {
    let ctx = ctx_with_markers();
    let mut m = registry::build("wave-cre", &ctx, &toml::from_str(&format!("{WAVE}\nembedding_epochs = 1")).unwrap()).unwrap();
    let optim = OptimConfig { epochs: 1, lr: 0.01, scale_lr_by_batch: false, ..OptimConfig::default() };
    let names = |t: usize| -> Vec<&str> { m.stages(&task(t), &optim).iter().map(|s| s.name).collect() };
    assert_eq!(names(0), ["embeddings", "prompt", "tii-align", "align"]);
    assert_eq!(names(1), ["prompt", "tii-align", "align"]);
    let emb = |m: &dyn ContinualMethod| -> BTreeMap<String, Tensor> {
        m.vars().variables().into_iter().filter(|(k, _)| k.starts_with("embeddings.") && !k.contains(".head")).map(|(k, v)| (k, v.copy())).collect()
    };
    let start = emb(&*m);
    assert_eq!(start["embeddings.word_embeddings.new_rows"].size(), [4, 32]);
    let frozen = |k: &str| ctx.backbone.frozen_f32(k).unwrap();
    assert!(start["embeddings.word_embeddings.new_rows"].equal(&frozen("embeddings.word_embeddings.weight").narrow(0, 100, 4)));
    assert!(start["embeddings.LayerNorm.weight"].equal(&frozen("embeddings.LayerNorm.weight")));
    let encoder_before = frozen("encoder.layer.0.attention.self.query.weight");
    let run = |m: &mut dyn ContinualMethod, t: usize| {
        let train: Vec<_> = (0..3).map(|s| marked_batch(t, 8, (t * 100 + s) as u64)).collect();
        let data = vec![marked_batch(t, 8, 1000 + t as u64)];
        drive::run_task(m, &task(t), &optim, &train, &mut drive::Held(data)).unwrap();
    };
    run(&mut *m, 0);
    let tuned = emb(&*m);
    for (k, v) in &tuned {
        assert!(!v.equal(&start[k]), "`{k}` trained in the first task");
    }
    assert!(frozen("encoder.layer.0.attention.self.query.weight").equal(&encoder_before), "the encoder stays frozen");
    let (x, _) = marked_batch(1, 8, 77);
    run(&mut *m, 1);
    for (k, v) in emb(&*m) {
        assert!(v.equal(&tuned[&k]), "`{k}` frozen after the first task");
    }
    // Put the pretrained values back: the predictions move, so they read the tuned ones.
    let seen = 2 * PER_TASK;
    let tuned_logits = m.predict(&x, seen).unwrap().logits;
    tch::no_grad(|| {
        for (k, mut v) in m.vars().variables() {
            if let Some(s) = start.get(&k) {
                v.copy_(s);
            }
        }
    });
    let reset_logits = m.predict(&x, seen).unwrap().logits;
    assert!((tuned_logits - reset_logits).abs().max().double_value(&[]) > 1e-4);
    // Without markers in the vocabulary there is no row to train but the rest still is;
    // a ViT has no such layer.
    let plain = registry::build("wave-cre", &self::ctx(), &toml::from_str(&format!("{WAVE}\nembedding_epochs = 1")).unwrap()).unwrap();
    assert_eq!(plain.vars().variables()["embeddings.word_embeddings.new_rows"].size(), [0, 32]);
}

/// Eq. 15's matching term: 1 − cos summed over the K chosen keys, averaged over the batch.
#[test]
fn wave_cre_matching_sums_over_the_chosen_keys() {
    // One context: the frozen encoder is drawn from libtorch's global generator.
    let ctx = ctx();
    let with_params = |p: &str| registry::build("wave-cre", &ctx, &toml::from_str(p).unwrap()).unwrap();
    let mut m = with_params(WAVE);
    let info = task(0);
    let (x, y) = batch(0, 6, 3);
    let prompt = m.stages(&info, &OptimConfig::default()).into_iter().find(|s| s.name == "prompt").unwrap();
    let at = info.in_stage(&prompt);
    let vars = m.vars().variables();
    let keys = vars["e_key.0"].copy();
    let q = ctx.backbone.query(&x).unwrap();
    let cos = Tensor::cosine_similarity(&keys.unsqueeze(0), &q.unsqueeze(1), 2, 1e-12);
    let (top, _) = cos.topk(2, 1, true, true);
    let want = (top.ones_like() - top).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float).double_value(&[]);
    let with = m.train_step(&x, &y, &at).unwrap().loss.double_value(&[]);
    let without = with_params(&format!("{WAVE}\nmatch_weight = 0.0")).train_step(&x, &y, &at).unwrap().loss.double_value(&[]);
    assert!((with - without - 0.1 * want).abs() < 1e-5, "{with} − {without} vs 0.1 × {want}");
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
