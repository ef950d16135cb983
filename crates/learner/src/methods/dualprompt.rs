//! DualPrompt (Wang et al., ECCV 2022; official dualprompt-pytorch).
//!
//! A G(eneral)-prompt shared by all tasks, prefix-tuned into `g_layers`, and
//! one E(xpert)-prompt per task with a learnable key, prefix-tuned into
//! `e_layers`. Training uses the true task's E-prompt (`use_prompt_mask`) and
//! pulls its key to the frozen class-token query (coefficient
//! `pull_constraint_coeff`); at test time the nearest key (cosine) picks the
//! E-prompt, i.e. predicts the task. A task's E-prompt starts as a copy of
//! the previous task's (`shared_prompt_pool`, as the official configs; the key
//! starts fresh). Finished tasks' E-prompts and keys are frozen
//! (`requires_grad = false`), so they are bit-identical afterwards.
//! Prefix layout as the official code: `[layers, 2 (key/value), length, heads, head_dim]`.
//!
//! Experts (issue #18): `prompt = { param, gate }` parameterises and gates the
//! E-prompts as it does the HiDe engine's task prompts (a generated task's
//! E-prompt is sealed at the end of its task; per-task gates are routed by
//! the matched key), and `lora = { … }` adds task-specific LoRA routed the
//! same way. The G-prompt stays a direct prefix.

use std::rc::Rc;

use promptcl_model::Prompts;
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, head, l2_normalize, seeded_uniform, train_classes, var_from, LinearInit};
use crate::method::{tasks_seen, Backbone, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::gate::ExpertGates;
use crate::parts::lora::{self, LoraSpec, TaskLora};
use crate::parts::prompt_param::PrefixExpert;
use crate::parts::task_prompts::{prefix_prompts, LayerGates, PrefixLayout, PromptSetConfig, TaskPrompts};
use crate::parts::{copy_previous, train_only, Route};
use crate::{LearnerError, Result};

crate::method_params! {
    /// Defaults: dualprompt-pytorch `configs/cifar100_dualprompt.py`.
    pub struct Params {
        /// Blocks that get the G(eneral)-prompt prefix (none: no G-prompt).
        pub g_layers: Vec<usize> = vec![0, 1],
        pub g_length: i64 = 5,
        /// Blocks that get the task's E(xpert)-prompt prefix.
        pub e_layers: Vec<usize> = vec![2, 3, 4],
        pub e_length: i64 = 5,
        /// Weight of the key–query pull (`pull_constraint_coeff`).
        pub pull_constraint_coeff: f64 = 1.0,
        /// Score only the task's classes while training (`train_mask`).
        pub train_mask: bool = true,
        /// Start a task's E-prompt as a copy of the previous task's (`shared_prompt_pool`,
        /// on in the official configs).
        pub shared_prompt_pool: bool = true,
        /// Start a task's E-key as a copy of the previous task's (`shared_prompt_key`, off in
        /// the official configs; there, turned on with prefix-tuning, it would index a 2-D key
        /// with the prompt's 3-D slice and fail).
        pub shared_prompt_key: bool = false,
        /// `official` pairs E-prompt key and value halves across the batch as the official
        /// code's `reshape` does (to reproduce published numbers); `correct` gives each sample its own.
        pub prefix_layout: PrefixLayout = PrefixLayout::Correct,
        /// The E-prompts' parameterisation and gate (see hide-prompt's `prompt`); direct by default.
        pub prompt: PrefixExpert = PrefixExpert::default(),
        /// Task-specific LoRA, routed by the matched key; none by default.
        pub lora: Option<LoraSpec> = None,
    }
}

pub struct DualPrompt {
    vs: nn::VarStore,
    g_prompt: Option<Tensor>,
    e_prompts: TaskPrompts,
    gates: Option<ExpertGates>,
    lora: Option<TaskLora>,
    e_keys: Vec<Tensor>,
    head: nn::Linear,
    backbone: Rc<Backbone>,
    task_sizes: Vec<usize>,
    params: Params,
}

impl DualPrompt {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let depth = ctx.backbone.depth();
        let bad = |reason: String| LearnerError::Params { method: "dualprompt".into(), reason };
        if let Some(l) = params.g_layers.iter().chain(&params.e_layers).find(|&&l| l >= depth) {
            return Err(bad(format!("prompt layer {l} beyond the backbone's depth {depth}")));
        }
        if let Some(spec) = &params.lora {
            spec.validate(depth, ctx.backbone.token_dim()).map_err(bad)?;
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let (h, hd, d) = (ctx.backbone.num_heads(), ctx.backbone.head_dim(), ctx.feature_dim());
        let g_prompt = (!params.g_layers.is_empty()).then(|| {
            let dims = [params.g_layers.len() as i64, 2, params.g_length, h, hd];
            var_from(&root, "g_prompt", seeded_uniform(ctx.seed, &[10], &dims, -1.0, 1.0))
        });
        // One prompt per task (no pool: the task is chosen by DualPrompt's own keys); direct
        // E-prompts draw what the official `uniform_(-1, 1)` draws, under tag 11.
        let set = PromptSetConfig {
            prompt_name: "e_prompt",
            key_name: Some("e_prompt_key"),
            layers: params.e_layers.clone(),
            length: params.e_length,
            pool_size: 1,
            top_k: 1,
            seed_tag: 11,
            expert: params.prompt.clone(),
        };
        let e_prompts = TaskPrompts::new(&root, ctx, set).map_err(|e| bad(e.to_string()))?;
        let gates = ExpertGates::new(&root, params.prompt.gate, ctx.num_tasks, params.e_layers.len(), h, hd);
        let lora = params.lora.as_ref().map(|spec| TaskLora::new(&root, ctx, spec, 13)).transpose().map_err(|e| bad(e.to_string()))?;
        let e_keys = (0..ctx.num_tasks)
            .map(|t| var_from(&(&root / "e_key"), &t.to_string(), seeded_uniform(ctx.seed, &[12, t as u64], &[d], -1.0, 1.0)))
            .collect();
        let head = head(&root, d, ctx.num_classes, ctx.seed, LinearInit::Timm);
        Ok(Self { vs, g_prompt, e_prompts, gates, lora, e_keys, head, backbone: ctx.backbone.clone(), task_sizes: ctx.task_sizes.clone(), params })
    }

    /// The prompted feature of a batch whose E-prompts are `e` (`[B or 1, layers, 2, L, H, hd]`),
    /// with the gates and LoRA of the task(s) `route` says. The G-prompt is one tensor for
    /// every sample, so no layout can mix it.
    fn prompted(&self, x: &Inputs, e: &Tensor, route: Route) -> Result<Tensor> {
        let updates = self.lora.as_ref().map(|l| l.routed(route)).unwrap_or_default();
        let mut prompts = lora::with_updates(Prompts::none(), &updates);
        if let Some(g) = &self.g_prompt {
            prompts = prefix_prompts(prompts, &self.params.g_layers, &g.unsqueeze(0), LayerGates::None);
        }
        let routed = self.gates.as_ref().map(|g| g.routed(route));
        let gates = routed.as_ref().map_or(LayerGates::None, |g| g.layer_gates());
        let prompts = prefix_prompts(prompts, &self.params.e_layers, &self.params.prefix_layout.arrange(e, x.len()), gates);
        Ok(self.backbone.forward(x, &prompts)?.feature)
    }

    /// Nearest key among the first `n_tasks` tasks' keys: `[B]` task ids.
    pub fn match_task(&self, query: &Tensor, n_tasks: usize) -> Tensor {
        let keys = Tensor::stack(&self.e_keys[..n_tasks], 0);
        l2_normalize(query, 1).matmul(&l2_normalize(&keys, 1).tr()).argmax(1, false)
    }
}

impl ContinualMethod for DualPrompt {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        self.e_prompts.begin_task(task.task, self.params.shared_prompt_pool);
        if self.params.shared_prompt_key {
            copy_previous(&mut self.e_keys, task.task);
        }
        train_only(&mut self.e_keys, task.task);
        if let Some(g) = &mut self.gates {
            g.begin_task(task.task);
        }
        if let Some(l) = &mut self.lora {
            l.begin_task(task.task);
        }
        Ok(())
    }

    /// A generated E-prompt is sealed with its task; LoRA mixed as configured.
    fn end_task(&mut self, task: &TaskInfo, _data: &mut dyn crate::BatchSource) -> Result<()> {
        self.e_prompts.seal(task.task, 0.0);
        if let Some(l) = &mut self.lora {
            l.seal(task.task);
        }
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let query = self.backbone.query(x)?;
        let t = task.task;
        let (e, _) = self.e_prompts.choose(&self.e_prompts.pool(t).unsqueeze(0), None, None)?;
        let feature = self.prompted(x, &e, Route::Task(t))?;
        let logits = self.head.forward(&feature);
        let key = l2_normalize(&self.e_keys[t].unsqueeze(0), 1);
        let reduce_sim = (l2_normalize(&query, 1) * key).sum(Kind::Float) / x.len() as f64;
        let mut step = ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&feature);
        step.loss = step.loss - reduce_sim * self.params.pull_constraint_coeff;
        Ok(step)
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let query = self.backbone.query(x)?;
        let n_tasks = tasks_seen(&self.task_sizes, seen);
        let ids = self.match_task(&query, n_tasks);
        let (pools, _) = self.e_prompts.for_ids(&ids, n_tasks);
        let (e, _) = self.e_prompts.choose(&pools, None, None)?;
        let feature = self.prompted(x, &e, Route::Samples(&ids))?;
        let logits = self.head.forward(&feature).narrow(1, 0, seen as i64);
        Ok(Prediction::new(logits, Some(ids)).with_features(&feature))
    }
}
