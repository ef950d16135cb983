//! The plug-in surface: what a continual-learning method implements.

use std::ops::Range;
use std::rc::Rc;

use tch::{nn, Device, Tensor};

pub use crate::backbone::Backbone;
use crate::config::OptimConfig;
use crate::error::Result;

/// What a method is built with.
#[derive(Clone)]
pub struct MethodContext {
    pub backbone: Rc<Backbone>,
    pub num_classes: usize,
    pub num_tasks: usize,
    /// Classes per task, in stream order (incremental labels are contiguous per task).
    pub task_sizes: Vec<usize>,
    pub optim: OptimConfig,
    pub device: Device,
    pub seed: u64,
    /// Leaf group (label-tree parent) of each incremental label, when the
    /// dataset has a label tree.
    pub groups: Option<Vec<usize>>,
}

impl MethodContext {
    /// Width of the encoder's feature and query (heads, keys, statistics).
    pub fn feature_dim(&self) -> i64 {
        self.backbone.feature_dim()
    }

    /// Width of the encoder's tokens (prompt tokens, prefixes).
    pub fn token_dim(&self) -> i64 {
        self.backbone.token_dim()
    }
}

/// The task being trained. Labels given to methods are *incremental* labels:
/// task t owns `classes`, and `0..seen.end` are all classes seen so far.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub task: usize,
    pub num_tasks: usize,
    pub classes: Range<usize>,
    pub seen: Range<usize>,
    pub epoch: usize,
}

/// A method's answer for a batch.
///
/// # Shapes
/// - `logits`: `[B, seen]` — scores over every class seen so far
/// - `task_ids`: `[B]` int64, the task the method routed each sample to (if it does)
/// - `features`: `[B, D]`, the representation the logits were read from (if the method has one)
pub struct Prediction {
    pub logits: Tensor,
    pub task_ids: Option<Tensor>,
    pub features: Option<Tensor>,
}

impl Prediction {
    pub fn new(logits: Tensor, task_ids: Option<Tensor>) -> Self {
        Self { logits, task_ids, features: None }
    }

    pub fn with_features(mut self, features: &Tensor) -> Self {
        self.features = Some(features.shallow_clone());
        self
    }
}

/// What one training step returns: the loss, and the (masked) logits it was
/// computed from when there are any, for the per-epoch training accuracy.
pub struct Step {
    pub loss: Tensor,
    /// `[B, classes]`
    pub logits: Option<Tensor>,
    /// `[B, D]`, the representation the head read (with its graph), for
    /// regularisers that act on features (`crate::regularizer`).
    pub features: Option<Tensor>,
}

impl From<Tensor> for Step {
    fn from(loss: Tensor) -> Self {
        Self { loss, logits: None, features: None }
    }
}

impl Step {
    pub fn with_features(mut self, features: &Tensor) -> Self {
        self.features = Some(features.shallow_clone());
        self
    }
}

/// Which training data a method wants for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataScope {
    CurrentTask,
    /// Everything seen so far (the joint upper bound).
    AllSeen,
}

/// Test-transformed batches of the current task's training data, for
/// consolidation at the end of a task (prototypes, statistics).
pub trait BatchSource {
    /// Calls `f(inputs, incremental_labels)` for every batch.
    fn for_each(&mut self, f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>) -> Result<()>;
}

/// A continual-learning method. The harness owns epochs, the optimizer,
/// evaluation, checkpoints and results; a method only says how to compute its
/// loss, how to consolidate after a task, and how to predict.
///
/// Every tensor of state a method keeps lives in `vars()` (trainable or not),
/// so a checkpoint of that store is a checkpoint of the method.
pub trait ContinualMethod {
    /// Parameters and state. The optimizer sees the trainable ones whose
    /// `requires_grad` is set; freeze what must not change.
    fn vars(&self) -> &nn::VarStore;

    fn begin_task(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    /// The loss of one batch (the harness does backward and the step).
    /// # Shapes
    /// - `inputs`: images `[B, 3, H, W]`, or packed text `[B, 3 + T]` int64
    ///   (whatever the backbone reads); `labels`: `[B]` int64 incremental labels
    fn train_step(&mut self, images: &Tensor, labels: &Tensor, task: &TaskInfo) -> Result<Step>;

    fn end_task(&mut self, _task: &TaskInfo, _data: &mut dyn BatchSource) -> Result<()> {
        Ok(())
    }

    /// Scores over the `seen` classes, without knowing the task.
    fn predict(&self, images: &Tensor, seen: usize) -> Result<Prediction>;

    /// How many epochs to train each task; `None` follows `[optim].epochs`.
    fn epochs(&self) -> Option<usize> {
        None
    }

    fn data_scope(&self) -> DataScope {
        DataScope::CurrentTask
    }

    /// Per-group learning-rate multipliers (`nn::Path::set_group`), group 0 = 1.0.
    fn lr_groups(&self) -> Vec<(usize, f64)> {
        Vec::new()
    }
}

/// How many tasks' classes make up the first `seen` incremental labels.
pub fn tasks_seen(task_sizes: &[usize], seen: usize) -> usize {
    let mut total = 0;
    for (t, s) in task_sizes.iter().enumerate() {
        total += s;
        if total >= seen {
            return t + 1;
        }
    }
    task_sizes.len()
}

/// The task that owns incremental label `class`.
pub fn task_of(task_sizes: &[usize], class: usize) -> usize {
    let mut end = 0;
    for (t, s) in task_sizes.iter().enumerate() {
        end += s;
        if class < end {
            return t;
        }
    }
    task_sizes.len().saturating_sub(1)
}
