//! Pieces several methods share.

use std::ops::Range;

use promptcl_stream::SplitMix64;
use tch::{nn, Kind, Tensor};

use crate::Step;

/// One standard-normal draw (Box–Muller) from promptcl's RNG. Method
/// initialisations draw from it rather than libtorch's global generator, so a
/// resumed run re-creates exactly what an uninterrupted one did.
pub(crate) fn gaussian(rng: &mut SplitMix64) -> f64 {
    let (u1, u2) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Seeded U(lo, hi), as `nn.init.uniform_` in the official prompt code.
pub(crate) fn seeded_uniform(seed: u64, parts: &[u64], dims: &[i64], lo: f64, hi: f64) -> Tensor {
    let n: i64 = dims.iter().product();
    let mut rng = SplitMix64::derive(seed, parts);
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
    Tensor::from_slice(&v).view(dims)
}

/// A trainable variable initialised from `init` (copied to the store's device).
pub(crate) fn var_from(p: &nn::Path, name: &str, init: Tensor) -> Tensor {
    p.var_copy(name, &init.to_device(p.device()))
}

/// A zero f64 variable that does not train (statistics kept in the store, so
/// a resumed run has them): FeCAM's class statistics, RanPAC's Gram matrix.
pub(crate) fn zeros_f64_no_train(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    let mut t = p.zeros_no_train(name, dims);
    tch::no_grad(|| t.set_data(&t.to_kind(Kind::Double)));
    t
}

/// How an official code base initialises its linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinearInit {
    /// `nn.Linear`'s own: U(±1/√fan_in) for weight and bias (CODA-Prompt).
    Torch,
    /// timm's `init_weights_vit_timm`: `trunc_normal_(std=.02)` weight (cut at
    /// ±2, i.e. ±100σ), zero bias (L2P, DualPrompt, HiDe-Prompt, NoRGa, whose
    /// ViT applies it to every `nn.Linear` it creates, head and TII MLP).
    Timm,
}

/// A linear layer `[out, dim]` under `p` (`weight`, `bias`), drawn from the
/// seeded RNG (`tags` name its streams) as `init` says.
pub(crate) fn linear(p: &nn::Path, dim: i64, out: i64, seed: u64, tags: &[u64], init: LinearInit) -> nn::Linear {
    let tag = |t: u64| tags.iter().copied().chain([t]).collect::<Vec<_>>();
    let (ws, bs) = match init {
        LinearInit::Torch => {
            let bound = 1.0 / (dim as f64).sqrt();
            (seeded_uniform(seed, &tag(0), &[out, dim], -bound, bound), seeded_uniform(seed, &tag(1), &[out], -bound, bound))
        }
        LinearInit::Timm => (seeded_trunc_normal(seed, &tag(0), &[out, dim], 0.02, 2.0), Tensor::zeros([out], (Kind::Float, tch::Device::Cpu))),
    };
    nn::Linear { ws: var_from(p, "weight", ws), bs: Some(var_from(p, "bias", bs)) }
}

/// Seeded N(0, std²) cut to [−bound, bound] by redrawing, as timm's
/// `trunc_normal_(std, a=−bound, b=bound)` (whose bounds are absolute).
pub(crate) fn seeded_trunc_normal(seed: u64, parts: &[u64], dims: &[i64], std: f64, bound: f64) -> Tensor {
    let n: i64 = dims.iter().product();
    let mut rng = SplitMix64::derive(seed, parts);
    let v: Vec<f32> = (0..n)
        .map(|_| loop {
            let x = gaussian(&mut rng) * std;
            if x.abs() <= bound {
                break x as f32;
            }
        })
        .collect();
    Tensor::from_slice(&v).view(dims)
}

/// Linear classifier over all classes of the stream; unseen classes are
/// masked at prediction (as the official code's `class_mask`).
pub(crate) fn head(p: &nn::Path, dim: i64, classes: usize, seed: u64, init: LinearInit) -> nn::Linear {
    linear(&(p / "head"), dim, classes as i64, seed, &[0x4EAD], init)
}

/// Logits outside `allowed` set to −∞.
pub fn mask_outside(logits: &Tensor, allowed: Range<usize>) -> Tensor {
    let c = logits.size()[1];
    let idx = Tensor::arange(c, (Kind::Int64, logits.device()));
    let keep = idx.ge(allowed.start as i64).logical_and(&idx.lt(allowed.end as i64));
    logits.masked_fill(&keep.logical_not(), f64::NEG_INFINITY)
}

/// A training step scored by masked cross-entropy, keeping the masked logits for the log.
pub fn ce_step(logits: &Tensor, labels: &Tensor, allowed: Range<usize>) -> Step {
    let masked = mask_outside(logits, allowed);
    Step { loss: masked.cross_entropy_for_logits(labels), logits: Some(masked.detach()), features: None }
}

/// The classes a training batch is scored over: the task's own (official
/// `train_mask = True`) or every class seen so far.
pub(crate) fn train_classes(task: &crate::TaskInfo, task_mask: bool) -> Range<usize> {
    if task_mask {
        task.classes.clone()
    } else {
        0..task.seen.end
    }
}

/// `x / max(‖x‖, 1e-12)` along `dim` (`F.normalize`).
pub fn l2_normalize(x: &Tensor, dim: i64) -> Tensor {
    let n = x.norm_scalaropt_dim(2, [dim], true).clamp_min(1e-12);
    x / n
}

/// Splits a prefix parameter laid out as the official code does,
/// `[.., 2, length, heads, head_dim]`, into key and value `[.., heads, length, head_dim]`.
pub(crate) fn split_prefix(p: &Tensor) -> (Tensor, Tensor) {
    let k = p.select(-4, 0);
    let v = p.select(-4, 1);
    (k.transpose(-3, -2), v.transpose(-3, -2))
}

/// LAMDA-PILOT's `CosineLinear`: `σ · normalize(x) · normalize(W)ᵀ`, W drawn
/// U(±1/√dim), σ a learnable scalar starting at 1.
pub(crate) struct CosineHead {
    pub weight: Tensor,
    pub sigma: Tensor,
}

impl CosineHead {
    pub(crate) fn new(p: &nn::Path, dim: i64, classes: usize, seed: u64) -> Self {
        let bound = 1.0 / (dim as f64).sqrt();
        let w = seeded_uniform(seed, &[0xC05], &[classes as i64, dim], -bound, bound);
        Self {
            weight: var_from(&(p / "cosine_head"), "weight", w),
            sigma: var_from(&(p / "cosine_head"), "sigma", Tensor::ones([1], (Kind::Float, tch::Device::Cpu))),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        l2_normalize(x, 1).matmul(&l2_normalize(&self.weight, 1).tr()) * &self.sigma
    }
}
