//! RanPAC (McDonnell et al., "RanPAC: Random projections and pre-trained
//! models for continual learning", NeurIPS 2023; official `RanPAC/RanPAC`
//! `RanPAC.py`, and LAMDA-PILOT `models/ranpac.py`): adapt the backbone on
//! the first task (as APER), then freeze it; a fixed random projection
//! h = ReLU(φ(x)·W_rand), W_rand ~ N(0, 1) of width M, feeds a ridge
//! classifier whose Gram and cross-correlation accumulate over tasks, with λ
//! chosen per task on that task's data.
//!
//! Composed of [`FirstTaskAdaptation`] and [`Ridge`]. `scoring = "linear"`
//! is the official RanPAC's `h·Wᵀ`; `"cosine"` is PILOT's, which scores
//! `σ·cos(h, W_c)` with the first task's learned σ.

use std::rc::Rc;

use promptcl_stream::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::common::{gaussian, l2_normalize};
use crate::method::{collect_features, Backbone, BatchSource, ContinualMethod, Inputs, MemoryNeed, MethodContext, Prediction, Sizes, Step, TaskInfo};
use crate::parts::petl::{FirstTaskAdaptation, PetlKind, PetlShape};
use crate::parts::ridge::{official_grid, select_lambda, Ridge};
use crate::{LearnerError, OptimConfig, Result, Stage};

/// How a class is scored from the projected feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// `h·W_cᵀ` (official RanPAC, `use_RP`).
    Linear,
    /// `σ·cos(h, W_c)` (LAMDA-PILOT's `CosineLinear` path).
    Cosine,
}

crate::method_params! {
    pub struct Params {
        /// `adapter` (AdaptFormer, the official CIFAR-100 setting), `ssf` (the official ImageNet-R setting), or PILOT's `vpt-deep` / `vpt-shallow`.
        pub petl: PetlKind = PetlKind::Adapter,
        /// Adapter bottleneck width (official: 64).
        pub ffn_num: i64 = 64,
        pub adapter_scale: f64 = 0.1,
        pub adapter_dropout: f64 = 0.1,
        /// VPT tokens per prompted block (PILOT `prompt_token_num`).
        pub prompt_tokens: i64 = 5,
        /// Random-projection width M (official: 10000); 0 fits the ridge on the features themselves.
        pub projection: i64 = 10000,
        /// The λ grid (official: 10^−8 … 10^8).
        pub ridge_grid: Vec<f64> = official_grid(),
        /// The share of a task's samples that fits each λ; the rest scores it (official: 0.8).
        pub ridge_fit_fraction: f64 = 0.8,
        /// `linear` (official RanPAC) or `cosine` (PILOT).
        pub scoring: Scoring = Scoring::Linear,
    }
}

pub struct RanPac {
    vs: nn::VarStore,
    adapt: FirstTaskAdaptation,
    /// `[D, M]`, fixed (kept in the store; empty with `projection = 0`).
    w_rand: Option<Tensor>,
    ridge: Ridge,
    /// The solved classifier `[M, C]`, rewritten after every task.
    w_out: Tensor,
    backbone: Rc<Backbone>,
    params: Params,
    seed: u64,
}

impl Params {
    /// Run when the config is validated, before any data is read.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LearnerError::Params { method: "ranpac".into(), reason: m });
        if self.projection < 0 {
            return bad(format!("projection must be >= 0, got {}", self.projection));
        }
        if self.ridge_grid.is_empty() {
            return bad("ridge_grid is empty: give the λ values to choose from (official: 1e-8 … 1e8)".into());
        }
        if self.ridge_grid.iter().any(|&l| !(l > 0.0)) {
            return bad(format!("ridge_grid must hold positive values, got {:?}", self.ridge_grid));
        }
        if !(self.ridge_fit_fraction > 0.0 && self.ridge_fit_fraction < 1.0) {
            return bad(format!("ridge_fit_fraction must be in (0, 1), got {}", self.ridge_fit_fraction));
        }
        if self.ffn_num < 1 {
            return bad(format!("ffn_num must be at least 1, got {}", self.ffn_num));
        }
        Ok(())
    }

    /// The f64 Gram matrix, cross-correlation and classifier, and the projection matrix.
    pub fn memory(&self, sizes: &Sizes) -> Option<MemoryNeed> {
        let m = if self.projection == 0 { sizes.feature_dim } else { self.projection };
        let bytes = Ridge::bytes(m, sizes.num_classes) + 4 * m as u64 * (sizes.feature_dim as u64 + sizes.num_classes as u64);
        Some(MemoryNeed { bytes, what: format!("ranpac: projection = {m} (its f64 Gram matrix and classifier)"), fix: "lower `projection`" })
    }
}

impl RanPac {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        params.validate()?;
        let d = ctx.feature_dim();
        let m = if params.projection == 0 { d } else { params.projection };
        if let Some(need) = params.memory(&Sizes { feature_dim: d, num_classes: ctx.num_classes }) {
            need.check(ctx.device)?;
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let shape =
            PetlShape { width: params.ffn_num, scale: params.adapter_scale, dropout: params.adapter_dropout, prompt_tokens: params.prompt_tokens };
        let adapt = FirstTaskAdaptation::new(&root, params.petl, shape, ctx)?;
        let w_rand = (params.projection > 0).then(|| {
            let mut rng = SplitMix64::derive(ctx.seed, &[0x4A9D]);
            let v: Vec<f32> = (0..d * m).map(|_| gaussian(&mut rng) as f32).collect();
            let mut t = root.zeros_no_train("w_rand", &[d, m]);
            tch::no_grad(|| t.copy_(&Tensor::from_slice(&v).view([d, m])));
            t
        });
        let ridge = Ridge::new(&(&root / "ridge"), m, ctx.num_classes);
        let w_out = root.zeros_no_train("w_out", &[m, ctx.num_classes as i64]);
        Ok(Self { vs, adapt, w_rand, ridge, w_out, backbone: ctx.backbone.clone(), params, seed: ctx.seed })
    }

    /// h = ReLU(φ(x)·W_rand) (or φ(x) without a projection), `[B, M]`.
    fn projected(&self, x: &Inputs) -> Result<Tensor> {
        let f = self.adapt.adapted(&self.backbone, x)?;
        Ok(match &self.w_rand {
            Some(w) => f.matmul(w).relu(),
            None => f,
        })
    }
}

/// G and Q must fit in memory: an M too wide for the machine is an error
/// before any data is read (on CUDA the device's memory is not known here).
impl ContinualMethod for RanPac {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        self.adapt.stages(task, optim)
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        self.adapt.train_step(&self.backbone, x, labels, task)
    }

    /// Accumulates the task's statistics, chooses λ on the task's samples in
    /// a seeded random order (the official loader shuffles), and re-solves.
    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (h, y) = collect_features(data, &mut |x| self.projected(x))?;
        self.ridge.add(&h, &y);
        let n = h.size()[0];
        let mut order: Vec<usize> = (0..n as usize).collect();
        SplitMix64::derive(self.seed, &[0x1A3B, task.task as u64]).shuffle(&mut order);
        let idx = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(h.device());
        let onehot = y.one_hot(self.w_out.size()[1]);
        let (lambda, _) = select_lambda(
            &h.index_select(0, &idx),
            &onehot.index_select(0, &idx.to_device(onehot.device())),
            &self.params.ridge_grid,
            self.params.ridge_fit_fraction,
        )?;
        tracing::info!("ranpac: task {} chose λ = {lambda:e}", task.task + 1);
        let w = self.ridge.solve(lambda);
        tch::no_grad(|| self.w_out.copy_(&w.to_kind(Kind::Float)));
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let h = self.projected(x)?;
        let w = self.w_out.narrow(1, 0, seen as i64);
        let logits = match self.params.scoring {
            Scoring::Linear => h.matmul(&w),
            Scoring::Cosine => l2_normalize(&h, 1).matmul(&l2_normalize(&w, 0)) * self.adapt.sigma(),
        };
        Ok(Prediction::new(logits, None))
    }
}
