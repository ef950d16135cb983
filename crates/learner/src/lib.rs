//! Continual-learning methods behind one small trait, a registry, and metrics.
//!
//! Owns: `ContinualMethod`, the method table, the methods, the metrics.
//! Must not import: the harness (epochs, evaluation, checkpoints, files).

mod backbone;
mod config;
mod error;
mod method;
pub mod methods;
pub mod hierc;
pub mod metrics;
pub mod ot;
pub mod registry;
pub mod regularizer;
pub mod stats;

pub use backbone::{Encoder, Features};
pub use config::{did_you_mean, parse_params, OptimConfig, OptimizerKind, Schedule};
pub use error::{LearnerError, Result};
pub use method::{tasks_seen, Backbone, BatchSource, ContinualMethod, DataScope, MethodContext, Prediction, Step, TaskInfo};
