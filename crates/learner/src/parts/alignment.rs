//! Classifier alignment on Gaussian pseudo-features (HiDe-Prompt's TAP and
//! TII refinement, WAVE-CRE's replay, HierC's statistics): fit per-class
//! statistics without keeping any example, then retrain a head on samples of
//! every seen class, as the official `train_task_adaptive_prediction`.

use std::ops::Range;

use tch::{Kind, Tensor};

use crate::optim::{Schedule, StageOptim};
use crate::stage::{Stage, StageData};
use crate::stats::ClassStats;
use crate::Result;

/// Fits each class of `classes` from its rows of `x` (`[N, D]`, labels `y` `[N]`).
pub fn fit_classes(stats: &mut ClassStats, classes: Range<usize>, x: &Tensor, y: &Tensor, seed: impl Fn(usize) -> u64) -> Result<()> {
    for c in classes {
        let idx = y.eq(c as i64).nonzero().squeeze_dim(1);
        stats.fit(c, &x.index_select(0, &idx), seed(c))?;
    }
    Ok(())
}

/// One epoch of alignment data: `per_class` samples of every class of
/// `seen`, shuffled, cut into `steps` batches of `per_class` (the official
/// code takes `#old classes` steps, so the tail of the draw goes unused).
pub fn pseudo_batches(stats: &ClassStats, seen: Range<usize>, per_class: i64, steps: usize) -> Vec<(Tensor, Tensor)> {
    pseudo_batches_drawn(stats, seen, per_class, per_class, steps)
}

/// [`pseudo_batches`] drawing `draw` samples per class and cutting batches
/// of `batch`: thu-ml's HiDe-Prompt and HierC draw `batch` per centroid of a
/// multi-centroid class (so `draw = batch · k`), of which the `#old classes`
/// steps use a fraction.
pub fn pseudo_batches_drawn(stats: &ClassStats, seen: Range<usize>, draw: i64, batch: i64, steps: usize) -> Vec<(Tensor, Tensor)> {
    let (x, y) = stats.sample_classes(seen, draw);
    let perm = Tensor::randperm(x.size()[0], (Kind::Int64, x.device()));
    let (x, y) = (x.index_select(0, &perm), y.index_select(0, &perm));
    (0..steps as i64)
        .map_while(|s| {
            let (start, len) = (s * batch, batch.min(x.size()[0] - s * batch));
            (len > 0).then(|| (x.narrow(0, start, len), y.narrow(0, start, len)))
        })
        .collect()
}

/// The alignment stage over the variables under `trains`: SGD (momentum
/// 0.9), cosine per epoch, no gradient clipping, no weight decay. The
/// official SGD constructor says 5e-4, but its parameter group carries
/// `args.weight_decay`, which is 0.0: `--weight-decay` (default 0.0) and
/// `--weight_decay` (default 5e-4) share one argparse destination and the
/// first default wins. [`Stage::weight_decay`] gives 5e-4 back.
pub fn stage(name: &'static str, epochs: usize, lr: f64, trains: &str) -> Stage {
    let optim = StageOptim::sgd(lr, 0.9).schedule(Schedule::CosineEpoch);
    Stage::new(name, epochs, optim, StageData::Generated).only(&[(trains, 1.0)])
}

/// The optimizer of an alignment stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlignOptimizer {
    /// [`stage`]'s SGD (HiDe-Prompt's TAP and TII refinement).
    #[default]
    Sgd,
    /// Adam at a constant rate, no weight decay (the WAVE-CRE group's
    /// `train_classifier`, CRE-Prompt `methods/manager.py`).
    Adam,
}

impl AlignOptimizer {
    pub fn stage(self, name: &'static str, epochs: usize, lr: f64, trains: &str) -> Stage {
        match self {
            Self::Sgd => stage(name, epochs, lr, trains),
            Self::Adam => Stage::new(name, epochs, StageOptim::adam(lr), StageData::Generated).only(&[(trains, 1.0)]),
        }
    }
}
