//! FeCAM's classifier against `data-scripts/gen_fecam_fixtures.py` (the
//! official ViT script's shrinkage, correlation and pinv in numpy f64), and
//! the method's properties.

use promptcl_learner::drive::Held;
use promptcl_learner::l2_normalize;
use promptcl_learner::methods::fecam::{class_statistics, mahalanobis, pilot_statistics, Params};
use promptcl_learner::{registry, Inputs, OptimConfig, TaskInfo};
use tch::{Device, Kind, Tensor};

mod common;

fn golden() -> std::collections::HashMap<String, Tensor> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fecam_golden.safetensors");
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// Distances equal the official computation within 1e-8 (f64), for the
/// CIFAR-100 (1, 0) and the ImageNet-R (10, 10) shrinkage.
#[test]
fn distances_match_the_official_script() {
    let g = golden();
    let (f, y) = (&g["features"], &g["labels"]);
    for (name, a1, a2) in [("cifar", 1.0, 0.0), ("imr", 10.0, 10.0)] {
        let p = Params { shrink_diagonal: a1, shrink_off_diagonal: a2, ..Params::default() };
        let (means, inverses): (Vec<Tensor>, Vec<Tensor>) =
            (0..3).map(|c| class_statistics(&f.index_select(0, &y.eq(c).nonzero().squeeze_dim(1)), &p)).unzip();
        let d = mahalanobis(&g["test"], &Tensor::stack(&means, 0), &Tensor::stack(&inverses, 0));
        let err = (&d - &g[&format!("{name}.distances")]).abs().max().double_value(&[]);
        assert!(err < 1e-8, "{name}: {err}");
    }
}

/// LAMDA-PILOT's recipe (raw features, `corrcoef(S + 100·I)`, pinv,
/// normalised x and μ): within 1e-8 of its float64 twin with float32's
/// cut-off, and within 1e-5 of PILOT's own float32 computation.
#[test]
fn pilot_distances_match_lamda_pilot() {
    let g = golden();
    let (f, y) = (&g["pilot.features"], &g["labels"]);
    let (means, inverses): (Vec<Tensor>, Vec<Tensor>) =
        (0..3).map(|c| pilot_statistics(&f.index_select(0, &y.eq(c).nonzero().squeeze_dim(1)), 100.0)).unzip();
    let d = mahalanobis(&l2_normalize(&g["pilot.test"], 1), &l2_normalize(&Tensor::stack(&means, 0), 1), &Tensor::stack(&inverses, 0));
    let rel = |want: &Tensor| ((&d - want).abs().max() / want.abs().max()).double_value(&[]);
    assert!(rel(&g["pilot.distances"]) < 1e-8, "{}", rel(&g["pilot.distances"]));
    assert!(rel(&g["pilot.distances.f32"]) < 1e-5, "{}", rel(&g["pilot.distances.f32"]));
}

/// No training; the class of least distance wins; a class with one sample is
/// a clear error, not a NaN covariance.
#[test]
fn fecam_trains_nothing_and_predicts_the_nearest_class() {
    let ctx = common::vit_ctx(2, 2, OptimConfig::default(), None);
    let mut m = registry::build("fecam", &ctx, &toml::Table::new()).unwrap();
    assert!(m.stages(&TaskInfo::new(0, 2, 0..2, 0..2), &OptimConfig::default()).is_empty());
    tch::manual_seed(3);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1, 0, 1]);
    let info = TaskInfo::new(0, 2, 0..2, 0..2);
    m.end_task(&info, &mut Held(vec![(Inputs::Images(x.shallow_clone()), y.shallow_clone())])).unwrap();
    let logits = tch::no_grad(|| m.predict(&Inputs::Images(x.shallow_clone()), 2)).unwrap().logits;
    assert_eq!(logits.size(), [8, 2]);
    // Training samples sit closer to their own class (its covariance was fitted on them).
    let pred = logits.argmax(1, false);
    assert!(pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) >= 6, "{pred:?}");
    let lonely = Tensor::from_slice(&[2i64, 3, 3]);
    let x3 = Inputs::Images(x.narrow(0, 0, 3));
    let err = m.end_task(&TaskInfo::new(1, 2, 2..4, 0..4), &mut Held(vec![(x3, lonely)])).unwrap_err().to_string();
    assert!(err.contains("class 2 has 1 training sample"), "{err}");
}
