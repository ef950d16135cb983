//! The composable hierarchical-OT regulariser (HierC) on any method: it adds
//! its loss, keeps W symmetric over seen classes (W_ii from two draws, as HierC), grows
//! the label tree with the stream, and the Mahalanobis evaluation variant
//! scores only classes of the tree.

use promptcl_learner::{drive, registry, ContinualMethod, Inputs, MethodContext, OptimConfig, TaskInfo};
use tch::{Device, Kind, Tensor};

mod common;

const TASKS: usize = 3;
const PER_TASK: usize = 4;

/// Groups of incremental labels: {0, 4, 8}, {1, 5, 9}, {2, 6, 10}, {3, 7, 11}.
fn ctx() -> MethodContext {
    common::vit_ctx(
        TASKS,
        PER_TASK,
        OptimConfig { epochs: 1, batch_size: 8, ..OptimConfig::default() },
        Some((0..TASKS * PER_TASK).map(|c| c % 4).collect()),
    )
}

const REG: &str = r#"
pool_size = 6
top_k = 2
length = 3
head_input = "token"
regularizers = [{ kind = "hierarchical-ot", statistics = "covariance", ot_samples = 6, old_samples = 8, reg_glob = 1.0, reg_sub = 1.0, mahalanobis_eval = true }]
"#;

fn task(t: usize) -> TaskInfo {
    TaskInfo::new(t, TASKS, t * PER_TASK..(t + 1) * PER_TASK, 0..(t + 1) * PER_TASK)
}

fn batch(t: usize, seed: i64) -> (Inputs, Tensor) {
    tch::manual_seed(seed);
    let labels: Vec<i64> = (0..8).map(|i| (t * PER_TASK + i % PER_TASK) as i64).collect();
    // Class-dependent images so the statistics differ between classes.
    let y = Tensor::from_slice(&labels);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.5 + y.to_kind(Kind::Float).view([8, 1, 1, 1]) * 0.3;
    (Inputs::Images(x), y)
}

/// Every stage of task `t`, one epoch over three batches.
fn run_task(m: &mut dyn ContinualMethod, t: usize) {
    let data: Vec<_> = (0..3).map(|s| batch(t, (10 * t + s) as i64)).collect();
    let again: Vec<_> = (0..3).map(|s| batch(t, (10 * t + s) as i64)).collect();
    let optim = OptimConfig { epochs: 1, lr: 0.01, scale_lr_by_batch: false, ..OptimConfig::default() };
    drive::run_task(m, &task(t), &optim, &data, &mut drive::Held(again)).unwrap();
}

/// L2P with `params`, trained on the first `tasks` tasks.
fn trained(params: &toml::Table, tasks: usize) -> Box<dyn ContinualMethod> {
    let mut m = registry::build("l2p", &ctx(), params).unwrap();
    for t in 0..tasks {
        run_task(&mut *m, t);
    }
    m
}

#[test]
fn regularizer_adds_its_loss_to_any_method() {
    let params: toml::Table = toml::from_str(REG).unwrap();
    let mut plain_params = params.clone();
    plain_params.remove("regularizers");
    let (mut with, mut without) = (registry::build("l2p", &ctx(), &params).unwrap(), registry::build("l2p", &ctx(), &plain_params).unwrap());
    let (x, y) = batch(0, 1);
    let a = with.train_step(&x, &y, &task(0)).unwrap().loss.double_value(&[]);
    let b = without.train_step(&x, &y, &task(0)).unwrap().loss.double_value(&[]);
    assert!(a > b + 1e-6, "SupCon terms are positive: {a} vs {b}");
    assert!(with.vars().variables().contains_key("reg0.ot_distance"), "state lives in the method's store");
    let e = registry::build("l2p", &MethodContext { groups: None, ..ctx() }, &params).err().unwrap().to_string();
    assert!(e.contains("label tree"), "{e}");
    let bad: toml::Table = toml::from_str("regularizers = [{ kind = \"hierarchical-ot\", solver = \"magic\" }]").unwrap();
    assert!(registry::check("l2p", &bad).unwrap_err().to_string().contains("magic"));
    let typo: toml::Table = toml::from_str("regularizers = [{ kind = \"hierarchical-ot\", reg_glb = 1.0 }]").unwrap();
    assert!(registry::check("l2p", &typo).is_err());
}

#[test]
fn distances_cover_seen_pairs_symmetrically_and_rescoring_follows_the_tree() {
    let params: toml::Table = toml::from_str(REG).unwrap();
    let mut m = registry::build("l2p", &ctx(), &params).unwrap();
    for t in 0..2 {
        run_task(&mut *m, t);
        let w = m.vars().variables()["reg0.ot_distance"].shallow_clone();
        let seen = ((t + 1) * PER_TASK) as i64;
        let ws = w.narrow(0, 0, seen).narrow(1, 0, seen);
        assert!(ws.equal(&ws.tr()), "W symmetric");
        // HierC's update_WSM runs i = j too: two draws of one class are apart.
        assert!(ws.diagonal(0, 0, 1).min().double_value(&[]) > 0.0, "W_ii > 0");
        let off = ws.masked_select(&Tensor::eye(seen, (Kind::Bool, Device::Cpu)).logical_not());
        assert!(off.min().double_value(&[]) > 0.0, "every seen pair has a distance");
        let unseen = w.narrow(0, seen, w.size()[0] - seen);
        assert_eq!(unseen.abs().sum(Kind::Float).double_value(&[]), 0.0, "no distance for unseen classes");
        let gamma = promptcl_learner::ot::affinity(&ws, 1.0);
        assert!(gamma.diagonal(0, 0, 1).lt(1.0).all().int64_value(&[]) == 1, "Γ_ii < 1");
    }
    let mut zero = REG.replace("mahalanobis_eval = true", "mahalanobis_eval = true, self_distance = false");
    zero.push('\n');
    let mut m0 = registry::build("l2p", &ctx(), &toml::from_str(&zero).unwrap()).unwrap();
    run_task(&mut *m0, 0);
    let w0 = m0.vars().variables()["reg0.ot_distance"].shallow_clone();
    assert_eq!(w0.diagonal(0, 0, 1).abs().max().double_value(&[]), 0.0, "self_distance = false: zero diagonal");
    let (x, _) = batch(1, 99);
    let p = m.predict(&x, 8).unwrap();
    assert_eq!(p.logits.size(), [8, 8]);
    assert!(p.logits.isfinite().all().int64_value(&[]) == 1, "every seen class belongs to a group");
}

/// HierC's `_compute_mean_org` runs at the start of each task, so W covers
/// the task's own classes before its first step (and Γ weighs their pairs
/// while it trains).
#[test]
fn distances_of_a_task_exist_before_it_trains() {
    let params: toml::Table = toml::from_str(REG).unwrap();
    let mut m = registry::build("l2p", &ctx(), &params).unwrap();
    m.begin_task(&task(0)).unwrap();
    let w = m.vars().variables()["reg0.ot_distance"].shallow_clone();
    assert_eq!(w.abs().sum(Kind::Float).double_value(&[]), 0.0, "nothing before the task");
    let data: Vec<_> = (0..3).map(|s| batch(0, s as i64)).collect();
    m.prepare_task(&task(0), &mut drive::Held(data)).unwrap();
    let n = PER_TASK as i64;
    let ws = w.narrow(0, 0, n).narrow(1, 0, n);
    let off = ws.masked_select(&Tensor::eye(n, (Kind::Bool, Device::Cpu)).logical_not());
    assert!(off.min().double_value(&[]) > 0.0, "every pair of the task's classes has its distance before training");
}

#[test]
fn mahalanobis_distance_is_zero_at_the_mean_and_matches_the_covariance() {
    let p = tch::nn::VarStore::new(Device::Cpu);
    let mut stats = promptcl_learner::stats::ClassStats::new(&p.root(), promptcl_learner::stats::StatsKind::Covariance, 2, 3, 1);
    tch::manual_seed(0);
    let a = Tensor::randn([50, 3], (Kind::Float, Device::Cpu)) * Tensor::from_slice(&[1.0f32, 2.0, 0.5]);
    stats.fit(0, &a, 1).unwrap();
    stats.fit(1, &(a.shallow_clone() + 5.0), 1).unwrap();
    let mean = a.mean_dim(0, true, Kind::Float);
    let d = stats.mahalanobis(&mean, 2);
    assert!(d.double_value(&[0, 0]) < 1e-4);
    let x = &mean + Tensor::from_slice(&[0.0f32, 1.0, 0.0]).unsqueeze(0);
    let cov = stats.covariance(0);
    let diff = Tensor::from_slice(&[0.0f32, 1.0, 0.0]);
    let want = diff.dot(&cov.inverse().mv(&diff)).sqrt().double_value(&[]);
    assert!((stats.mahalanobis(&x, 1).double_value(&[0, 0]) - want).abs() < 1e-4);
}

/// The official engine's `old_data` never reaches the cluster loss; the
/// default joins earlier-class pseudo-features as the paper describes, and
/// `old_data_reaches_loss = false` reproduces the official loss: the batch's
/// alone, as with no earlier classes.
#[test]
fn the_official_old_data_bug_is_one_switch_away() {
    let loss = |extra: &str, t: usize| {
        let text = REG.replace("mahalanobis_eval = true", &format!("mahalanobis_eval = true{extra}"));
        let mut m = trained(&toml::from_str(&text).unwrap(), t);
        m.begin_task(&task(t)).unwrap();
        let (x, y) = batch(t, 5);
        tch::manual_seed(11);
        m.train_step(&x, &y, &task(t)).unwrap().loss.double_value(&[])
    };
    assert!((loss("", 1) - loss(", old_data_reaches_loss = false", 1)).abs() > 1e-6, "pseudo-features change the loss");
    // In the first task there are no earlier classes either way.
    assert_eq!(loss("", 0), loss(", old_data_reaches_loss = false", 0));
}

/// HierC's evaluation distance (`distance_to_gmm`): per centroid
/// `√(Σ diff² / (var + 1e-6))` with the centroid's raw variance, the nearest
/// centroid's.
#[test]
fn hierc_evaluation_distance_uses_the_raw_centroid_variance() {
    use promptcl_learner::stats::{ClassStats, StatsKind};
    let p = tch::nn::VarStore::new(Device::Cpu);
    let mut stats = ClassStats::new(&p.root(), StatsKind::MultiCentroid, 1, 2, 2);
    // Two tight, far-apart clusters: k-means finds them.
    let a = Tensor::from_slice(&[0.0f32, 0.0, 0.02, 0.0, 0.0, 0.01, 10.0, 10.0, 10.03, 10.0, 10.0, 10.01]).view([6, 2]);
    stats.fit(0, &a, 3).unwrap();
    let x = Tensor::from_slice(&[0.05f32, 0.02]).view([1, 2]);
    let near = a.narrow(0, 0, 3);
    let (mu, var) = (near.mean_dim(0, false, Kind::Float), near.var_dim(0, false, false));
    let want = ((x.squeeze_dim(0) - mu).square() / (var + 1e-6)).sum(Kind::Float).sqrt().double_value(&[]);
    let got = stats.mahalanobis_hierc(&x, 1).double_value(&[0, 0]);
    assert!((got - want).abs() < 1e-3 * want, "{got} vs {want}");
    // The sampling variance (raw + 1e-4) gives another, smaller distance here.
    assert!(stats.mahalanobis(&x, 1).double_value(&[0, 0]) < 0.9 * want);
}

/// `process_MHD` weighs distances by `1/exp(W_eval/delta2)` with W_eval's
/// diagonal zeroed: the diagonal never matters, and `delta2` does.
#[test]
fn hierc_evaluation_ignores_w_evals_diagonal_and_reads_delta2() {
    let params: toml::Table = toml::from_str(REG).unwrap();
    let m = trained(&params, 2);
    let w = m.vars().variables()["reg0.ot_distance_eval"].shallow_clone();
    let (x, _) = batch(1, 99);
    let predict = |w_value: &Tensor| {
        tch::no_grad(|| w.shallow_clone().copy_(w_value));
        m.predict(&x, 8).unwrap().logits
    };
    let n = w.size()[0];
    let zero = Tensor::zeros([n, n], (Kind::Float, Device::Cpu));
    let diagonal = Tensor::eye(n, (Kind::Float, Device::Cpu)) * 50.0;
    assert!(predict(&zero).equal(&predict(&diagonal)), "the diagonal is zeroed");
    let off = Tensor::ones([n, n], (Kind::Float, Device::Cpu)) * 5.0 - &diagonal / 10.0;
    let a = predict(&off);
    let mut sharper = params.clone();
    sharper["regularizers"].as_array_mut().unwrap()[0].as_table_mut().unwrap().insert("delta2".into(), toml::Value::Float(1.0));
    let m2 = trained(&sharper, 2);
    tch::no_grad(|| m2.vars().variables()["reg0.ot_distance_eval"].shallow_clone().copy_(&off));
    let b = m2.predict(&x, 8).unwrap().logits;
    assert!((a - b).abs().max().double_value(&[]) > 1e-6, "delta2 changes the weights");
}

/// HiDe-style methods train TII (no encoder features) in a stage of its own;
/// the regulariser acts in the stage that has features; its statistics are
/// the trained model's, taken after the task.
#[test]
fn statistics_are_the_trained_models_taken_after_the_task() {
    let params: toml::Table = toml::from_str(
        "layers = [0, 1]\nlength = 2\ntii_epochs = 3\ntii_align_epochs = 1\nalign_epochs = 1\nstatistics = \"variance\"\nregularizers = [{ kind = \"hierarchical-ot\", statistics = \"variance\", ot_samples = 4 }]",
    )
    .unwrap();
    let mut m = registry::build("hide-prompt", &ctx(), &params).unwrap();
    let info = task(0);
    m.begin_task(&info).unwrap();
    let (x, y) = batch(0, 1);
    for stage in m.stages(&info, &ctx().optim) {
        let step = m.train_step(&x, &y, &info.in_stage(&stage)).unwrap();
        assert_eq!(step.features.is_some(), stage.name == "prompt", "{}", stage.name);
    }
    run_task(&mut *m, 0);
    let vars = m.vars().variables();
    let fitted: Vec<f64> = Vec::try_from(&vars["reg0.feat_stats.fitted"]).unwrap();
    assert_eq!(&fitted[..PER_TASK], &[1.0; PER_TASK]);
    // After the task they are refitted from the trained model's features of the task's data
    // under the test transform (HierC's `_compute_mean`): the means are those features' class means.
    let data: Vec<_> = (0..3).map(|s| batch(0, s as i64)).collect();
    let (fs, ys): (Vec<Tensor>, Vec<Tensor>) = data.iter().map(|(x, y)| (m.task_features(x, &task(0)).unwrap().unwrap(), y.shallow_clone())).unzip();
    let (f, y) = (Tensor::cat(&fs, 0), Tensor::cat(&ys, 0));
    let means = vars["reg0.feat_stats.mean"].shallow_clone();
    for c in 0..PER_TASK as i64 {
        let want = f.index_select(0, &y.eq(c).nonzero().squeeze_dim(1)).mean_dim(0, false, Kind::Float);
        let err = (means.get(c) - want).abs().max().double_value(&[]);
        assert!(err < 1e-5, "class {c}: mean {err} from the trained model's features");
    }
}
