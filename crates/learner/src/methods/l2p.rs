//! L2P — Learning to Prompt (Wang et al., CVPR 2022; official l2p-pytorch).
//!
//! A pool of `pool_size` prompts of `length` tokens with learnable keys. The
//! query is the frozen model's class token; the `top_k` keys nearest in
//! cosine pick the prompts, whose tokens are prepended at layer 0 (after the
//! class token, VPT layout: promptcl gives prompt tokens no position
//! embedding). Loss: cross-entropy with logits masked to the task's classes,
//! minus `pull_constraint_coeff` × mean cosine of the chosen keys and the
//! query (the surrogate loss that pulls keys to their queries).
//! `batchwise_prompt`: every sample uses the `top_k` prompts most often chosen
//! in its batch (ties → lower prompt id), as the official code does.
//!
//! `prefix_layers` (issue #18) prefix-tunes the pool instead, as
//! dualprompt-pytorch's `EPrompt` does with `prompt_pool` and
//! `use_prefix_tune_for_e_prompt`: each prompt `[layers, 2, length, H, hd]`
//! (U(−1, 1), official `uniform`), the same keys, choice and pull; a sample's
//! `top_k` prompts are concatenated along the prefix length, and the head
//! reads the class token (prefixes give no prompt tokens to average). The
//! pool then takes `prompt = { param, gate }` (one pool, trained in every
//! task, so never sealed; a zero-init gate is one set trained in every task)
//! and `lora` (one shared set), and `prefix_layout = "official"` reproduces
//! that code's key/value pairing across the batch. Token prompts take neither.

use std::rc::Rc;

use promptcl_model::Prompts;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, head, l2_normalize, mask_outside, seeded_uniform, train_classes, var_from, LinearInit};
use crate::method::{Backbone, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::lora::LoraSpec;
use crate::parts::prompt_param::PrefixExpert;
use crate::parts::shared_experts::SharedExperts;
use crate::parts::task_prompts::{concat_chosen, PrefixLayout, PromptSetConfig, TaskPrompts};
use crate::{LearnerError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInput {
    /// Mean of the prompt tokens' outputs (`head_type = 'prompt'`, the L2P paper).
    Prompt,
    /// The class token (`head_type = 'token'`).
    Token,
}

crate::method_params! {
    /// Defaults: l2p-pytorch `configs/cifar100_l2p.py`.
    pub struct Params {
        /// Prompts in the pool.
        pub pool_size: usize = 10,
        /// Tokens per prompt.
        pub length: i64 = 5,
        /// Prompts chosen per sample.
        pub top_k: usize = 5,
        /// Weight of the key–query pull (surrogate loss).
        pub pull_constraint_coeff: f64 = 0.1,
        /// Every sample uses the batch's most chosen prompts (official `batchwise_prompt`).
        pub batchwise_prompt: bool = true,
        /// What the head reads: `prompt` (mean of the prompt tokens' outputs) or `token` (class token).
        pub head_input: HeadInput = HeadInput::Prompt,
        /// Score only the task's classes while training (`train_mask`).
        pub train_mask: bool = true,
        /// Blocks whose attention gets the chosen prompts as prefixes (dualprompt-pytorch's
        /// prefix-tuned pool); empty: prompt tokens before block 0 (l2p-pytorch).
        pub prefix_layers: Vec<usize> = vec![],
        /// Prefix pool only: `correct`, or `official` (dualprompt-pytorch's key/value pairing).
        pub prefix_layout: PrefixLayout = PrefixLayout::Correct,
        /// Prefix pool only: its parameterisation and gate (see hide-prompt's `prompt`).
        pub prompt: PrefixExpert = PrefixExpert::default(),
        /// Prefix pool only: one LoRA trained in every task (L2P infers no task); none by default.
        pub lora: Option<LoraSpec> = None,
    }
}

/// The pool: prompt tokens `[M, L, D]` (variable `prompt`), or prefixes (`prompt.0`).
enum Pool {
    Tokens(Tensor),
    Prefix(Box<PrefixPool>),
}

struct PrefixPool {
    prompts: TaskPrompts,
    experts: SharedExperts,
}

pub struct L2P {
    vs: nn::VarStore,
    pool: Pool,
    keys: Tensor,
    head: nn::Linear,
    backbone: Rc<Backbone>,
    params: Params,
}

impl L2P {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        if params.top_k == 0 || params.top_k > params.pool_size || params.length <= 0 {
            return Err(LearnerError::Params {
                method: "l2p".into(),
                reason: format!("need 1 <= top_k ({}) <= pool_size ({}) and length > 0", params.top_k, params.pool_size),
            });
        }
        let bad = |reason: String| LearnerError::Params { method: "l2p".into(), reason };
        let prefixed = !params.prefix_layers.is_empty();
        if prefixed && params.head_input == HeadInput::Prompt {
            return Err(bad("prefix_layers give no prompt tokens to average: set head_input = \"token\"".into()));
        }
        let expert_set = params.prompt != PrefixExpert::default() || params.lora.is_some() || params.prefix_layout != PrefixLayout::Correct;
        if !prefixed && expert_set {
            return Err(bad("prompt, lora and prefix_layout act on a prefix pool: set prefix_layers (token prompts take none)".into()));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let (m, d, f) = (params.pool_size as i64, ctx.token_dim(), ctx.feature_dim());
        let pool = if prefixed {
            let set = PromptSetConfig {
                prompt_name: "prompt",
                key_name: None,
                layers: params.prefix_layers.clone(),
                length: params.length,
                pool_size: params.pool_size,
                top_k: params.top_k,
                seed_tag: 1,
                expert: params.prompt.clone(),
            };
            let prompts = TaskPrompts::shared(&root, ctx, set).map_err(|e| bad(e.to_string()))?;
            let experts =
                SharedExperts::new(&root, ctx, params.prompt.gate, params.prefix_layers.len(), params.lora.as_ref(), 3, "L2P").map_err(bad)?;
            Pool::Prefix(Box::new(PrefixPool { prompts, experts }))
        } else {
            Pool::Tokens(var_from(&root, "prompt", seeded_uniform(ctx.seed, &[1], &[m, params.length, d], -1.0, 1.0)))
        };
        let keys = var_from(&root, "prompt_key", seeded_uniform(ctx.seed, &[2], &[m, f], -1.0, 1.0));
        let head_dim = match params.head_input {
            HeadInput::Prompt => d,
            HeadInput::Token => f,
        };
        let head = head(&root, head_dim, ctx.num_classes, ctx.seed, LinearInit::Timm);
        Ok(Self { vs, pool, keys, head, backbone: ctx.backbone.clone(), params })
    }

    /// Chosen prompt ids `[B, k]` and the mean key–query cosine of the choice.
    pub fn select(&self, query: &Tensor) -> (Tensor, Tensor) {
        let qn = l2_normalize(query, 1);
        let kn = l2_normalize(&self.keys, 1);
        let sim = qn.matmul(&kn.tr());
        let k = self.params.top_k as i64;
        let (_, mut idx) = sim.topk(k, 1, true, true);
        let b = query.size()[0];
        if self.params.batchwise_prompt {
            let counts: Vec<i64> =
                Vec::try_from(idx.flatten(0, -1).bincount::<Tensor>(None, self.params.pool_size as i64).to_device(tch::Device::Cpu))
                    .expect("int64 counts");
            let mut ids: Vec<i64> = (0..counts.len() as i64).collect();
            ids.sort_by_key(|&i| (-counts[i as usize], i));
            ids.truncate(k as usize);
            idx = Tensor::from_slice(&ids).to_device(query.device()).unsqueeze(0).expand([b, k], false);
        }
        let chosen = kn.index_select(0, &idx.flatten(0, -1)).view([b, k, -1]);
        let reduce_sim = (chosen * qn.unsqueeze(1)).sum(Kind::Float) / b as f64;
        (idx, reduce_sim)
    }

    /// Logits, the matching term, and the feature the head read.
    fn logits(&self, x: &Inputs) -> Result<(Tensor, Tensor, Tensor)> {
        let query = self.backbone.query(x)?;
        let (idx, reduce_sim) = self.select(&query);
        let b = x.len();
        let out = match &self.pool {
            Pool::Tokens(prompts) => {
                let tokens = prompts.index_select(0, &idx.flatten(0, -1)).view([b, -1, prompts.size()[2]]);
                self.backbone.forward(x, &Prompts::none().with_tokens(0, &tokens))?
            }
            Pool::Prefix(p) => {
                let e = self.params.prefix_layout.arrange(&concat_chosen(&p.prompts.pool(0).unsqueeze(0), &idx), b);
                let experts = p.experts.routed();
                let prompts = experts.prompts(&self.params.prefix_layers, &e);
                self.backbone.forward(x, &prompts)?
            }
        };
        let feat = match self.params.head_input {
            HeadInput::Prompt => out.prompt_tokens.expect("prompt tokens were inserted").mean_dim(1, false, Kind::Float),
            HeadInput::Token => out.feature,
        };
        Ok((self.head.forward(&feat), reduce_sim, feat))
    }
}

impl ContinualMethod for L2P {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The shared prefix pool, its gate and LoRA train in every task (NoRGa's gate in the first).
    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        if let Pool::Prefix(p) = &mut self.pool {
            p.prompts.begin_task(0, false);
            p.experts.begin_task(task.task);
        }
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let (logits, reduce_sim, feat) = self.logits(x)?;
        let mut step = ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&feat);
        step.loss = step.loss - reduce_sim * self.params.pull_constraint_coeff;
        Ok(step)
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let (logits, _, feat) = self.logits(x)?;
        Ok(Prediction::new(mask_outside(&logits, 0..seen).narrow(1, 0, seen as i64), None).with_features(&feat))
    }
}
