//! RanPAC's ridge classifier against `data-scripts/gen_ridge_fixtures.py`
//! (the official `optimise_ridge_parameter` and solve, float64), and the
//! properties of the method.

use promptcl_learner::drive::Held;
use promptcl_learner::parts::ridge::{official_grid, select_lambda, solve, Ridge};
use promptcl_learner::{registry, Inputs, OptimConfig, TaskInfo};
use tch::{nn, Device, Kind, Tensor};

mod common;

/// Read with tch's reader: the labels are int64, which the weights reader refuses.
fn golden() -> std::collections::HashMap<String, Tensor> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ridge_golden.safetensors");
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Each task's λ errors and choice, and the solution from the summed
/// statistics, equal the official computation (f64, 1e-8 where the system
/// is well conditioned; the smallest λ leave it near-singular).
#[test]
fn ridge_selection_and_solve_match_the_official_code() {
    let g = golden();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut ridge = Ridge::new(&vs.root(), 48, 6);
    let grid = official_grid();
    for t in 0..2 {
        let (h, labels) = (&g[&format!("task{t}.h")], &g[&format!("task{t}.labels")]);
        ridge.add(h, labels);
        let (lambda, losses) = select_lambda(h, &labels.one_hot(6), &grid, 0.8).unwrap();
        assert_eq!(lambda, g[&format!("task{t}.lambda")].double_value(&[0]), "task {t}");
        let want: Vec<f64> = (&g[&format!("task{t}.losses")]).try_into().unwrap();
        for (i, (&l, &w)) in losses.iter().zip(&want).enumerate() {
            let tol = if grid[i] >= 1e-2 { 1e-8 } else { 1e-4 };
            assert!((l - w).abs() <= tol * w.abs().max(1.0), "task {t} λ = {:e}: {l} vs {w}", grid[i]);
        }
        let err = max_abs(&ridge.solve(lambda), &g[&format!("task{t}.w")]);
        assert!(err < 1e-8, "task {t}: W differs by {err}");
    }
}

/// The classifier after T tasks equals the one from all tasks' statistics at
/// once; an empty grid or an unsplittable task is an error.
#[test]
fn accumulated_statistics_equal_one_pass_over_all_tasks() {
    let g = golden();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut per_task = Ridge::new(&(vs.root() / "a"), 48, 6);
    let mut at_once = Ridge::new(&(vs.root() / "b"), 48, 6);
    per_task.add(&g["task0.h"], &g["task0.labels"]);
    per_task.add(&g["task1.h"], &g["task1.labels"]);
    at_once.add(&Tensor::cat(&[&g["task0.h"], &g["task1.h"]], 0), &Tensor::cat(&[&g["task0.labels"], &g["task1.labels"]], 0));
    assert!(max_abs(&per_task.solve(100.0), &at_once.solve(100.0)) < 1e-9);
    // Against a direct inverse, where the system is well conditioned.
    let h = &g["task0.h"];
    let (gram, cross) = (h.tr().matmul(h), h.tr().matmul(&g["task0.labels"].one_hot(6).to_kind(Kind::Double)));
    let direct = (&gram + Tensor::eye(48, (Kind::Double, Device::Cpu)) * 10.0).inverse().matmul(&cross);
    assert!(max_abs(&solve(&gram, &cross, 10.0), &direct) < 1e-10);
    assert!(select_lambda(h, &g["task0.labels"].one_hot(6), &[], 0.8).unwrap_err().to_string().contains("grid is empty"));
    assert!(select_lambda(&h.narrow(0, 0, 1), &g["task0.labels"].narrow(0, 0, 1).one_hot(6), &[1.0], 0.8).is_err());
}

fn images(seed: i64, n: i64) -> Inputs {
    tch::manual_seed(seed);
    Inputs::Images(Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu)))
}

/// Only the first task trains; after a task the classifier is the ridge
/// solution on the projected features (linear scoring: logits = h·W), and
/// the backbone never gets a gradient. Too wide a projection is refused.
#[test]
fn ranpac_trains_once_and_scores_with_the_ridge_solution() {
    let ctx = common::vit_ctx(3, 2, OptimConfig::default(), None);
    let params: toml::Table = toml::from_str("ffn_num = 8\nprojection = 32").unwrap();
    let mut m = registry::build("ranpac", &ctx, &params).unwrap();
    let optim = OptimConfig::default();
    assert_eq!(m.stages(&TaskInfo::new(0, 3, 0..2, 0..2), &optim).len(), 1);
    assert!(m.stages(&TaskInfo::new(1, 3, 2..4, 0..4), &optim).is_empty());
    let info = TaskInfo::new(0, 3, 0..2, 0..2);
    let y = Tensor::from_slice(&[0i64, 1, 0, 1, 1, 0, 1, 0, 0, 1]);
    m.train_step(&images(1, 10), &y, &info).unwrap().loss.backward();
    assert!(ctx.backbone.vars.variables().values().all(|t| !t.grad().defined()), "the backbone gets no gradient");
    m.end_task(&info, &mut Held(vec![(images(2, 10), y.shallow_clone())])).unwrap();
    let logits = tch::no_grad(|| m.predict(&images(3, 4), 2)).unwrap().logits;
    assert_eq!(logits.size(), [4, 2]);
    let vars = m.vars().variables();
    let h = tch::no_grad(|| {
        let f = ctx.backbone.forward(&images(3, 4), &promptcl_model::Prompts::none()).unwrap().feature;
        f.matmul(&vars["w_rand"]).relu()
    });
    // Zero-initialised adapters: the adapted feature is the frozen one.
    let want = h.matmul(&vars["w_out"].narrow(1, 0, 2));
    assert!(max_abs(&logits, &want) < 1e-4, "{}", max_abs(&logits, &want));

    let empty: toml::Table = toml::from_str("ridge_grid = []").unwrap();
    let err = registry::check("ranpac", &empty).unwrap_err().to_string();
    assert!(err.contains("ridge_grid is empty"), "config validation names the empty grid: {err}");
    let huge: toml::Table = toml::from_str("projection = 2000000").unwrap();
    let err = registry::build("ranpac", &ctx, &huge).err().expect("too wide").to_string();
    assert!(err.contains("projection = 2000000") && err.contains("lower `projection`"), "{err}");
}
