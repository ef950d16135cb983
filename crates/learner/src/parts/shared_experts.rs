//! The gate and LoRA of a method that infers no task (CODA-Prompt, whose
//! prefix mixes every task's components; L2P's prefix pool): a task's own
//! expert cannot be routed to at inference, so each is one set that every
//! task trains. NoRGa's gate trains in the first task, as everywhere.

use promptcl_model::{LayerLora, Prompts};
use tch::{nn, Tensor};

use super::gate::{ExpertGates, PrefixGate, RoutedGates};
use super::lora::{self, LoraSpec, TaskLora};
use super::task_prompts::{prefix_prompts, LayerGates};
use super::Route;
use crate::MethodContext;

pub struct SharedExperts {
    gates: Option<ExpertGates>,
    lora: Option<TaskLora>,
}

impl SharedExperts {
    /// The gate of `layers` prompted layers and the LoRA (`lora_tag` seeds its A),
    /// if configured; a LoRA asking for per-task copies or mixes is an error naming `method`.
    pub fn new(
        p: &nn::Path,
        ctx: &MethodContext,
        gate: Option<PrefixGate>,
        layers: usize,
        lora: Option<&LoraSpec>,
        lora_tag: u64,
        method: &str,
    ) -> std::result::Result<Self, String> {
        if let Some(spec) = lora {
            spec.validate(ctx.backbone.depth(), ctx.token_dim()).and_then(|_| spec.validate_shared(method))?;
        }
        let (h, hd) = (ctx.backbone.num_heads(), ctx.backbone.head_dim());
        let gates = ExpertGates::shared(p, gate, layers, h, hd);
        let lora = lora.map(|spec| TaskLora::shared(p, ctx, spec, lora_tag, lora::NAME).map_err(|e| e.to_string())).transpose()?;
        Ok(Self { gates, lora })
    }

    pub fn begin_task(&mut self, task: usize) {
        if let Some(g) = &mut self.gates {
            g.begin_task(task);
        }
        if let Some(l) = &mut self.lora {
            l.begin_task(0);
        }
    }

    /// The gates and LoRA updates of one forward pass.
    pub fn routed(&self) -> Routed {
        Routed {
            updates: self.lora.as_ref().map(|l| l.routed(Route::Task(0))).unwrap_or_default(),
            gates: self.gates.as_ref().map(|g| g.routed(Route::Task(0))),
        }
    }
}

/// [`SharedExperts::routed`]: what the prompts of one forward pass borrow.
pub struct Routed {
    updates: Vec<(usize, LayerLora)>,
    gates: Option<RoutedGates>,
}

impl Routed {
    /// The LoRA updates, and prefixes `e` (`[B or 1, layers, 2, L, H, hd]`) at `layers` through the gates.
    pub fn prompts<'a>(&'a self, layers: &[usize], e: &Tensor) -> Prompts<'a> {
        let gates = self.gates.as_ref().map_or(LayerGates::None, |g| g.layer_gates());
        prefix_prompts(lora::with_updates(Prompts::none(), &self.updates), layers, e, gates)
    }
}
