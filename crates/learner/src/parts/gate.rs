//! NoRGa's non-linear residual gate (Le et al., 2024; MoE_PromptCL): each
//! prompted layer's prefix logits pass through `s + α·σ(τ·s)`, with (τ, α)
//! per layer initialised to 1, trained during the first task and frozen
//! afterwards (the official engine sets `act_scale.requires_grad_(False)`
//! from task 2 on).

use promptcl_model::{GateActivation, NoRGaGate};
use tch::{nn, Tensor};

/// The variable's name: stages that train the gate name it.
pub const NAME: &str = "act_scale";

pub struct Gates {
    /// `[layers, 2]`: column 0 τ, column 1 α (official `act_scale`).
    act_scale: Tensor,
    activation: GateActivation,
}

impl Gates {
    pub fn new(p: &nn::Path, layers: usize, activation: GateActivation) -> Self {
        Self { act_scale: p.ones(NAME, &[layers as i64, 2]), activation }
    }

    /// One gate per prompted layer, in the order of the prompt's layers.
    pub fn per_layer(&self) -> Vec<NoRGaGate> {
        (0..self.act_scale.size()[0])
            .map(|i| NoRGaGate { tau: self.act_scale.get(i).get(0), alpha: self.act_scale.get(i).get(1), activation: self.activation })
            .collect()
    }

    /// Trainable in the first task only.
    pub fn begin_task(&mut self, task: usize) {
        super::train_only(std::slice::from_mut(&mut self.act_scale), if task == 0 { 0 } else { 1 });
    }
}
