//! FeCAM (Goswami et al., "FeCAM: Exploiting the heterogeneity of class
//! distributions in exemplar-free continual learning", NeurIPS 2023; official
//! `dipamgoswami/FeCAM` `FeCAM_vit_cifar100.py`): a frozen ViT, no training;
//! per class the mean and unbiased covariance (f64) of the L2-normalised class
//! tokens of its training images, shrunk as
//! `S + a₁·mean(diag S)·I + a₂·mean(offdiag S)·(1 − I)`, turned into a
//! correlation matrix `S / (σσᵀ)` and inverted; a test feature goes to the
//! class of least Mahalanobis distance `(x − μ)ᵀ R⁻¹ (x − μ)`.
//!
//! The inverses are computed once, when the class arrives, and kept in the
//! method's store (f64, `[classes, D, D]`), so a resumed run has them.
//!
//! `fecam-pilot` is LAMDA-PILOT's `models/fecam.py`: it adapts adapters on
//! the first task (as APER), then takes per class the mean and covariance of
//! the raw adapted features, `torch.corrcoef(S + 100·I)` and its pseudo-inverse,
//! and measures distances between L2-normalised features and means.

use std::rc::Rc;

use tch::{nn, Kind, Tensor};

use super::common::{l2_normalize, zeros_f64_no_train};
use crate::method::{collect_features, Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::petl::{FirstTaskAdaptation, PetlKind, PetlShape};
use crate::{LearnerError, OptimConfig, Result, Stage};

crate::method_params! {
    pub struct Params {
        /// a₁: the diagonal shrinkage, times the mean variance (official: 1 on CIFAR-100, 10 on ImageNet-R).
        pub shrink_diagonal: f64 = 1.0,
        /// a₂: the off-diagonal shrinkage, times the mean off-diagonal covariance (official: 0 on CIFAR-100, 10 on ImageNet-R).
        pub shrink_off_diagonal: f64 = 0.0,
        /// Divide the shrunk covariance by σσᵀ (official: yes).
        pub correlation: bool = true,
    }
}

crate::method_params! {
    pub struct PilotParams {
        /// The identity added to each covariance before `corrcoef` (PILOT's `alpha`).
        pub alpha: f64 = 100.0,
        /// First-task modules (PILOT `backbone_type = pretrained_vit_b16_224_adapter`).
        pub petl: PetlKind = PetlKind::Adapter,
        pub ffn_num: i64 = 64,
        pub adapter_scale: f64 = 0.1,
        pub adapter_dropout: f64 = 0.1,
        pub prompt_tokens: i64 = 5,
    }
}

/// Which recipe: the official script's, or PILOT's (with its first-task adaptation).
enum Recipe {
    Official(Params),
    Pilot(PilotParams, FirstTaskAdaptation),
}

pub struct FeCam {
    vs: nn::VarStore,
    means: Tensor,
    inverses: Tensor,
    backbone: Rc<Backbone>,
    recipe: Recipe,
}

/// The official `shrink_cov`: the off-diagonal mean is over the non-zero
/// off-diagonal entries.
pub fn shrink(s: &Tensor, a1: f64, a2: f64) -> Tensor {
    let d = s.size()[0];
    let eye = Tensor::eye(d, (s.kind(), s.device()));
    let diag_mean = s.diagonal(0, 0, 1).mean(Kind::Double);
    let off = s * (eye.ones_like() - &eye);
    let nonzero = off.ne(0.0);
    let count = nonzero.sum(Kind::Double).clamp_min(1.0);
    let off_mean = off.sum(Kind::Double) / count;
    s + &eye * (diag_mean * a1) + (eye.ones_like() - &eye) * (off_mean * a2)
}

/// `S / (σσᵀ)`, σ = √diag S (the official `normalize_cov`).
pub fn correlation(s: &Tensor) -> Tensor {
    let sd = s.diagonal(0, 0, 1).sqrt();
    s / sd.unsqueeze(1).matmul(&sd.unsqueeze(0))
}

/// A class's mean and the inverse of its shrunk (correlation) covariance,
/// from its features `[N, D]` (f64).
pub fn class_statistics(x: &Tensor, p: &Params) -> (Tensor, Tensor) {
    let cov = x.tr().cov(1, None::<Tensor>, None::<Tensor>);
    let mut s = shrink(&cov, p.shrink_diagonal, p.shrink_off_diagonal);
    if p.correlation {
        s = correlation(&s);
    }
    // `np.linalg.pinv`'s default cut-off and SVD.
    (x.mean_dim(0, false, Kind::Double), s.linalg_pinv(1e-15, false))
}

/// PILOT's class statistics from raw features `[N, D]` (f64): the mean, and
/// the pseudo-inverse of `corrcoef(S + α·I)` with float32's default cut-off
/// (`eps_f32 · D`: PILOT inverts in float32), so the same small singular
/// values are dropped.
pub fn pilot_statistics(x: &Tensor, alpha: f64) -> (Tensor, Tensor) {
    let d = x.size()[1];
    let cov = x.tr().cov(1, None::<Tensor>, None::<Tensor>) + Tensor::eye(d, (Kind::Double, x.device())) * alpha;
    let r = cov.corrcoef();
    (x.mean_dim(0, false, Kind::Double), r.linalg_pinv(f32::EPSILON as f64 * d as f64, false))
}

/// Squared Mahalanobis distances `[B, C]` of features `[B, D]` to classes
/// with `means` `[C, D]` and `inverses` `[C, D, D]`.
pub fn mahalanobis(f: &Tensor, means: &Tensor, inverses: &Tensor) -> Tensor {
    let delta = f.unsqueeze(1) - means.unsqueeze(0);
    let projected = Tensor::einsum("bcd,cde->bce", &[&delta, inverses], None::<i64>);
    (projected * delta).sum_dim_intlist(-1, false, Kind::Double)
}

impl FeCam {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        Ok(Self::with(ctx, vs, Recipe::Official(params)))
    }

    pub fn pilot(ctx: &MethodContext, params: PilotParams) -> Result<Self> {
        if !(params.alpha >= 0.0) {
            return Err(LearnerError::Invalid(format!("fecam-pilot: alpha must be >= 0, got {}", params.alpha)));
        }
        let vs = nn::VarStore::new(ctx.device);
        let shape =
            PetlShape { width: params.ffn_num, scale: params.adapter_scale, dropout: params.adapter_dropout, prompt_tokens: params.prompt_tokens };
        let adapt = FirstTaskAdaptation::new(&vs.root(), params.petl, shape, ctx)?;
        Ok(Self::with(ctx, vs, Recipe::Pilot(params, adapt)))
    }

    fn with(ctx: &MethodContext, vs: nn::VarStore, recipe: Recipe) -> Self {
        let (c, d) = (ctx.num_classes as i64, ctx.feature_dim());
        let root = vs.root();
        let (means, inverses) = (zeros_f64_no_train(&root, "class_means", &[c, d]), zeros_f64_no_train(&root, "class_inverses", &[c, d, d]));
        Self { vs, means, inverses, backbone: ctx.backbone.clone(), recipe }
    }

    /// What the statistics are taken of: L2-normalised frozen features (official) or raw adapted ones (PILOT).
    fn features(&self, x: &Inputs) -> Result<Tensor> {
        Ok(match &self.recipe {
            Recipe::Official(_) => l2_normalize(&self.backbone.query(x)?, 1).to_kind(Kind::Double),
            Recipe::Pilot(_, adapt) => adapt.adapted(&self.backbone, x)?.to_kind(Kind::Double),
        })
    }

    /// Squared Mahalanobis distances `[B, seen]` (f64).
    pub fn distances(&self, x: &Inputs, seen: usize) -> Result<Tensor> {
        let n = seen as i64;
        let means = self.means.narrow(0, 0, n);
        let (f, means) = match self.recipe {
            Recipe::Official(_) => (self.features(x)?, means),
            // PILOT's `_mahalanobis`: normalise both sides first.
            Recipe::Pilot(..) => (l2_normalize(&self.features(x)?, 1), l2_normalize(&means, 1)),
        };
        Ok(mahalanobis(&f, &means, &self.inverses.narrow(0, 0, n)))
    }
}

impl ContinualMethod for FeCam {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// No training (official); PILOT adapts on the first task.
    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        match &self.recipe {
            Recipe::Official(_) => Vec::new(),
            Recipe::Pilot(_, adapt) => adapt.stages(task, optim),
        }
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        match &self.recipe {
            Recipe::Official(_) => Ok(Tensor::zeros([], (Kind::Float, x.device())).into()),
            Recipe::Pilot(_, adapt) => adapt.train_step(&self.backbone, x, labels, task),
        }
    }

    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (f, y) = collect_features(data, &mut |x| self.features(x))?;
        for class in task.classes.clone() {
            let rows = y.eq(class as i64).nonzero().squeeze_dim(1);
            if rows.size()[0] < 2 {
                return Err(LearnerError::Invalid(format!("fecam: class {class} has {} training sample(s); a covariance needs 2", rows.size()[0])));
            }
            let x = f.index_select(0, &rows);
            let (mean, inverse) = match &self.recipe {
                Recipe::Official(p) => class_statistics(&x, p),
                Recipe::Pilot(p, _) => pilot_statistics(&x, p.alpha),
            };
            tch::no_grad(|| {
                self.means.get(class as i64).copy_(&mean);
                self.inverses.get(class as i64).copy_(&inverse);
            });
        }
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        // Least distance wins: the logits are the negated distances.
        Ok(Prediction::new(-self.distances(x, seen)?.to_kind(Kind::Float), None))
    }
}
