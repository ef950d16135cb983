//! Optimisation settings a run gives every method, and per-method parameters.

use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Cosine from `lr` to 0 over each task's epochs (per step).
    Cosine,
    /// `lr · rate^⌊epoch / every⌋` (timm `StepLRScheduler`, `--sched step`).
    Step { every: usize, rate: f64 },
}

/// `[optim]` of a run config. The optimizer is rebuilt at every task
/// (`reinit_optimizer = True` in the official code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    /// Use `lr · batch_size / 256`, as the official `main.py` of L2P / DualPrompt / HiDe / NoRGa does.
    pub scale_lr_by_batch: bool,
    pub batch_size: usize,
    pub epochs: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub momentum: f64,
    pub betas: [f64; 2],
    /// Clip the gradient norm (official configs: 1.0); 0 disables.
    pub clip_grad_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: 0.005,
            scale_lr_by_batch: true,
            batch_size: 24,
            epochs: 5,
            schedule: Schedule::Constant,
            weight_decay: 0.0,
            momentum: 0.9,
            betas: [0.9, 0.999],
            clip_grad_norm: 1.0,
        }
    }
}

impl OptimConfig {
    pub fn effective_lr(&self) -> f64 {
        if self.scale_lr_by_batch { self.lr * self.batch_size as f64 / 256.0 } else { self.lr }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LearnerError::Invalid(format!("optim.{m}")));
        if !(self.lr > 0.0) {
            return bad(format!("lr = {} must be positive", self.lr));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be positive".into());
        }
        if !(self.weight_decay >= 0.0) || !(self.clip_grad_norm >= 0.0) {
            return bad("weight_decay and clip_grad_norm must be >= 0".into());
        }
        if let Schedule::Step { every, rate } = self.schedule {
            if every == 0 || !(rate > 0.0) {
                return bad(format!("schedule.step: every = {every} must be >= 1 and rate = {rate} > 0"));
            }
        }
        if !(0.0..1.0).contains(&self.betas[0]) || !(0.0..1.0).contains(&self.betas[1]) {
            return bad(format!("betas {:?} must be in [0, 1)", self.betas));
        }
        Ok(())
    }

    /// Learning rate at `step` of a task with `per_epoch` steps per epoch and `total` steps.
    pub fn lr_at(&self, step: usize, per_epoch: usize, total: usize) -> f64 {
        let lr = self.effective_lr();
        match self.schedule {
            Schedule::Constant => lr,
            Schedule::Cosine => {
                let t = if total == 0 { 0.0 } else { step as f64 / total as f64 };
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { every, rate } => {
                let epoch = step / per_epoch.max(1);
                lr * rate.powi((epoch / every.max(1)) as i32)
            }
        }
    }
}

/// Parses a method's `[method.params]` table into its typed parameters,
/// rejecting unknown keys with the method's name in the message.
pub fn parse_params<T: serde::de::DeserializeOwned>(method: &str, params: &toml::Table) -> Result<T> {
    T::deserialize(toml::Value::Table(params.clone()))
        .map_err(|e| LearnerError::Params { method: method.into(), reason: did_you_mean(&e.to_string()) })
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of …"
/// (or "unknown variant") messages when a valid name is close.
pub fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1).or_else(|| message.split("unknown variant `").nth(1)) else {
        return message.to_string();
    };
    let Some((typo, tail)) = rest.split_once('`') else { return message.to_string() };
    let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let best = candidates.iter().map(|c| (edit_distance(typo, c), *c)).min();
    match best {
        Some((d, c)) if d <= 2.max(typo.len() / 3) => format!("{message} (did you mean `{c}`?)"),
        _ => message.to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_field() {
        let m = did_you_mean("unknown field `pool_sise`, expected one of `pool_size`, `length`, `top_k`");
        assert!(m.ends_with("(did you mean `pool_size`?)"), "{m}");
        let m = did_you_mean("unknown field `zzzzzz`, expected one of `pool_size`, `length`");
        assert!(!m.contains("did you mean"), "{m}");
        assert_eq!(did_you_mean("some other error"), "some other error");
    }
}
