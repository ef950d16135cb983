//! EPI-style parameter isolation (Wang et al., "Rehearsal-free Continual
//! Language Learning via Efficient Parameter Isolation", ACL 2023): one prefix
//! prompt per task, trained on that task only; at test time the task is
//! identified without any stored example, by the Mahalanobis distance of the
//! frozen query to the class means, under one covariance shared by all seen
//! classes; the identified task's prompt and its classes' logits answer.
//!
//! The shared covariance is the official one (Dicer-Zz/EPI
//! `trainers/epi.py::get_mean_and_cov`, `model/epi.py::new_statistic`): per
//! task the mean of its classes' unbiased covariances, averaged over tasks,
//! inverted with a Hermitian pseudo-inverse at `torch.linalg.pinv`'s default
//! tolerance. A class with one example has no covariance and is left out of
//! its task's mean (the official `torch.cov` would make it NaN).
//!
//! Composed of per-task prompts ([`crate::parts::task_prompts`]) and its own
//! task identification. State: the prompts, the head, per-class query means,
//! and the pooled within-class scatter (with its inverse refreshed after
//! every task).

use std::rc::Rc;

use promptcl_model::Prompts;
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, head, LinearInit};
use crate::method::{Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::lora::{self, LoraSpec, TaskLora};
use crate::parts::prompt_param::PrefixExpert;
use crate::parts::task_prompts::{prefix_prompts, LayerGates, PromptSetConfig, TaskPrompts};
use crate::parts::Route;
use crate::{LearnerError, Result};

crate::method_params! {
    pub struct Params {
        /// Prefixed layers (EPI prefixes every layer; those beyond the backbone's depth are dropped).
        pub layers: Vec<usize> = (0..12).collect(),
        /// Prefix length.
        pub length: i64 = 16,
        /// Added to the shared covariance's diagonal before inversion (the official code adds
        /// nothing and takes a pseudo-inverse).
        pub shrinkage: f64 = 0.0,
        /// The task prompts' parameterisation (`{ param = "reparam-mlp" }`, …); EPI's prefixes take no gate.
        pub prompt: PrefixExpert = PrefixExpert::default(),
        /// Task-specific LoRA beside the prefixes, routed by the identified task; none by default.
        pub lora: Option<LoraSpec> = None,
    }
}

pub struct Epi {
    vs: nn::VarStore,
    prompts: TaskPrompts,
    lora: Option<TaskLora>,
    head: nn::Linear,
    /// `[C, D]` frozen-query class means.
    means: Tensor,
    /// `[D, D]` sum over tasks of each task's shared covariance, the number of
    /// tasks summed `[1]`, and the precision `[D, D]`.
    cov_sum: Tensor,
    tasks: Tensor,
    precision: Tensor,
    backbone: Rc<Backbone>,
    task_sizes: Vec<usize>,
    params: Params,
}

impl Epi {
    pub fn new(ctx: &MethodContext, mut params: Params) -> Result<Self> {
        let depth = ctx.backbone.depth();
        let bad = |reason: String| LearnerError::Params { method: "epi".into(), reason };
        // The default "every layer" follows the backbone.
        params.layers.retain(|&l| l < depth);
        if params.layers.is_empty() || params.length < 1 || !(params.shrinkage >= 0.0) {
            return Err(bad(format!("need layers within 0..{depth}, length >= 1 and shrinkage >= 0")));
        }
        if params.prompt.gate.is_some() {
            return Err(bad("prompt.gate: EPI's prefixes take no gate".into()));
        }
        if let Some(spec) = &params.lora {
            spec.validate(depth, ctx.backbone.token_dim()).map_err(bad)?;
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let f = ctx.feature_dim();
        let set = PromptSetConfig {
            prompt_name: "prompt",
            key_name: Some("key"),
            layers: params.layers.clone(),
            length: params.length,
            pool_size: 1,
            top_k: 1,
            seed_tag: 60,
            expert: params.prompt.clone(),
        };
        let prompts = TaskPrompts::new(&root, ctx, set).map_err(|e| bad(e.to_string()))?;
        let lora = params.lora.as_ref().map(|spec| TaskLora::new(&root, ctx, spec, 61)).transpose().map_err(|e| bad(e.to_string()))?;
        let c = ctx.num_classes as i64;
        Ok(Self {
            head: head(&root, f, ctx.num_classes, ctx.seed, LinearInit::Torch),
            means: root.zeros_no_train("query_mean", &[c, f]),
            cov_sum: root.zeros_no_train("query_cov_sum", &[f, f]),
            tasks: root.zeros_no_train("query_tasks", &[1]),
            precision: root.zeros_no_train("query_precision", &[f, f]),
            vs,
            prompts,
            lora,
            backbone: ctx.backbone.clone(),
            task_sizes: ctx.task_sizes.clone(),
            params,
        })
    }

    /// Prompted features for pools `[B or 1, 1, layers, 2, L, H, hd]`, with the LoRA of the task(s) `route` says.
    fn prompted(&self, x: &Inputs, pools: &Tensor, route: Route) -> Result<Tensor> {
        let (e, _) = self.prompts.choose(pools, None, None)?;
        let updates = self.lora.as_ref().map(|l| l.routed(route)).unwrap_or_default();
        let base = lora::with_updates(Prompts::none(), &updates);
        Ok(self.backbone.forward(x, &prefix_prompts(base, self.prompts.layers(), &e, LayerGates::None))?.feature)
    }

    /// The task each sample's query is nearest to (Mahalanobis, class means of `0..seen`).
    pub fn identify(&self, q: &Tensor, seen: usize) -> Vec<usize> {
        let mu = self.means.narrow(0, 0, seen as i64);
        let diff = q.unsqueeze(1) - mu.unsqueeze(0);
        let d = (diff.matmul(&self.precision) * &diff).sum_dim_intlist(2, false, Kind::Float);
        let nearest: Vec<i64> = Vec::try_from(d.argmin(1, false).to_device(tch::Device::Cpu)).expect("int64");
        nearest.iter().map(|&c| crate::method::task_of(&self.task_sizes, c as usize)).collect()
    }
}

impl ContinualMethod for Epi {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        self.prompts.begin_task(task.task, false);
        if let Some(l) = &mut self.lora {
            l.begin_task(task.task);
        }
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let feats = self.prompted(x, &self.prompts.pool(task.task).unsqueeze(0), Route::Task(task.task))?;
        Ok(ce_step(&self.head.forward(&feats), labels, task.classes.clone()).with_features(&feats))
    }

    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        self.prompts.seal(task.task, 0.0);
        if let Some(l) = &mut self.lora {
            l.seal(task.task);
        }
        let (q, y) = self.backbone.queries(data)?;
        let f = self.cov_sum.size()[0];
        tch::no_grad(|| {
            let mut covs = Vec::new();
            for c in task.classes.clone() {
                let qc = q.index_select(0, &y.eq(c as i64).nonzero().squeeze_dim(1));
                if qc.size()[0] == 0 {
                    continue;
                }
                let mu = qc.mean_dim(0, true, Kind::Float);
                self.means.get(c as i64).copy_(&mu.squeeze_dim(0));
                if qc.size()[0] > 1 {
                    let centred = qc - mu;
                    covs.push(centred.tr().matmul(&centred) / (centred.size()[0] - 1) as f64);
                }
            }
            if covs.is_empty() {
                return Err(LearnerError::Invalid(format!("epi: task {} has no class with two examples to estimate a covariance", task.task + 1)));
            }
            let _ = self.cov_sum.g_add_(&Tensor::stack(&covs, 0).mean_dim(0, false, Kind::Float));
            let _ = self.tasks.g_add_scalar_(1.0);
            let cov = &self.cov_sum / &self.tasks + Tensor::eye(f, (Kind::Float, q.device())) * self.params.shrinkage;
            self.precision.copy_(&cov.linalg_pinv_atol_rtol_float(None, None, true));
            Ok(())
        })
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let q = self.backbone.query(x)?;
        let tasks = self.identify(&q, seen);
        let (task_ids, pools, _) = self.prompts.for_tasks(&tasks, x.device());
        let feats = self.prompted(x, &pools, Route::Samples(&task_ids))?;
        let logits = self.head.forward(&feats).narrow(1, 0, seen as i64);
        // Only the identified task's classes compete.
        let c = Tensor::arange(seen as i64, (Kind::Int64, x.device())).unsqueeze(0);
        let starts: Vec<i64> = tasks.iter().map(|&t| self.task_sizes[..t].iter().sum::<usize>() as i64).collect();
        let start = Tensor::from_slice(&starts).to_device(x.device()).unsqueeze(1);
        let end =
            &start + Tensor::from_slice(&tasks.iter().map(|&t| self.task_sizes[t] as i64).collect::<Vec<_>>()).to_device(x.device()).unsqueeze(1);
        let keep = c.ge_tensor(&start).logical_and(&c.lt_tensor(&end));
        Ok(Prediction::new(logits.masked_fill(&keep.logical_not(), f64::NEG_INFINITY), Some(task_ids)).with_features(&feats))
    }
}
