//! NoRGa (Le et al., 2024, arXiv 2405.14124; Minhchuyentoancbn/MoE_PromptCL):
//! HiDe-Prompt's stages (`hide_prompt.rs`) with the non-linear residual gate
//! ([`crate::parts::gate`]) on every prompted layer. The official scripts use
//! `--gate_act sigmoid` for Sup-21K (the default here), `gelu` for MoCo v3
//! and `tanh` (the config default) otherwise.

use promptcl_model::GateActivation;

use super::hide_prompt::{HidePrompt, Params};
use crate::parts::gate::PrefixGate;
use crate::parts::prompt_param::PrefixExpert;
use crate::{MethodContext, Result};

/// HiDe-Prompt's defaults with the Sup-21K script's gate.
pub fn defaults() -> Params {
    Params { prompt: PrefixExpert { gate: Some(PrefixGate::NoRGa(GateActivation::Sigmoid)), ..PrefixExpert::default() }, ..Params::default() }
}

pub fn new(ctx: &MethodContext, params: Params) -> Result<HidePrompt> {
    HidePrompt::new(ctx, params, "norga")
}
