//! Continual-learning methods behind one small trait, a registry, and metrics.
//!
//! Owns: `ContinualMethod` and its training stages, optimizers and
//! schedules, the method table, the methods and their reusable parts, the metrics.
//! Must not import: the harness (epochs, evaluation, checkpoints, files).

mod backbone;
mod config;
pub mod drive;
mod error;
pub mod hierc;
mod method;
pub mod methods;
pub mod metrics;
pub mod optim;
pub mod ot;
pub mod params;
pub mod parts;
pub mod registry;
pub mod regularizer;
pub mod stage;
pub mod stats;

pub use backbone::{Encoder, Features};
pub use config::{closest, did_you_mean, OptimConfig};
pub use error::{LearnerError, Result};
pub use method::{
    tasks_seen, Backbone, BatchSource, ContinualMethod, DataScope, Inputs, MemoryNeed, MethodContext, Prediction, Sizes, Step, TaskInfo,
};
pub use methods::common::{ce_step, l2_normalize, mask_outside};
pub use optim::{OptimizerKind, Schedule, StageOptim, UpdateProjection};
pub use params::{parse_over, Documented};
pub use stage::{ParamGroup, Stage, StageData};
