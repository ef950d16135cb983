//! Adam and SGD with the update rules of `torch.optim` (L2 weight decay added
//! to the gradient, Adam's bias corrections and per-parameter step counts),
//! written over tensors so that their state can be checkpointed: libtorch's
//! optimizers keep theirs out of reach, and without it a run resumed in the
//! middle of a task would not match an uninterrupted one.

use std::collections::HashMap;

use anyhow::{Context, Result};
use promptcl_learner::{OptimConfig, OptimizerKind};
use tch::{nn, Kind, Tensor};

struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    /// Adam: first moment; SGD: momentum buffer.
    m: Tensor,
    /// Adam: second moment.
    v: Tensor,
    steps: i64,
}

pub struct Optimizer {
    kind: OptimizerKind,
    params: Vec<Param>,
    lr: f64,
    group_scale: HashMap<usize, f64>,
    wd: f64,
    betas: [f64; 2],
    momentum: f64,
}

const EPS: f64 = 1e-8;

impl Optimizer {
    /// Over every trainable variable of `vs`; those with `requires_grad`
    /// off or no gradient are skipped at each step, as in libtorch.
    pub fn new(vs: &nn::VarStore, cfg: &OptimConfig, groups: &[(usize, f64)]) -> Self {
        let names: HashMap<usize, String> = vs.variables().into_iter().map(|(n, t)| (t.data_ptr() as usize, n)).collect();
        let vars = vs.variables_.lock().expect("var store lock");
        let params = vars
            .trainable_variables
            .iter()
            .map(|var| Param {
                name: names.get(&(var.tensor.data_ptr() as usize)).cloned().unwrap_or_default(),
                tensor: var.tensor.shallow_clone(),
                group: var.group,
                m: var.tensor.zeros_like().detach(),
                v: var.tensor.zeros_like().detach(),
                steps: 0,
            })
            .collect();
        Self {
            kind: cfg.kind,
            params,
            lr: cfg.effective_lr(),
            group_scale: groups.iter().copied().collect(),
            wd: cfg.weight_decay,
            betas: cfg.betas,
            momentum: cfg.momentum,
        }
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

    pub fn step(&mut self) {
        let (b1, b2) = (self.betas[0], self.betas[1]);
        tch::no_grad(|| {
            for p in &mut self.params {
                if !p.tensor.requires_grad() {
                    continue;
                }
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = self.lr * self.group_scale.get(&p.group).copied().unwrap_or(1.0);
                let g = if self.wd != 0.0 { &grad + &p.tensor * self.wd } else { grad.shallow_clone() };
                p.steps += 1;
                match self.kind {
                    OptimizerKind::Adam => {
                        let _ = p.m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                        let _ = p.v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                        let c1 = 1.0 - b1.powi(p.steps as i32);
                        let c2 = 1.0 - b2.powi(p.steps as i32);
                        let denom = p.v.sqrt() / c2.sqrt() + EPS;
                        let _ = p.tensor.g_sub_(&(&p.m / denom * (lr / c1)));
                    }
                    OptimizerKind::Sgd => {
                        if self.momentum != 0.0 {
                            if p.steps == 1 {
                                p.m.copy_(&g);
                            } else {
                                let _ = p.m.g_mul_scalar_(self.momentum).g_add_(&g);
                            }
                            let _ = p.tensor.g_sub_(&(&p.m * lr));
                        } else {
                            let _ = p.tensor.g_sub_(&(g * lr));
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
        let steps = state.get("optim.steps").context("checkpoint has no optimizer state")?;
        let steps: Vec<i64> = Vec::try_from(steps.to_kind(Kind::Int64)).context("optim.steps")?;
        anyhow::ensure!(steps.len() == self.params.len(), "optimizer state is for {} parameters, not {}", steps.len(), self.params.len());
        tch::no_grad(|| -> Result<()> {
            for (p, s) in self.params.iter_mut().zip(steps) {
                p.steps = s;
                for (key, t) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let src = state.get(&format!("optim.{key}.{}", p.name)).with_context(|| format!("optimizer state for {}", p.name))?;
                    t.copy_(&src.to_device(t.device()).to_kind(t.kind()));
                }
            }
            Ok(())
        })
    }
}

/// `torch.nn.utils.clip_grad_norm_` over `grads`.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) {
    if grads.is_empty() {
        return;
    }
    tch::no_grad(|| {
        let total = grads
            .iter()
            .map(|g| g.square().sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, grads[0].device())), |a, b| a + b)
            .sqrt();
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

    /// Same trajectory as libtorch's own Adam / SGD (which cannot be checkpointed).
    #[test]
    fn matches_libtorch_adam_and_sgd() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let cfg = OptimConfig { kind, lr: 0.05, scale_lr_by_batch: false, weight_decay: 0.01, ..Default::default() };
            let run = |ours: bool| {
                let vs = nn::VarStore::new(tch::Device::Cpu);
                let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
                let mut mine = Optimizer::new(&vs, &cfg, &[]);
                let mut theirs = match kind {
                    OptimizerKind::Adam => nn::Adam { wd: 0.01, ..Default::default() }.build(&vs, 0.05).unwrap(),
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
}
