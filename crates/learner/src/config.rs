//! Optimisation settings a run gives every method, and per-method parameters.

use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};
use crate::optim::{OptimizerKind, Schedule, StageOptim};

/// `[optim]` of a run config: the optimizer of single-stage methods and of
/// the stages that follow the run (a multi-stage method's own stages say
/// theirs). An optimizer is rebuilt for every stage of every task
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
        self.scaled(self.lr)
    }

    /// `lr · batch_size / 256` when the run scales learning rates, else `lr`.
    pub fn scaled(&self, lr: f64) -> f64 {
        if self.scale_lr_by_batch {
            lr * self.batch_size as f64 / 256.0
        } else {
            lr
        }
    }

    /// This section as a stage's optimizer.
    pub fn stage_optim(&self) -> StageOptim {
        StageOptim {
            kind: self.kind,
            lr: self.effective_lr(),
            momentum: self.momentum,
            betas: self.betas,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            clip_grad_norm: self.clip_grad_norm,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LearnerError::Invalid(format!("optim.{m}")));
        if self.batch_size == 0 {
            return bad("batch_size must be positive".into());
        }
        // Named with the value as written (the stage sees it batch-scaled).
        if !(self.lr > 0.0) {
            return bad(format!("lr = {} must be positive", self.lr));
        }
        self.stage_optim().validate().or_else(bad)
    }
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of …"
/// (or "unknown variant") messages when a valid name is close.
pub fn did_you_mean(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1).or_else(|| message.split("unknown variant `").nth(1)) else {
        return message.to_string();
    };
    let Some((typo, tail)) = rest.split_once('`') else { return message.to_string() };
    let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    match closest(typo, &candidates) {
        Some(c) => format!("{message} (did you mean `{c}`?)"),
        None => message.to_string(),
    }
}

/// The candidate within a few edits of `typo`, if any.
pub fn closest<'a>(typo: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let best = candidates.iter().map(|c| (edit_distance(typo, c), *c)).min();
    best.filter(|&(d, _)| d <= 2.max(typo.len() / 3)).map(|(_, c)| c)
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
