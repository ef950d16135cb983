//! WAVE-CRE (Le et al., "Adaptive Prompting for Continual Relation
//! Extraction: A Within-Task Variance Perspective", AAAI 2025; no public
//! code): rehearsal-free continual relation extraction on a frozen encoder,
//! composed of HiDe-Prompt's stages (`hide_prompt.rs`) with keyed pools:
//!
//! - **Task-specific prompt pools** ([`crate::parts::task_prompts`]): each task
//!   owns `pool_size` prefix prompts (length `length` = L) with keys; a relation
//!   instance uses the `top_k` prompts of its task's pool whose keys are
//!   closest (cosine) to its frozen query, so different prompts can serve the
//!   variance *within* a task. Loss: cross-entropy + `match_weight` × (1 − cos)
//!   over the chosen keys.
//! - **Generative model instead of stored data**: after each task, a Gaussian
//!   (mean + full covariance) per relation of the frozen query and of the
//!   prompted representation. Nothing else about the data is kept.
//! - **Task/relation predictor** ([`crate::parts::tii`]): an MLP on the query,
//!   trained on the task's data and then on queries sampled from every seen
//!   relation's Gaussian; its relation decides the task, hence the pool.
//! - **Relation classifier**: retrained after each task on representations
//!   sampled from every seen relation's Gaussian ([`crate::parts::alignment`]).
//!
//! The relation representation is `[h(E11); h(E21)]` of the prompted encoder
//! (the `Backbone`'s feature for text). Defaults: L = 1 and K = 8 are the
//! paper's; M = 10 prompts per task, λ = 0.1 and the epoch/learning-rate
//! settings are promptcl's choices, stated in `benchmarks/configs/cre_*.toml`.

use super::hide_prompt::{HidePrompt, Params};
use crate::{MethodContext, Result};

/// Pools of independent prompts: no copy-initialisation, momentum mixing or
/// contrastive term. Statistics are full covariances (HiDe's default too).
pub fn defaults() -> Params {
    Params { pool_size: 10, top_k: 8, length: 1, match_weight: 0.1, init_from_previous: false, prompt_momentum: 0.0, reg: 0.0, ..Params::default() }
}

pub fn new(ctx: &MethodContext, params: Params) -> Result<HidePrompt> {
    HidePrompt::new(ctx, params, "wave-cre")
}
