//! Task-identity inference (HiDe-Prompt / NoRGa `MlpMapping` + head on the
//! frozen, un-prompted query; WAVE-CRE's task predictor): trained per task
//! with cross-entropy masked to the task's classes, then refined on Gaussian
//! pseudo-queries of every seen class; its predicted class decides the task.

use std::ops::Range;

use tch::{nn, nn::Module, Tensor};

use super::alignment;
use super::classifier::Classifier;
use crate::methods::common::{ce_step, head, linear, mask_outside, LinearInit};
use crate::stats::{ClassStats, StatsKind};
use crate::{MethodContext, Result, Step};

/// The variables' prefix: stages that train TII name it.
pub const NAME: &str = "tii";

/// The network from query to class scores.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TiiNet {
    /// HiDe-Prompt / NoRGa's `MlpMapping` (GELU MLP, residual, LayerNorm) and a linear head.
    #[default]
    Mapping,
    /// A ReLU MLP [`Classifier`] with these hidden widths (WAVE-CRE's task
    /// predictor, the group's code: the relation classifier's architecture).
    Classifier(Vec<i64>),
    /// A linear head, timm-initialised (HiDe-PET's task identifier: its ViT's class head).
    Linear,
}

enum Net {
    Mapping { layers: Vec<nn::Linear>, norm_w: Tensor, norm_b: Tensor, head: nn::Linear },
    Classifier(Classifier),
}

pub struct TaskIdentity {
    net: Net,
    /// Per-class statistics of the frozen query (`tii_stats.*`).
    pub stats: ClassStats,
    task_sizes: Vec<usize>,
}

impl TaskIdentity {
    /// `MlpMapping(hidden)` — Linear D→h₀·D, GELU, …, Linear →D, residual,
    /// LayerNorm — and a linear head over all classes, under `root/tii`; or
    /// with `net = classifier` a ReLU MLP [`Classifier`] there.
    pub fn new(root: &nn::Path, ctx: &MethodContext, net: &TiiNet, hidden: &[i64], statistics: StatsKind, centroids: usize) -> Self {
        let (d, seed) = (ctx.feature_dim(), ctx.seed);
        let p = root / NAME;
        let net = match net {
            TiiNet::Mapping => {
                let mut dims = vec![d];
                dims.extend(hidden.iter().map(|h| h * d));
                dims.push(d);
                let layers = dims
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| linear(&(&p / "mlp" / i), w[0], w[1], seed, &[30, i as u64], LinearInit::Timm))
                    .collect();
                Net::Mapping {
                    layers,
                    norm_w: p.ones("norm_weight", &[d]),
                    norm_b: p.zeros("norm_bias", &[d]),
                    head: head(&p, d, ctx.num_classes, seed ^ 0x7111, LinearInit::Timm),
                }
            }
            TiiNet::Classifier(widths) => Net::Classifier(Classifier::new(&p, d, widths, ctx.num_classes, seed ^ 0x7111, LinearInit::Torch)),
            TiiNet::Linear => Net::Classifier(Classifier::new(&p, d, &[], ctx.num_classes, seed ^ 0x7111, LinearInit::Timm)),
        };
        Self { net, stats: ClassStats::new(&(root / "tii_stats"), statistics, ctx.num_classes, d, centroids), task_sizes: ctx.task_sizes.clone() }
    }

    /// `[B, classes]` from queries `[B, D]`.
    pub fn logits(&self, q: &Tensor) -> Tensor {
        match &self.net {
            Net::Classifier(c) => c.forward(q),
            Net::Mapping { layers, norm_w, norm_b, head } => {
                let last = layers.len() - 1;
                let h = layers.iter().enumerate().fold(q.shallow_clone(), |h, (i, l)| {
                    let h = l.forward(&h);
                    if i == last {
                        h
                    } else {
                        h.gelu("none")
                    }
                });
                let d = q.size()[1];
                head.forward(&(h + q).layer_norm([d], Some(norm_w), Some(norm_b), 1e-5, false))
            }
        }
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
