//! Training stages: what a method trains in each task, in order.
//!
//! A multi-stage method (HiDe-Prompt: task-identity inference, prompts, then
//! classifier alignment on pseudo-features) declares one [`Stage`] per step
//! of its recipe; the harness runs them in order, each with a fresh
//! optimizer of its own over the parameters it names, logs and checkpoints
//! every epoch of every stage, and seeds libtorch's generator before every
//! epoch and hook so that a resumed run draws what an uninterrupted one did.

use crate::config::OptimConfig;
use crate::optim::{Optimizer, StageOptim};
use crate::{LearnerError, Result};

/// Where a stage's batches come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageData {
    /// The task's training data (the method's `data_scope`) under the train transform, shuffled.
    TrainTransform,
    /// The same data under the test transform, shuffled.
    TestTransform,
    /// Batches the method makes itself each epoch ([`crate::ContinualMethod::generate`]),
    /// e.g. Gaussian pseudo-features of every seen class.
    Generated,
}

/// The variables a stage trains: those whose name is `prefix` or starts with
/// `prefix.` (`""` = every trainable variable), at `lr_scale` × the stage's
/// learning rate. A variable takes the first group that matches.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    pub prefix: String,
    pub lr_scale: f64,
}

impl ParamGroup {
    pub fn matches(&self, name: &str) -> bool {
        self.prefix.is_empty() || name == self.prefix || name.strip_prefix(self.prefix.as_str()).is_some_and(|r| r.starts_with('.'))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Short and unique within the task (`log.jsonl` and the progress bar name it).
    pub name: &'static str,
    pub epochs: usize,
    pub trains: Vec<ParamGroup>,
    pub optim: StageOptim,
    pub data: StageData,
}

impl Stage {
    /// A stage training every trainable variable on `data`.
    pub fn new(name: &'static str, epochs: usize, optim: StageOptim, data: StageData) -> Self {
        Self { name, epochs, trains: vec![ParamGroup { prefix: String::new(), lr_scale: 1.0 }], optim, data }
    }

    /// The one stage of a single-stage method: the run's `[optim]` on the task's training data.
    pub fn from_run(name: &'static str, run: &OptimConfig) -> Self {
        Self::new(name, run.epochs, run.stage_optim(), StageData::TrainTransform)
    }

    /// Trains only these variables (name prefixes), each at its learning-rate scale.
    pub fn only(mut self, groups: &[(&str, f64)]) -> Self {
        self.trains = groups.iter().map(|&(prefix, lr_scale)| ParamGroup { prefix: prefix.into(), lr_scale }).collect();
        self
    }

    /// Variables under `prefix` learn at `lr_scale` × the stage's rate (the rest as before).
    /// The stage's optimizer with another weight decay.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.optim = self.optim.weight_decay(weight_decay);
        self
    }

    pub fn scale_lr(mut self, prefix: &str, lr_scale: f64) -> Self {
        self.trains.insert(0, ParamGroup { prefix: prefix.into(), lr_scale });
        self
    }

    /// The learning-rate scale of variable `name`, or `None` when the stage does not train it.
    pub fn lr_scale(&self, name: &str) -> Option<f64> {
        self.trains.iter().find(|g| g.matches(name)).map(|g| g.lr_scale)
    }

    /// A fresh optimizer over the variables of `vs` this stage trains.
    pub fn optimizer(&self, vs: &tch::nn::VarStore) -> Optimizer {
        Optimizer::new(vs, &self.optim, &|name| self.lr_scale(name))
    }

    /// The learning rate at step `step` of epoch `epoch`, epochs of `per_epoch` steps.
    pub fn lr_at(&self, epoch: usize, step: usize, per_epoch: usize) -> f64 {
        self.optim.schedule.lr(self.optim.lr, epoch, step, per_epoch, self.epochs)
    }

    /// Checks a task's stage list against the method's trainable variables.
    pub fn validate_all(method: &str, stages: &[Stage], trainable: &[String]) -> Result<()> {
        let bad = |reason: String| Err(LearnerError::Params { method: method.into(), reason });
        for (i, s) in stages.iter().enumerate() {
            if s.name.is_empty() || stages[..i].iter().any(|o| o.name == s.name) {
                return bad(format!("stage names must be unique and non-empty (`{}`)", s.name));
            }
            if let Err(e) = s.optim.validate() {
                return bad(format!("stage `{}`: {e}", s.name));
            }
            for g in &s.trains {
                if !trainable.iter().any(|n| g.matches(n)) {
                    return bad(format!("stage `{}` trains `{}`, which names no trainable variable", s.name, g.prefix));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_match_whole_name_components_first_match_wins() {
        let s = Stage::new("s", 1, StageOptim::adam(0.1), StageData::TrainTransform).only(&[("head", 0.1), ("e_prompt", 1.0)]);
        assert_eq!(s.lr_scale("head.weight"), Some(0.1));
        assert_eq!(s.lr_scale("e_prompt.3"), Some(1.0));
        assert_eq!(s.lr_scale("tii.head.weight"), None, "a prefix is whole components from the start");
        assert_eq!(s.lr_scale("header"), None);
        let all = Stage::new("s", 1, StageOptim::adam(0.1), StageData::TrainTransform).scale_lr("backbone", 0.1);
        assert_eq!((all.lr_scale("backbone.blocks.0.w"), all.lr_scale("head.weight")), (Some(0.1), Some(1.0)));
        let names = vec!["head.weight".to_string()];
        assert!(Stage::validate_all("m", std::slice::from_ref(&s), &names).is_err(), "e_prompt names nothing");
        assert!(Stage::validate_all("m", &[all.clone(), all], &names).is_err(), "duplicate names");
    }
}
