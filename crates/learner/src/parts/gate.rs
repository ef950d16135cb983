//! NoRGa's non-linear residual gate (Le et al., 2024; MoE_PromptCL): each
//! prompted layer's prefix logits pass through `s + α·σ(τ·s)`, with (τ, α)
//! per layer initialised to 1, trained during the first task and frozen
//! afterwards (the official engine sets `act_scale.requires_grad_(False)`
//! from task 2 on).

use promptcl_model::{GateActivation, NoRGaGate, ZeroInitGate};

use super::task_prompts::LayerGates;
use super::Route;
use serde::Deserialize;
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

/// The gate between a layer's prefix and its tokens (`prompt.gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PrefixGate {
    /// NoRGa's `s + α·σ(τ·s)` on the prefix logits, σ named by the official `--gate_act`.
    NoRGa(GateActivation),
    /// Zero-initialised attention, one `tanh(g_h)` per head (official `typ_gate = "random"`).
    ZeroInit,
    /// Zero-initialised attention with `g_h = q·w_h` per query (`typ_gate = "adapt"`).
    ZeroInitQuery,
}

impl TryFrom<String> for PrefixGate {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "zero-init" => Ok(Self::ZeroInit),
            "zero-init-query" => Ok(Self::ZeroInitQuery),
            _ => GateActivation::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&s)).map(Self::NoRGa).map_err(|_| {
                let names: Vec<String> = GateActivation::ALL.iter().map(|a| String::from(Self::NoRGa(*a))).collect();
                format!("unknown gate `{s}`: expected `zero-init`, `zero-init-query` or a NoRGa activation ({})", names.join(", "))
            }),
        }
    }
}

impl From<PrefixGate> for String {
    fn from(g: PrefixGate) -> String {
        match g {
            PrefixGate::ZeroInit => "zero-init".into(),
            PrefixGate::ZeroInitQuery => "zero-init-query".into(),
            PrefixGate::NoRGa(a) => serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        }
    }
}

/// The variable's name: per task `zero_gate.<t>`.
pub const ZERO_NAME: &str = "zero_gate";

/// Task-specific zero-initialised gates: task t's prompts open through their
/// own gates `[layers, H]` (or `[layers, H, hd]` per query), all starting at 0,
/// so a task's prompts begin as a no-op; trained in their task only, like the
/// prompts they gate. A method without task identity (CODA-Prompt, whose
/// prefix mixes every task's components) has one set instead (`zero_gate.0`),
/// trained in every task like its head.
pub struct ZeroGates {
    gates: Vec<Tensor>,
    per_query: bool,
}

impl ZeroGates {
    pub fn new(p: &nn::Path, num_tasks: usize, layers: usize, heads: i64, head_dim: i64, per_query: bool) -> Self {
        let dims: Vec<i64> = if per_query { vec![layers as i64, heads, head_dim] } else { vec![layers as i64, heads] };
        Self { gates: (0..num_tasks).map(|t| (p / ZERO_NAME).zeros(&t.to_string(), &dims)).collect(), per_query }
    }

    fn shared(&self) -> bool {
        self.gates.len() == 1
    }

    pub fn begin_task(&mut self, task: usize) {
        let own = if self.shared() { 0 } else { task };
        super::train_only(&mut self.gates, own);
    }

    fn wrap(&self, g: Tensor) -> ZeroInitGate {
        if self.per_query {
            ZeroInitGate::PerQuery(g)
        } else {
            ZeroInitGate::PerHead(g)
        }
    }

    /// Task `t`'s gate for each prompted layer (the whole batch is of task t).
    pub fn of_task(&self, t: usize) -> Vec<ZeroInitGate> {
        let g = &self.gates[if self.shared() { 0 } else { t }];
        (0..g.size()[0]).map(|i| self.wrap(g.get(i))).collect()
    }

    /// Each sample's task's gate per layer, `task_ids` `[B]` (int64).
    pub fn of_samples(&self, task_ids: &Tensor) -> Vec<ZeroInitGate> {
        let all = Tensor::stack(&self.gates, 0).index_select(0, task_ids);
        (0..all.size()[1]).map(|i| self.wrap(all.select(1, i))).collect()
    }
}

/// A prompt set's gate (`prompt.gate`): NoRGa's, shared and trained in the
/// first task, or zero-initialised gates per task, routed like the prompts.
pub enum ExpertGates {
    NoRGa(Gates),
    Zero(ZeroGates),
}

/// One forward pass's gates per prompted layer ([`ExpertGates::routed`]).
pub enum RoutedGates {
    NoRGa(Vec<NoRGaGate>),
    Zero(Vec<ZeroInitGate>),
}

impl RoutedGates {
    pub fn layer_gates(&self) -> LayerGates<'_> {
        match self {
            Self::NoRGa(g) => LayerGates::NoRGa(g),
            Self::Zero(g) => LayerGates::ZeroInit(g),
        }
    }
}

impl ExpertGates {
    /// The gate of `layers` prompted layers (`heads` × `head_dim` attention), if any.
    pub fn new(p: &nn::Path, gate: Option<PrefixGate>, num_tasks: usize, layers: usize, heads: i64, head_dim: i64) -> Option<Self> {
        gate.map(|g| match g {
            PrefixGate::NoRGa(a) => Self::NoRGa(Gates::new(p, layers, a)),
            PrefixGate::ZeroInit => Self::Zero(ZeroGates::new(p, num_tasks, layers, heads, head_dim, false)),
            PrefixGate::ZeroInitQuery => Self::Zero(ZeroGates::new(p, num_tasks, layers, heads, head_dim, true)),
        })
    }

    /// The variables' name, for the stage that trains them with the prompts.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoRGa(_) => NAME,
            Self::Zero(_) => ZERO_NAME,
        }
    }

    pub fn begin_task(&mut self, task: usize) {
        match self {
            Self::NoRGa(g) => g.begin_task(task),
            Self::Zero(g) => g.begin_task(task),
        }
    }

    /// Gates for a prefix that is not any one task's (CODA-Prompt's mixture of
    /// every task's components): NoRGa's as always, zero-initialised ones as one
    /// set that every task trains.
    pub fn shared(p: &nn::Path, gate: Option<PrefixGate>, layers: usize, heads: i64, head_dim: i64) -> Option<Self> {
        Self::new(p, gate, 1, layers, heads, head_dim)
    }

    pub fn routed(&self, route: Route) -> RoutedGates {
        match (self, route) {
            (Self::NoRGa(g), _) => RoutedGates::NoRGa(g.per_layer()),
            (Self::Zero(g), _) if g.shared() => RoutedGates::Zero(g.of_task(0)),
            (Self::Zero(g), Route::Task(t)) => RoutedGates::Zero(g.of_task(t)),
            (Self::Zero(g), Route::Samples(ids)) => RoutedGates::Zero(g.of_samples(ids)),
        }
    }
}
