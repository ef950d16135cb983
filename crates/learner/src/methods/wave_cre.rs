//! WAVE-CRE (Le et al., "Adaptive Prompting for Continual Relation
//! Extraction: A Within-Task Variance Perspective", AAAI 2025; no public
//! code): rehearsal-free continual relation extraction on a frozen encoder.
//!
//! It runs on the HiDe-Prompt engine (`hide_prompt.rs`), whose parts map one
//! to one onto the paper's:
//!
//! - **Task-specific prompt pools**: each task owns `pool_size` prefix prompts
//!   (length `length` = L) with keys; a relation instance uses the `top_k`
//!   prompts of its task's pool whose keys are closest (cosine) to its frozen
//!   query, so different prompts can serve the variance *within* a task.
//!   Loss: cross-entropy + `match_weight` × (1 − cos) over the chosen keys.
//! - **Generative model instead of stored data**: after each task, a Gaussian
//!   (mean + full covariance) per relation of the frozen query and of the
//!   prompted representation. Nothing else about the data is kept.
//! - **Task/relation predictor**: an MLP on the query, trained on the task's
//!   data and then on queries sampled from every seen relation's Gaussian; its
//!   relation decides the task, hence the pool.
//! - **Relation classifier**: retrained after each task on representations
//!   sampled from every seen relation's Gaussian.
//!
//! The relation representation is `[h(E11); h(E21)]` of the prompted encoder
//! (the `Backbone`'s feature for text). Defaults: L = 1 and K = 8 are the
//! paper's; M = 10 prompts per task, λ = 0.1 and the epoch/learning-rate
//! settings are promptcl's choices (the paper's appendix values could not be
//! checked offline), stated in `benchmarks/configs/cre_*.toml`.

use super::hide_prompt::{HidePrompt, Params as HideParams};
use crate::method::MethodContext;
use crate::Result;

/// WAVE-CRE's values where they differ from HiDe-Prompt's; pools of
/// independent prompts: no copy-initialisation, momentum mixing or
/// contrastive term. Statistics are full covariances (HiDe's default too).
const DEFAULTS: &str = "
pool_size = 10
top_k = 8
length = 1
match_weight = 0.1
init_from_previous = false
prompt_momentum = 0.0
reg = 0.0
";

/// The user's parameters over WAVE-CRE's defaults.
pub fn params(user: &toml::Table) -> Result<HideParams> {
    let mut merged: toml::Table = DEFAULTS.parse().expect("the defaults are valid TOML");
    merged.extend(user.clone());
    crate::parse_params("wave-cre", &merged)
}

pub fn new(ctx: &MethodContext, user: &toml::Table) -> Result<HidePrompt> {
    HidePrompt::new(ctx, params(user)?, "wave-cre")
}
