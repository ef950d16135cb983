//! Task-identity inference (HiDe-Prompt / NoRGa `MlpMapping` + head on the
//! frozen, un-prompted query; WAVE-CRE's task predictor): trained per task
//! with cross-entropy masked to the task's classes, then refined on Gaussian
//! pseudo-queries of every seen class; its predicted class decides the task.

use std::ops::Range;

use tch::{nn, nn::Module, Tensor};

use super::alignment;
use crate::methods::common::{ce_step, head, linear, mask_outside, LinearInit};
use crate::stats::{ClassStats, StatsKind};
use crate::{MethodContext, Result, Step};

/// The variables' prefix: stages that train TII name it.
pub const NAME: &str = "tii";

pub struct TaskIdentity {
    layers: Vec<nn::Linear>,
    norm_w: Tensor,
    norm_b: Tensor,
    head: nn::Linear,
    /// Per-class statistics of the frozen query (`tii_stats.*`).
    pub stats: ClassStats,
    task_sizes: Vec<usize>,
}

impl TaskIdentity {
    /// `MlpMapping(hidden)` — Linear D→h₀·D, GELU, …, Linear →D, residual,
    /// LayerNorm — and a linear head over all classes, under `root/tii`.
    pub fn new(root: &nn::Path, ctx: &MethodContext, hidden: &[i64], statistics: StatsKind, centroids: usize) -> Self {
        let (d, seed) = (ctx.feature_dim(), ctx.seed);
        let p = root / NAME;
        let mut dims = vec![d];
        dims.extend(hidden.iter().map(|h| h * d));
        dims.push(d);
        let layers =
            dims.windows(2).enumerate().map(|(i, w)| linear(&(&p / "mlp" / i), w[0], w[1], seed, &[30, i as u64], LinearInit::Timm)).collect();
        Self {
            layers,
            norm_w: p.ones("norm_weight", &[d]),
            norm_b: p.zeros("norm_bias", &[d]),
            head: head(&p, d, ctx.num_classes, seed ^ 0x7111, LinearInit::Timm),
            stats: ClassStats::new(&(root / "tii_stats"), statistics, ctx.num_classes, d, centroids),
            task_sizes: ctx.task_sizes.clone(),
        }
    }

    /// `[B, classes]` from queries `[B, D]`.
    pub fn logits(&self, q: &Tensor) -> Tensor {
        let mut h = q.shallow_clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h);
            if i != last {
                h = h.gelu("none");
            }
        }
        let d = q.size()[1];
        let x = (h + q).layer_norm([d], Some(&self.norm_w), Some(&self.norm_b), 1e-5, false);
        self.head.forward(&x)
    }

    /// Cross-entropy of queries (or pseudo-queries) `q` scored over `classes`.
    pub fn step(&self, q: &Tensor, labels: &Tensor, classes: Range<usize>) -> Step {
        ce_step(&self.logits(q), labels, classes)
    }

    /// Statistics of the task's classes from their frozen queries.
    pub fn fit(&mut self, classes: Range<usize>, q: &Tensor, y: &Tensor, seed: u64) -> Result<()> {
        alignment::fit_classes(&mut self.stats, classes, q, y, |c| seed ^ ((c as u64) << 16))
    }

    /// The task of each query: that of its most likely class among `0..seen`.
    pub fn predict_tasks(&self, q: &Tensor, seen: usize) -> Vec<usize> {
        let logits = mask_outside(&self.logits(q), 0..seen);
        let classes: Vec<i64> = Vec::try_from(logits.argmax(1, false).to_device(tch::Device::Cpu)).expect("int64");
        classes.iter().map(|&c| crate::method::task_of(&self.task_sizes, c as usize)).collect()
    }
}
