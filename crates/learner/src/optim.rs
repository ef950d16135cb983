//! Optimizers and learning-rate schedules, as a stage declares them.
//!
//! Adam, AdamW and SGD with the update rules of `torch.optim` (L2 weight
//! decay added to the gradient for Adam and SGD, decoupled for AdamW, Adam's
//! bias corrections and per-parameter step counts), written over tensors so
//! that their state can be checkpointed: libtorch's optimizers keep theirs
//! out of reach, and without it a run resumed in the middle of a stage would
//! not match an uninterrupted one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{LearnerError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    AdamW,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine from `lr` to 0 over the stage's steps, updated every step.
    Cosine,
    /// `½·lr·(1 + cos(π·e/E))` at epoch e of E, updated once per epoch
    /// (`CosineAnnealingLR(T_max = E)` stepped per epoch, as the official
    /// HiDe-Prompt / NoRGa alignment stages).
    CosineEpoch,
    /// `lr · rate^⌊t / every⌋` at t = epoch (timm `StepLRScheduler`, `--sched step`);
    /// with `step_late`, t = max(epoch − 1, 0), as engines that call
    /// `lr_scheduler.step(epoch)` after epoch e (MoE_PromptCL, HiDe-Prompt): the
    /// first decay lands one epoch later.
    Step {
        every: usize,
        rate: f64,
        #[serde(default)]
        step_late: bool,
    },
    /// `lr · rate^(number of milestones ≤ epoch)`: timm's `MultiStepLRScheduler`
    /// (VPT-NSP decays after passes 40 and 70 of 100).
    Milestones {
        at: [usize; 2],
        rate: f64,
    },
    /// CODA-Prompt's `CosineSchedule(K = E)`: a quarter cosine,
    /// `lr · cos(99π·max(e − 1, 0) / (200·(E − 1)))` at epoch e. The
    /// `max(e − 1, 0)` is the official order of calls: the scheduler steps
    /// before every epoch but the first, and its first step lands on 0, so
    /// epochs 0 and 1 both run at `lr` and the last one stops a step short of
    /// cos(99π/200) ≈ 1.6 % (at 9.7 % of `lr` for E = 20).
    CodaCosine,
    /// timm's `CosineLRScheduler` per epoch as `create_scheduler` builds it
    /// (`t_initial = E`, one cycle, `warmup_prefix = False`): `f(t)` rises
    /// linearly from `warmup_lr` over `warmup_epochs`, then is
    /// `min_lr + ½·(lr − min_lr)·(1 + cos(π·t/E))`. Epoch e runs at `f(e)`; with
    /// `step_late`, at `f(max(e − 1, 0))`, as engines that call
    /// `lr_scheduler.step(epoch)` after epoch e (HiDe-PET; timm means
    /// `step(epoch + 1)`), so epochs 0 and 1 both run at `warmup_lr`.
    /// `warmup_lr` and `min_lr` are absolute (never batch-scaled).
    TimmCosine {
        warmup_epochs: usize,
        warmup_lr: f64,
        min_lr: f64,
        step_late: bool,
    },
}

impl Schedule {
    /// The learning rate at step `step` of epoch `epoch`, for a stage of
    /// `epochs` epochs of `per_epoch` steps.
    pub fn lr(&self, lr: f64, epoch: usize, step: usize, per_epoch: usize, epochs: usize) -> f64 {
        match *self {
            Self::Constant => lr,
            Self::Cosine => {
                let total = per_epoch * epochs;
                let t = if total == 0 { 0.0 } else { (per_epoch * epoch + step) as f64 / total as f64 };
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Self::CosineEpoch => {
                let t = if epochs == 0 { 0.0 } else { epoch as f64 / epochs as f64 };
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Self::Step { every, rate, step_late } => {
                let t = if step_late { epoch.saturating_sub(1) } else { epoch };
                lr * rate.powi((t / every.max(1)) as i32)
            }
            Self::Milestones { at, rate } => lr * rate.powi(at.iter().filter(|&&m| m <= epoch).count() as i32),
            Self::CodaCosine => {
                // One epoch: the official K − 1 = 0 divides by zero; the only epoch runs at lr.
                let t = if epochs < 2 { 0.0 } else { epoch.saturating_sub(1) as f64 / (epochs - 1) as f64 };
                lr * (99.0 * std::f64::consts::PI * t / 200.0).cos()
            }
            Self::TimmCosine { warmup_epochs, warmup_lr, min_lr, step_late } => {
                let t = if step_late { epoch.saturating_sub(1) } else { epoch };
                if t < warmup_epochs {
                    warmup_lr + t as f64 * (lr - warmup_lr) / warmup_epochs as f64
                } else {
                    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * t as f64 / epochs.max(1) as f64).cos())
                }
            }
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            Self::Step { every, rate, .. } if every == 0 || !(rate > 0.0) => {
                Err(format!("schedule.step: every = {every} must be >= 1 and rate = {rate} > 0"))
            }
            Self::Milestones { at, rate } if at[0] > at[1] || !(rate > 0.0) => {
                Err(format!("schedule.milestones: at = {at:?} must be increasing and rate = {rate} > 0"))
            }
            Self::TimmCosine { warmup_lr, min_lr, .. } if !(warmup_lr >= 0.0 && min_lr >= 0.0) => {
                Err(format!("schedule.timm-cosine: warmup_lr = {warmup_lr} and min_lr = {min_lr} must be >= 0"))
            }
            _ => Ok(()),
        }
    }
}

/// One stage's optimizer: what it is, its learning rate (final: any batch
/// scaling already applied) and schedule, and its gradient clipping.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOptim {
    pub kind: OptimizerKind,
    pub lr: f64,
    /// SGD only.
    pub momentum: f64,
    /// Adam / AdamW only.
    pub betas: [f64; 2],
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Clip the gradient norm of the stage's parameters; 0 disables.
    pub clip_grad_norm: f64,
}

impl StageOptim {
    /// SGD at `lr` with `momentum`, constant, no weight decay, no clipping.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Self { kind: OptimizerKind::Sgd, lr, momentum, betas: [0.9, 0.999], weight_decay: 0.0, schedule: Schedule::Constant, clip_grad_norm: 0.0 }
    }

    /// Adam at `lr` (betas 0.9, 0.999), constant, no weight decay, no clipping.
    pub fn adam(lr: f64) -> Self {
        Self { kind: OptimizerKind::Adam, momentum: 0.0, ..Self::sgd(lr, 0.0) }
    }

    pub fn weight_decay(self, weight_decay: f64) -> Self {
        Self { weight_decay, ..self }
    }

    pub fn schedule(self, schedule: Schedule) -> Self {
        Self { schedule, ..self }
    }

    pub fn clip(self, clip_grad_norm: f64) -> Self {
        Self { clip_grad_norm, ..self }
    }

    pub fn betas(self, betas: [f64; 2]) -> Self {
        Self { betas, ..self }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.lr > 0.0) {
            return Err(format!("lr = {} must be positive", self.lr));
        }
        if !(self.weight_decay >= 0.0) || !(self.clip_grad_norm >= 0.0) || !(self.momentum >= 0.0) {
            return Err("weight_decay, momentum and clip_grad_norm must be >= 0".into());
        }
        if !(0.0..1.0).contains(&self.betas[0]) || !(0.0..1.0).contains(&self.betas[1]) {
            return Err(format!("betas {:?} must be in [0, 1)", self.betas));
        }
        self.schedule.validate()
    }
}

struct Param {
    name: String,
    tensor: Tensor,
    lr_scale: f64,
    /// Adam: first moment; SGD: momentum buffer.
    m: Tensor,
    /// Adam: second moment.
    v: Tensor,
    steps: i64,
    /// `left · Δ · right` replaces this variable's update Δ.
    projection: Option<UpdateProjection>,
}

pub struct Optimizer {
    cfg: StageOptim,
    params: Vec<Param>,
    lr: f64,
}

/// A projection of one 2-D variable's update (after the optimizer has made
/// it: learning rate, moments and weight decay included), as VPT-NSP's
/// `mod_adam.py` does: `Δ ← left · Δ · right`.
///
/// # Shapes
/// - `left`: `[rows, rows]`, `right`: `[cols, cols]` for a variable `[rows, cols]`
#[derive(Debug)]
pub struct UpdateProjection {
    pub name: String,
    pub left: Tensor,
    pub right: Tensor,
}

const EPS: f64 = 1e-8;

impl Optimizer {
    /// Over the trainable variables of `vs` that `lr_scale` gives a scale
    /// (`None`: not this optimizer's). Those with `requires_grad` off or no
    /// gradient are skipped at each step, as in libtorch.
    pub fn new(vs: &nn::VarStore, cfg: &StageOptim, lr_scale: &dyn Fn(&str) -> Option<f64>) -> Self {
        let params = trainable(vs)
            .into_iter()
            .filter_map(|(name, tensor)| {
                let scale = lr_scale(&name)?;
                let (m, v) = (tensor.zeros_like().detach(), tensor.zeros_like().detach());
                Some(Param { name, tensor, lr_scale: scale, m, v, steps: 0, projection: None })
            })
            .collect();
        Self { cfg: cfg.clone(), params, lr: cfg.lr }
    }

    /// Projects the updates of these variables from now on.
    pub fn project(&mut self, projections: Vec<UpdateProjection>) -> Result<()> {
        for p in projections {
            let param = self.params.iter_mut().find(|q| q.name == p.name);
            let Some(param) = param else {
                return Err(LearnerError::Invalid(format!("update projection for `{}`, which this stage does not train", p.name)));
            };
            let (size, l, r) = (param.tensor.size(), p.left.size(), p.right.size());
            if size.len() != 2 || l != [size[0], size[0]] || r != [size[1], size[1]] {
                return Err(LearnerError::Invalid(format!("update projection for `{}` {size:?}: left {l:?} and right {r:?} do not fit", p.name)));
            }
            param.projection = Some(p);
        }
        Ok(())
    }

    /// Names of the variables this optimizer updates.
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// The tensors whose gradients are live: for clipping.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().filter(|p| p.tensor.requires_grad()).map(|p| p.tensor.grad()).filter(Tensor::defined).collect()
    }

    /// Clips (when the stage says so) and updates.
    pub fn clip_and_step(&mut self) {
        if self.cfg.clip_grad_norm > 0.0 {
            clip_grad_norm(&self.grads(), self.cfg.clip_grad_norm);
        }
        self.step();
    }

    pub fn step(&mut self) {
        let [b1, b2] = self.cfg.betas;
        let (wd, momentum) = (self.cfg.weight_decay, self.cfg.momentum);
        tch::no_grad(|| {
            for p in &mut self.params {
                if !p.tensor.requires_grad() {
                    continue;
                }
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = self.lr * p.lr_scale;
                let coupled = wd != 0.0 && self.cfg.kind != OptimizerKind::AdamW;
                let g = if coupled { &grad + &p.tensor * wd } else { grad.shallow_clone() };
                p.steps += 1;
                match self.cfg.kind {
                    OptimizerKind::Adam | OptimizerKind::AdamW => {
                        if self.cfg.kind == OptimizerKind::AdamW && wd != 0.0 {
                            let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let _ = p.m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = p.v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                        let c1 = 1.0 - b1.powi(p.steps as i32);
                        let c2 = 1.0 - b2.powi(p.steps as i32);
                        let denom = p.v.sqrt() / c2.sqrt() + EPS;
                        let update = &p.m / denom * (lr / c1);
                        let _ = p.tensor.g_sub_(&project(p.projection.as_ref(), update));
                    }
                    OptimizerKind::Sgd => {
                        if momentum != 0.0 {
                            if p.steps == 1 {
                                p.m.copy_(&g);
                            } else {
                                let _ = p.m.g_mul_scalar_(momentum).g_add_(&g);
                            }
                            let _ = p.tensor.g_sub_(&project(p.projection.as_ref(), &p.m * lr));
                        } else {
                            let _ = p.tensor.g_sub_(&project(p.projection.as_ref(), g * lr));
                        }
                    }
                }
            }
        });
    }

    /// State for a checkpoint: `optim.m.<var>`, `optim.v.<var>`, `optim.steps`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((format!("optim.m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("optim.v.{}", p.name), p.v.shallow_clone()));
        }
        // f64 holds step counts exactly and keeps the file all-float.
        let steps: Vec<f64> = self.params.iter().map(|p| p.steps as f64).collect();
        out.push(("optim.steps".into(), Tensor::from_slice(&steps)));
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let bad = |m: String| LearnerError::Invalid(format!("optimizer state: {m}"));
        let steps = state.get("optim.steps").ok_or_else(|| bad("the checkpoint has none".into()))?;
        let steps: Vec<i64> = Vec::try_from(steps.to_kind(Kind::Int64))?;
        if steps.len() != self.params.len() {
            return Err(bad(format!("it is for {} parameters, not {}", steps.len(), self.params.len())));
        }
        tch::no_grad(|| {
            for (p, s) in self.params.iter_mut().zip(steps) {
                p.steps = s;
                for (key, t) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let src = state.get(&format!("optim.{key}.{}", p.name)).ok_or_else(|| bad(format!("nothing for {}", p.name)))?;
                    t.copy_(&src.to_device(t.device()).to_kind(t.kind()));
                }
            }
            Ok(())
        })
    }
}

fn project(projection: Option<&UpdateProjection>, update: Tensor) -> Tensor {
    match projection {
        Some(p) => p.left.to_kind(update.kind()).matmul(&update).matmul(&p.right.to_kind(update.kind())),
        None => update,
    }
}

/// The trainable variables of `vs` with their names, in the store's order
/// (whether or not `requires_grad` is set now).
pub fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let names: HashMap<usize, String> = vs.variables().into_iter().map(|(n, t)| (t.data_ptr() as usize, n)).collect();
    let vars = vs.variables_.lock().expect("var store lock");
    vars.trainable_variables
        .iter()
        .map(|var| (names.get(&(var.tensor.data_ptr() as usize)).cloned().unwrap_or_default(), var.tensor.shallow_clone()))
        .collect()
}

/// `torch.nn.utils.clip_grad_norm_` over `grads`.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) {
    if grads.is_empty() {
        return;
    }
    tch::no_grad(|| {
        let total = grads.iter().map(|g| g.square().sum(Kind::Float)).fold(Tensor::zeros([], (Kind::Float, grads[0].device())), |a, b| a + b).sqrt();
        let coef = ((total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for g in grads {
            let _ = g.shallow_clone().g_mul_(&coef);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    /// timm's `MultiStepLRScheduler` as VPT-NSP meets it: decays at the milestones, not before.
    #[test]
    fn milestones_decay_at_each_milestone() {
        let s = Schedule::Milestones { at: [40, 70], rate: 0.1 };
        let lrs: Vec<f64> = [0, 39, 40, 69, 70, 99].iter().map(|&e| s.lr(0.01, e, 0, 1, 100)).collect();
        for (got, want) in lrs.iter().zip([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4]) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        assert!(Schedule::Milestones { at: [70, 40], rate: 0.1 }.validate().unwrap_err().contains("increasing"));
        let parsed: Schedule =
            toml::from_str::<toml::Table>("s = { milestones = { at = [40, 70], rate = 0.1 } }").unwrap()["s"].clone().try_into().unwrap();
        assert_eq!(parsed, s);
    }

    /// Same trajectory as libtorch's own Adam / AdamW / SGD (which cannot be checkpointed).
    #[test]
    fn matches_libtorch_adam_adamw_and_sgd() {
        for kind in [OptimizerKind::Adam, OptimizerKind::AdamW, OptimizerKind::Sgd] {
            let cfg = StageOptim { kind, momentum: 0.9, ..StageOptim::adam(0.05).weight_decay(0.01) };
            let run = |ours: bool| {
                let vs = nn::VarStore::new(tch::Device::Cpu);
                let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
                let mut mine = Optimizer::new(&vs, &cfg, &|_| Some(1.0));
                let mut theirs = match kind {
                    OptimizerKind::Adam => nn::Adam { wd: 0.01, ..Default::default() }.build(&vs, 0.05).unwrap(),
                    OptimizerKind::AdamW => nn::AdamW { wd: 0.01, ..Default::default() }.build(&vs, 0.05).unwrap(),
                    OptimizerKind::Sgd => nn::Sgd { momentum: 0.9, wd: 0.01, ..Default::default() }.build(&vs, 0.05).unwrap(),
                };
                for i in 0..5 {
                    let loss = (&w * &w * (i + 1) as f64).sum(Kind::Float);
                    if ours {
                        mine.zero_grad();
                        loss.backward();
                        mine.step();
                    } else {
                        theirs.zero_grad();
                        loss.backward();
                        theirs.step();
                    }
                }
                w
            };
            let err = (run(true) - run(false)).abs().max().double_value(&[]);
            assert!(err < 1e-6, "{kind:?}: {err}");
        }
    }

    #[test]
    fn only_selected_variables_are_updated_at_their_scale() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let a = (vs.root() / "a").var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let b = (vs.root() / "b").var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let c = (vs.root() / "c").var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let scale = |n: &str| match n {
            "a.w" => Some(1.0),
            "b.w" => Some(0.5),
            _ => None,
        };
        let mut opt = Optimizer::new(&vs, &StageOptim::sgd(0.1, 0.0), &scale);
        (&a + &b + &c).sum(Kind::Float).backward();
        opt.step();
        let v = |t: &Tensor| t.double_value(&[0]);
        assert!((v(&a) - 0.9).abs() < 1e-7 && (v(&b) - 0.95).abs() < 1e-7, "{} {}", v(&a), v(&b));
        assert_eq!(v(&c), 1.0, "not this optimizer's");
    }

    #[test]
    fn schedules() {
        let s = Schedule::CosineEpoch;
        assert_eq!(s.lr(1.0, 0, 5, 10, 4), 1.0);
        assert!((s.lr(1.0, 2, 0, 10, 4) - 0.5).abs() < 1e-12);
        assert!((Schedule::Cosine.lr(1.0, 2, 0, 10, 4) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Step { every: 2, rate: 0.1, step_late: false }.lr(1.0, 3, 0, 10, 4), 0.1);
        assert!(Schedule::Step { every: 0, rate: 0.1, step_late: false }.validate().is_err());
        // MoE_PromptCL's order (decay-epochs 30, 50 epochs): epochs 0–30 at lr, 31–49 at lr / 10.
        let late = Schedule::Step { every: 30, rate: 0.1, step_late: true };
        assert_eq!((late.lr(1.0, 30, 0, 1, 50), late.lr(1.0, 31, 0, 1, 50)), (1.0, 0.1));
        let s: Schedule = serde_json::from_str(r#"{"step": {"every": 30, "rate": 0.1}}"#).unwrap();
        assert_eq!(s, Schedule::Step { every: 30, rate: 0.1, step_late: false }, "step_late defaults to false");
    }

    /// CODA-Prompt's official CIFAR run (lr 0.001, 20 epochs): the rates its
    /// `CosineSchedule` sets, stepped as `learners/default.py` steps it.
    #[test]
    fn coda_cosine_follows_the_official_scheduler() {
        struct Official {
            k: usize,
            last_epoch: i64,
        }
        impl Official {
            fn lr(&self, base: f64) -> f64 {
                base * (99.0 * std::f64::consts::PI * self.last_epoch as f64 / (200.0 * (self.k as f64 - 1.0))).cos()
            }
        }
        // __init__: step(0), then last_epoch = -1; the loop: `if epoch > 0: scheduler.step()`.
        let mut sched = Official { k: 20, last_epoch: 0 };
        sched.last_epoch = -1;
        for epoch in 0..20 {
            if epoch > 0 {
                sched.last_epoch += 1;
            }
            let want = if epoch == 0 { 0.001 } else { sched.lr(0.001) };
            let got = Schedule::CodaCosine.lr(0.001, epoch, 3, 10, 20);
            assert!((got - want).abs() < 1e-15, "epoch {epoch}: {got} vs {want}");
        }
        assert_eq!(Schedule::CodaCosine.lr(0.001, 1, 0, 10, 20), 0.001);
        assert!((Schedule::CodaCosine.lr(0.001, 19, 0, 10, 20) - 9.744e-5).abs() < 1e-7, "last epoch near 10 % for K = 20");
        assert_eq!(Schedule::CodaCosine.lr(0.001, 0, 0, 10, 1), 0.001);
        let s: Schedule = serde_json::from_str("\"coda-cosine\"").unwrap();
        assert_eq!(s, Schedule::CodaCosine);
    }

    /// timm 0.6's `CosineLRScheduler._get_lr` driven in HiDe-PET's order of
    /// calls: built (the groups at `warmup_lr_init`), then per epoch train and
    /// `step(epoch)`; and in timm's intended order, `step(epoch + 1)`.
    #[test]
    fn timm_cosine_follows_the_official_order_of_calls() {
        let (base, warm, min, wt, e) = (9.375e-4, 1e-6, 1e-5, 5usize, 50usize);
        let get = |t: usize| {
            if t < wt {
                warm + t as f64 * ((base - warm) / wt as f64)
            } else {
                min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * t as f64 / e as f64).cos())
            }
        };
        for late in [true, false] {
            let s = Schedule::TimmCosine { warmup_epochs: wt, warmup_lr: warm, min_lr: min, step_late: late };
            let mut current = warm;
            for epoch in 0..e {
                let got = s.lr(base, epoch, 7, 10, e);
                assert!((got - current).abs() < 1e-18, "step_late {late}, epoch {epoch}: {got} vs {current}");
                current = get(if late { epoch } else { epoch + 1 });
            }
        }
        let late = Schedule::TimmCosine { warmup_epochs: wt, warmup_lr: warm, min_lr: min, step_late: true };
        assert_eq!((late.lr(base, 0, 0, 1, e), late.lr(base, 1, 0, 1, e)), (warm, warm), "two epochs at the warm-up rate");
        let s: Schedule =
            toml::from_str::<toml::Table>("s = { timm-cosine = { warmup_epochs = 5, warmup_lr = 1e-6, min_lr = 1e-5, step_late = true } }").unwrap()
                ["s"]
                .clone()
                .try_into()
                .unwrap();
        assert_eq!(s, late);
        assert!(Schedule::TimmCosine { warmup_epochs: 5, warmup_lr: -1.0, min_lr: 0.0, step_late: false }.validate().is_err());
    }
}
