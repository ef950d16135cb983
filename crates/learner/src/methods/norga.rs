//! NoRGa: HiDe-Prompt with the non-linear residual gate on the prefix
//! attention logits (see `hide_prompt.rs`). The official scripts use
//! `--gate_act sigmoid` for Sup-21K, `gelu` for MoCo v3 and `tanh`
//! (the config default) otherwise.

use super::hide_prompt::{HidePrompt, Params as HideParams};
use crate::method::MethodContext;
use crate::Result;
use promptcl_model::GateActivation;

/// HiDe-Prompt's parameters with `gate` required (default sigmoid, the Sup-21K script).
pub fn new(ctx: &MethodContext, params: &toml::Table) -> Result<HidePrompt> {
    let mut p: HideParams = crate::parse_params("norga", params)?;
    if p.gate.is_none() {
        p.gate = Some(GateActivation::Sigmoid);
    }
    HidePrompt::new(ctx, p, "norga")
}

