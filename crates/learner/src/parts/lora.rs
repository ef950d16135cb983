//! Task-specific low-rank updates of the attention projections (issue #18):
//! every task owns LoRA factors on the chosen projections of the chosen
//! blocks, trained only in its task and routed per sample at inference by
//! the method's task identity, as HiDe-LoRA does (HiDe-PET,
//! `ivcylc/HiDe-PET` `peft/lora/hide_lora.py`: one `[A | B]` slot per task,
//! gathered by the predicted task id per sample). The update is
//! [`promptcl_model::LoraUpdate`]'s, `scale·(x·Aᵀ)·Bᵀ` with `scale = alpha / r`.
//!
//! - **Init**: B zeros, so task 0's updates start as the frozen model; A
//!   Kaiming-uniform, `U(±1/√in)` as PEFT's `nn.Linear` (`a_init = "peft"`)
//!   or `U(±1/√r)` as HiDe-PET's `kaiming_uniform_` on its `[in, r]` layout,
//!   whose fan-in is then r (`a_init = "hide-pet"`, about 12× larger at
//!   r = 5 in 768 dimensions).
//! - **Tasks**: with `init_from_previous` (HiDe-PET) task t starts as a copy
//!   of task t−1's factors; after its training, `momentum` m mixes them as the
//!   official engine does, on A and B separately:
//!   `A_t ← (1−m)·A_t + m·mean(A_<t)`, likewise B.
//! - **Inference**: unmerged, with each sample's task's factors gathered into
//!   `[B, r, in]` / `[B, out, r]`; merging into the frozen weights
//!   ([`promptcl_model::VisionTransformer::merge_lora`]) serves one update for
//!   the whole batch, which routed tasks are not.
//!
//! Layout: per task `lora.a.<t>` `[S, r, D]` and `lora.b.<t>` `[S, D, r]` over
//! the S = layers × targets sites (every projection of ViT and BERT is D → D).

use promptcl_model::{LayerLora, LoraTarget, LoraUpdate, Prompts};
use tch::{nn, Tensor};

use crate::methods::common::{seeded_uniform, var_from};
use crate::{MethodContext, Result};

/// The variables' group name: stages that train the updates name it.
pub const NAME: &str = "lora";

/// How A is initialised (B is always zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// `U(±1/√in)`: PEFT's Kaiming-uniform (a = √5) on A `[r, in]`.
    #[default]
    Peft,
    /// `U(±1/√r)`: HiDe-PET's Kaiming-uniform on A stored `[in, r]`.
    HidePet,
}

crate::method_params! {
    /// Task-specific LoRA (`[method.params] lora = { … }`). Defaults: PEFT's
    /// `LoraConfig` (r = 8, alpha = 8) on q and v, as the LoRA paper adapts them.
    pub struct LoraSpec {
        /// Rank r of each update.
        pub rank: i64 = 8,
        /// PEFT's `lora_alpha`: the update is scaled by alpha / rank.
        pub alpha: f64 = 8.0,
        /// Projections updated: any of `q`, `k`, `v`, `out`.
        pub targets: Vec<LoraTarget> = vec![LoraTarget::Q, LoraTarget::V],
        /// Blocks updated; empty = every block.
        pub layers: Vec<usize> = vec![],
        /// `peft` (`U(±1/√in)`) or `hide-pet` (`U(±1/√r)`) for A.
        pub a_init: LoraInit = LoraInit::Peft,
        /// Start a task's factors as a copy of the previous task's (HiDe-PET).
        pub init_from_previous: bool = false,
        /// m of the factors' mix after a task's training (HiDe-PET `lora_momentum`); 0 keeps them.
        pub momentum: f64 = 0.0,
    }
}

impl LoraSpec {
    /// Checks what needs no tensor; `depth` and `dim` are the backbone's.
    pub fn validate(&self, depth: usize, dim: i64) -> std::result::Result<(), String> {
        if self.rank < 1 || self.rank > dim {
            return Err(format!("lora.rank = {} must be in 1..={dim} (the backbone's width)", self.rank));
        }
        if !(self.alpha > 0.0) || !(0.0..=1.0).contains(&self.momentum) {
            return Err(format!("lora.alpha = {} must be > 0 and lora.momentum = {} in [0, 1]", self.alpha, self.momentum));
        }
        if self.targets.is_empty() {
            return Err("lora.targets is empty: name at least one of q, k, v, out".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(t) {
                return Err(format!("lora.targets names `{}` twice", t.name()));
            }
        }
        for (i, &l) in self.layers.iter().enumerate() {
            if l >= depth {
                return Err(format!("lora.layers: block {l} is beyond the backbone's depth {depth}"));
            }
            if self.layers[..i].contains(&l) {
                return Err(format!("lora.layers names block {l} twice"));
            }
        }
        Ok(())
    }
}

impl LoraSpec {
    /// For [`TaskLora::shared`] in a method without task identity: the per-task
    /// copy and mix have nothing to act on.
    pub fn validate_shared(&self, method: &str) -> std::result::Result<(), String> {
        if self.init_from_previous || self.momentum != 0.0 {
            return Err(format!("lora.init_from_previous and lora.momentum mix per-task factors; {method}'s LoRA is one shared set"));
        }
        Ok(())
    }
}

pub struct TaskLora {
    /// Per task `[S, r, D]`.
    a: Vec<Tensor>,
    /// Per task `[S, D, r]`.
    b: Vec<Tensor>,
    /// The S sites, in the factors' order.
    sites: Vec<(usize, LoraTarget)>,
    scale: f64,
    spec: LoraSpec,
}

impl TaskLora {
    pub fn new(p: &nn::Path, ctx: &MethodContext, spec: &LoraSpec, seed_tag: u64) -> Result<Self> {
        Self::with_sets(p, ctx, spec, seed_tag, ctx.num_tasks, NAME)
    }

    /// One set of factors that every task trains in turn (HiDe-PET's continual
    /// LoRA of its task identifier), named `<name>.a.0`, `<name>.b.0`: use it as
    /// task 0's, [`Self::begin_task`]`(0)` each task.
    pub fn shared(p: &nn::Path, ctx: &MethodContext, spec: &LoraSpec, seed_tag: u64, name: &str) -> Result<Self> {
        Self::with_sets(p, ctx, spec, seed_tag, 1, name)
    }

    fn with_sets(p: &nn::Path, ctx: &MethodContext, spec: &LoraSpec, seed_tag: u64, sets: usize, name: &str) -> Result<Self> {
        let (depth, d) = (ctx.backbone.depth(), ctx.backbone.token_dim());
        spec.validate(depth, d).map_err(crate::LearnerError::Invalid)?;
        let layers: Vec<usize> = if spec.layers.is_empty() { (0..depth).collect() } else { spec.layers.clone() };
        let sites: Vec<(usize, LoraTarget)> = layers.iter().flat_map(|&l| spec.targets.iter().map(move |&t| (l, t))).collect();
        let (s, r) = (sites.len() as i64, spec.rank);
        let bound = match spec.a_init {
            LoraInit::Peft => 1.0 / (d as f64).sqrt(),
            LoraInit::HidePet => 1.0 / (r as f64).sqrt(),
        };
        let pa = p / name / "a";
        let pb = p / name / "b";
        let a =
            (0..sets).map(|t| var_from(&pa, &t.to_string(), seeded_uniform(ctx.seed, &[seed_tag, t as u64], &[s, r, d], -bound, bound))).collect();
        let b = (0..sets).map(|t| pb.zeros(&t.to_string(), &[s, d, r])).collect();
        Ok(Self { a, b, sites, scale: spec.alpha / r as f64, spec: spec.clone() })
    }

    /// Trains task `t`'s factors only, started as task t−1's with `init_from_previous`.
    pub fn begin_task(&mut self, t: usize) {
        if self.spec.init_from_previous {
            super::copy_previous(&mut self.a, t);
            super::copy_previous(&mut self.b, t);
        }
        super::train_only(&mut self.a, t);
        super::train_only(&mut self.b, t);
    }

    /// Ends task t's training: the momentum mix with the earlier tasks' factors.
    pub fn seal(&mut self, t: usize) {
        let m = self.spec.momentum;
        if t == 0 || m == 0.0 {
            return;
        }
        tch::no_grad(|| {
            for f in [&mut self.a, &mut self.b] {
                let mixed = &f[t] * (1.0 - m) + Tensor::stack(&f[..t], 0).mean_dim(0, false, tch::Kind::Float) * m;
                f[t].copy_(&mixed);
            }
        });
    }

    fn layers(&self, a: &Tensor, b: &Tensor, site_dim: i64) -> Vec<(usize, LayerLora)> {
        let mut out: Vec<(usize, LayerLora)> = Vec::new();
        for (i, &(l, target)) in self.sites.iter().enumerate() {
            let update = LoraUpdate { a: a.select(site_dim, i as i64), b: b.select(site_dim, i as i64), scale: self.scale };
            match out.last_mut() {
                Some((last, lora)) if *last == l => lora.set(target, update),
                _ => {
                    let mut lora = LayerLora::default();
                    lora.set(target, update);
                    out.push((l, lora));
                }
            }
        }
        out
    }

    /// Task `t`'s updates per block, for a batch all of task t.
    pub fn of_task(&self, t: usize) -> Vec<(usize, LayerLora)> {
        self.layers(&self.a[t], &self.b[t], 0)
    }

    /// Each sample's task's updates per block, `task_ids` `[B]` (int64).
    pub fn of_samples(&self, task_ids: &Tensor) -> Vec<(usize, LayerLora)> {
        let a = Tensor::stack(&self.a, 0).index_select(0, task_ids);
        let b = Tensor::stack(&self.b, 0).index_select(0, task_ids);
        self.layers(&a, &b, 1)
    }

    /// The updates per block for `route`.
    pub fn routed(&self, route: super::Route) -> Vec<(usize, LayerLora)> {
        match route {
            super::Route::Task(t) => self.of_task(t),
            super::Route::Samples(ids) => self.of_samples(ids),
        }
    }
}

/// `prompts` with `updates` (from [`TaskLora::of_task`] / [`TaskLora::of_samples`]) at their blocks.
pub fn with_updates<'a>(prompts: Prompts<'a>, updates: &'a [(usize, LayerLora)]) -> Prompts<'a> {
    updates.iter().fold(prompts, |p, (l, lora)| p.with_lora(*l, lora))
}
