//! The plug-in surface: what a continual-learning method implements.

use std::ops::Range;
use std::rc::Rc;

use tch::{nn, Device, Tensor};

pub use crate::backbone::Backbone;
use crate::config::OptimConfig;
use crate::error::{LearnerError, Result};
use crate::stage::Stage;

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

/// Where the harness is: the task being trained and, inside it, the stage
/// and epoch. Labels given to methods are *incremental* labels: task t owns
/// `classes`, and `0..seen.end` are all classes seen so far.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub task: usize,
    pub num_tasks: usize,
    pub classes: Range<usize>,
    pub seen: Range<usize>,
    /// The stage being run (`""` outside any: `begin_task`, `end_task`).
    pub stage: &'static str,
    /// Epoch within the stage, and the stage's number of epochs.
    pub epoch: usize,
    pub epochs: usize,
}

impl TaskInfo {
    pub fn new(task: usize, num_tasks: usize, classes: Range<usize>, seen: Range<usize>) -> Self {
        Self { task, num_tasks, classes, seen, stage: "", epoch: 0, epochs: 0 }
    }

    /// The same task inside stage `stage` (`epochs` long), at its first epoch.
    pub fn in_stage(&self, stage: &Stage) -> Self {
        Self { stage: stage.name, epoch: 0, epochs: stage.epochs, ..self.clone() }
    }

    pub fn is_last_epoch(&self) -> bool {
        self.epoch + 1 == self.epochs
    }
}

/// A batch's inputs.
///
/// # Shapes
/// - `Images`: `[B, 3, H, W]` float
/// - `Text`: packed token ids `[B, 3 + T]` int64 (`promptcl_stream::text::pack`)
/// - `Features`: `[B, D]`, made by the method itself (a [`crate::StageData::Generated`] stage)
#[derive(Debug)]
pub enum Inputs {
    Images(Tensor),
    Text(Tensor),
    Features(Tensor),
}

impl Inputs {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Self::Images(t) | Self::Text(t) | Self::Features(t) => t,
        }
    }

    /// The batch size.
    pub fn len(&self) -> i64 {
        self.tensor().size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.tensor().device()
    }

    /// The generated features of a `Generated` stage's batch.
    pub fn features(&self) -> Result<&Tensor> {
        match self {
            Self::Features(t) => Ok(t),
            _ => Err(LearnerError::Invalid("expected generated features, got an encoder's inputs (images or text)".into())),
        }
    }
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
/// consolidation after a stage or a task (prototypes, statistics).
pub trait BatchSource {
    /// Calls `f(inputs, incremental_labels)` for every batch.
    fn for_each(&mut self, f: &mut dyn FnMut(&Inputs, &Tensor) -> Result<()>) -> Result<()>;
}

/// `feature(inputs)` of every batch of `data`, and the labels: `([N, …], [N])`.
pub fn collect_features(data: &mut dyn BatchSource, feature: &mut dyn FnMut(&Inputs) -> Result<Tensor>) -> Result<(Tensor, Tensor)> {
    let (mut fs, mut ys) = (Vec::new(), Vec::new());
    data.for_each(&mut |x, y| {
        fs.push(feature(x)?);
        ys.push(y.shallow_clone());
        Ok(())
    })?;
    Ok((Tensor::cat(&fs, 0), Tensor::cat(&ys, 0)))
}

/// A continual-learning method. The harness owns stages, epochs, the
/// optimizers, the random generator's seeds, evaluation, checkpoints and
/// results; a method says what it trains in which stage, how to compute its
/// loss, how to consolidate, and how to predict.
///
/// Per task the harness calls `begin_task`, then for each of `stages` in
/// order: for every epoch `begin_epoch`, (`generate`,) `train_step` per
/// batch, `end_epoch`; then `end_stage`. Last `end_task`, and evaluation.
///
/// Every tensor of state a method keeps lives in `vars()` (trainable or not),
/// so a checkpoint of that store is a checkpoint of the method.
pub trait ContinualMethod {
    /// Parameters and state. A stage's optimizer sees the trainable ones the
    /// stage names whose `requires_grad` is set; freeze what must not change.
    fn vars(&self) -> &nn::VarStore;

    /// The stages of `task`, in order; `optim` is the run's `[optim]`.
    /// Default: one stage, "train", of `[optim]` on the task's data.
    fn stages(&self, _task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        vec![Stage::from_run("train", optim)]
    }

    /// Which data the `TrainTransform` / `TestTransform` stages read.
    fn data_scope(&self) -> DataScope {
        DataScope::CurrentTask
    }

    fn begin_task(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    /// After `begin_task`, before the first stage: a pass over the task's
    /// training data under the test transform, for what the method needs
    /// while it trains (HierC's statistics of the frozen model, computed
    /// before the task as the official `_compute_mean_org`). When a run
    /// resumes inside the task it runs again, before the checkpoint is
    /// restored, from the same seed.
    fn prepare_task(&mut self, _task: &TaskInfo, _data: &mut dyn BatchSource) -> Result<()> {
        Ok(())
    }

    /// The features the head reads for inputs of `task`, as the trained
    /// model gives them (statistics taken after a task, like HierC's
    /// `_compute_mean`, read these). The default is the prediction's features;
    /// a method that routes by task gives the task's own prompts instead, as
    /// the official code's `task_id=` forward does.
    fn task_features(&self, x: &Inputs, task: &TaskInfo) -> Result<Option<Tensor>> {
        Ok(self.predict(x, task.seen.end)?.features)
    }

    fn begin_epoch(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    /// The batches of one epoch of a `Generated` stage, `(features [B, D], labels [B])`.
    fn generate(&mut self, task: &TaskInfo) -> Result<Vec<(Tensor, Tensor)>> {
        Err(LearnerError::Invalid(format!("stage `{}` generates its data, but the method has no generator", task.stage)))
    }

    /// The loss of one batch (the harness does backward, clipping and the step).
    /// # Shapes
    /// - `inputs`: see [`Inputs`]; `labels`: `[B]` int64 incremental labels
    fn train_step(&mut self, inputs: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step>;

    /// Projections of the updates of variables the stage trains (VPT-NSP's
    /// null space), asked for when the stage's optimizer is made.
    fn update_projections(&self, _task: &TaskInfo) -> Vec<crate::UpdateProjection> {
        Vec::new()
    }

    fn end_epoch(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    /// After a stage's last epoch; `data` is the task's training data under the test transform.
    fn end_stage(&mut self, _task: &TaskInfo, _data: &mut dyn BatchSource) -> Result<()> {
        Ok(())
    }

    fn end_task(&mut self, _task: &TaskInfo, _data: &mut dyn BatchSource) -> Result<()> {
        Ok(())
    }

    /// Scores over the `seen` classes, without knowing the task.
    fn predict(&self, inputs: &Inputs, seen: usize) -> Result<Prediction>;
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

/// What a method's memory need can depend on, known from the config before
/// any data is read (`registry::memory_need`).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub feature_dim: i64,
    pub num_classes: usize,
}

/// Memory a method will hold beyond the backbone, where that can be large.
#[derive(Debug, Clone)]
pub struct MemoryNeed {
    pub bytes: u64,
    /// What needs it, for the message (`ranpac: projection = 10000`).
    pub what: String,
    /// What to change when it does not fit.
    pub fix: &'static str,
}

impl MemoryNeed {
    /// Whether it fits on `device`: on the CPU within 4/5 of the memory the
    /// kernel calls available, on a GPU by allocating it once (the caching
    /// allocator keeps the block for the run).
    pub fn check(&self, device: Device) -> Result<()> {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        match device {
            Device::Cpu => {
                let available = std::fs::read_to_string("/proc/meminfo")
                    .ok()
                    .and_then(|s| s.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
                    .map(|kib| kib * 1024);
                match available {
                    Some(avail) if self.bytes > avail / 5 * 4 => Err(LearnerError::Invalid(format!(
                        "{} needs {:.1} GiB, more than the {:.1} GiB of memory available: {}",
                        self.what,
                        gib(self.bytes),
                        gib(avail),
                        self.fix
                    ))),
                    _ => Ok(()),
                }
            }
            _ => match Tensor::f_empty([self.bytes as i64], (tch::Kind::Uint8, device)) {
                Ok(_) => Ok(()),
                Err(_) => Err(LearnerError::Invalid(format!(
                    "{} needs {:.1} GiB, which {device:?} cannot allocate: {}",
                    self.what,
                    gib(self.bytes),
                    self.fix
                ))),
            },
        }
    }
}
