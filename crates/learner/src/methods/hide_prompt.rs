//! HiDe-Prompt (Wang et al., NeurIPS 2023; thu-ml/HiDe-Prompt), the engine
//! NoRGa (`norga.rs`) and WAVE-CRE (`wave_cre.rs`) reuse with other defaults,
//! following MoE_PromptCL `engines/norga_tii_engine.py` + `norga_prompt_engine.py`.
//!
//! Four stages per task, as the official code runs them (TII is a separate
//! run there; per task the two are independent):
//!
//! 1. **`tii`** — task-identity inference ([`crate::parts::tii`]) on the
//!    frozen query, cross-entropy masked to the task's classes; Adam at
//!    `tii_lr` (scaled by batch/256 like `[optim].lr` when that is), constant,
//!    gradients clipped at `[optim].clip_grad_norm` over the TII parameters
//!    alone. Then per-class statistics of the frozen queries.
//! 2. **`tii-align`** (from task 2) — the MLP + head refined on Gaussian
//!    pseudo-queries of all seen classes (`batch` per class, `#old classes`
//!    steps per epoch, SGD momentum 0.9, no weight decay, `tii_align_lr` scaled
//!    by batch/256 like `tii_lr`, cosine per epoch).
//! 3. **`prompt`** — one prefix prompt per task in `layers` (length `length`),
//!    started as a copy of task t−1's; trained as `(1−m)·P_t + m·mean(P_<t)`
//!    (the mean detached), the mix written into P_t afterwards. Loss:
//!    cross-entropy masked to the task's classes + `reg` × the contrastive
//!    term `CE(MMᵀ/temperature, I)` over [stored class means of earlier
//!    classes; the batch's prompted features]. `[optim]` at its schedule; the
//!    head learns at `head_lr_scale` × (`--larger_prompt_lr`). Then per-class
//!    statistics of the prompted features (each class with its task's prompt).
//! 4. **`align`** (from task 2) — TAP: the head retrained on `5 × batch`
//!    pseudo-features per seen class (`align_epochs`, SGD momentum 0.9,
//!    no weight decay, `align_lr` unscaled, cosine per epoch), logits masked
//!    to seen classes.
//!
//! 0. **`embeddings`** (first task, `embedding_epochs` > 0; BERT only) —
//!    [`crate::parts::embedding_tuning`], before the others; every later
//!    forward pass, queries included, reads the tuned embeddings.
//!
//! Inference: TII's class → its task → that task's prompt → prompted forward → head.
//!
//! **Pools** (`pool_size` M > 1, WAVE-CRE): each task owns M keyed prompts; a
//! sample uses the `top_k` nearest (cosine) to its query, and the loss gains
//! `match_weight · Σ_K (1 − cos)` over the chosen keys, averaged over the batch.
//! **WAVE-CRE's schedule** (`wave_cre.rs`): no `tii` stage (`tii_epochs = 0`),
//! `tii-align` and `align` after the prompt stage from the first task on, on
//! `replay_samples` Gaussian samples per class, optionally with Adam and MLP heads.
//! **Expert** (`prompt = { param, gate, … }`, [`crate::parts::prompt_param`]):
//! how the task prefixes are parameterised (direct, `reparam-mlp`, …; a
//! generated task's prefixes are sealed at the end of its prompt stage, after
//! the momentum mix) and which gate they pass: NoRGa's
//! ([`crate::parts::gate`], shared, trained in the first task) or
//! zero-initialised gates, one set per task trained with its prompts and
//! routed like them at inference.
//! **LoRA** (`lora = { rank, alpha, targets, layers, … }`, [`crate::parts::lora`]):
//! task-specific low-rank updates of the attention projections, trained in
//! the prompt stage with (or, with `layers = []`, instead of) the task prompts,
//! mixed and sealed with them, and routed per sample by TII at inference:
//! HiDe-LoRA (HiDe-PET, `ivcylc/HiDe-PET`).
//! **Adaptive prompts** (`prompt = { param = "adaptive" }`,
//! [`crate::parts::adaptive_prompt`]): VAPT's token prompts in place of the
//! prefixes, `length` tokens at every block of `layers` (static at the
//! first, made from the previous block's patches after), one expert per
//! task, copied forward like the prompts and routed by TII; the momentum mix
//! is for prefixes and leaves them alone.

use std::rc::Rc;

use promptcl_model::Prompts;
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, train_classes, LinearInit};
use crate::parts::adaptive_prompt::{AdaptivePrompts, AdaptiveShape};
use crate::parts::alignment::AlignOptimizer;
use crate::parts::classifier::Classifier;
use crate::parts::embedding_tuning::EmbeddingTuning;
use crate::parts::gate::ExpertGates;
use crate::parts::lora::{LoraSpec, TaskLora};
use crate::parts::prompt_param::{PrefixExpert, PromptParam};
use crate::parts::task_prompts::{prefix_prompts, LayerGates, PrefixLayout, PromptSetConfig, TaskPrompts};
use crate::parts::tii::{TaskIdentity, TiiNet};
use crate::parts::{adaptive_prompt, alignment, embedding_tuning, lora, tii, Route};
use crate::stats::{ClassStats, StatsKind};
use crate::{
    Backbone, BatchSource, ContinualMethod, Inputs, LearnerError, MethodContext, OptimConfig, Prediction, Result, Stage, StageData, StageOptim, Step,
    TaskInfo,
};

crate::method_params! {
    /// Defaults: MoE_PromptCL `scripts/cifar100_Sup21k_NoRGa.sh` and
    /// `configs/cifar100_norgaprompt.py` @5bd6f7a (the prompt stage's
    /// `--lr 0.03 --sched step` live in `[optim]`).
    pub struct Params {
        /// Blocks that get the task prefix; empty = no prompts (then `lora` is what the tasks train).
        pub layers: Vec<usize> = vec![0, 1, 2, 3, 4],
        /// Prefix length per prompt.
        pub length: i64 = 5,
        /// m of the momentum mix `(1−m)·P_t + m·mean(P_<t)`.
        pub prompt_momentum: f64 = 0.01,
        /// Weight of the contrastive term (`--reg`); 0 drops it.
        pub reg: f64 = 0.1,
        /// Temperature of the contrastive term.
        pub temperature: f64 = 0.8,
        /// Head learning rate as a multiple of the prompt stage's (`--larger_prompt_lr`).
        pub head_lr_scale: f64 = 0.1,
        /// Score only the task's classes in the `tii` and `prompt` stages (`train_mask`).
        pub train_mask: bool = true,
        /// The task prompts' parameterisation and gate, e.g. `{ param = "reparam-mlp", gate = "sigmoid" }`
        /// (NoRGa's σ on the prefix logits) or `{ gate = "zero-init" }`; the default is plain prefix-tuning.
        pub prompt: PrefixExpert = PrefixExpert::default(),
        /// Class statistics for TII refinement and TAP.
        pub statistics: StatsKind = StatsKind::Covariance,
        /// k of `statistics = "multi-centroid"`.
        pub n_centroids: usize = 10,
        /// Epochs of the `tii` stage; 0 drops it (TII then learns from Gaussian samples
        /// alone, and the query statistics are taken at the end of the `prompt` stage).
        pub tii_epochs: usize = 20,
        /// Adam learning rate of the `tii` stage (scaled by batch/256 when `[optim]` scales).
        pub tii_lr: f64 = 0.0005,
        /// Hidden widths of the TII MLP, as multiples of the feature width.
        pub tii_mlp_hidden: Vec<i64> = vec![2],
        /// TII's network: `"mapping"` (the official `MlpMapping` with `tii_mlp_hidden`) or
        /// `{ classifier = [w, …] }`, a ReLU MLP with these hidden widths (WAVE-CRE).
        pub tii_net: TiiNet = TiiNet::Mapping,
        /// Hidden widths of the class head, a ReLU MLP; empty = the official linear head.
        pub head_hidden: Vec<i64> = vec![],
        /// Run `tii-align` and `align` from the first task on (WAVE-CRE's Algorithm 1);
        /// HiDe-Prompt starts them at task 2. Needs `replay_samples`.
        pub align_from_first_task: bool = false,
        /// Optimizer of the `tii-align` and `align` stages: `"sgd"` (momentum 0.9, cosine
        /// per epoch) or `"adam"` (constant).
        pub align_optimizer: AlignOptimizer = AlignOptimizer::Sgd,
        /// Gaussian samples per seen class per epoch of `tii-align` and `align`, all used,
        /// in batches of `[optim].batch_size`; 0 = the official draw (`batch` or
        /// `align_samples_factor × batch` per class, `#old classes` steps).
        pub replay_samples: i64 = 0,
        /// Epochs of the `tii-align` stage.
        pub tii_align_epochs: usize = 30,
        /// SGD learning rate of the `tii-align` stage (`--ca_lr` of the TII run; scaled by
        /// batch/256 when `[optim]` scales, as the official TII trainer scales it).
        pub tii_align_lr: f64 = 0.005,
        /// Epochs of the `align` stage (TAP).
        pub align_epochs: usize = 80,
        /// SGD learning rate of the `align` stage.
        pub align_lr: f64 = 0.05,
        /// Weight decay of the `tii-align` and `align` SGD. The official runs have 0.0 (two
        /// argparse options share one destination); 5e-4 is what their SGD constructor says.
        pub align_weight_decay: f64 = 0.0,
        /// Multi-centroid statistics: draw the per-class count for each centroid (thu-ml
        /// HiDe-Prompt, HierC) rather than split it across the centroids (MoE_PromptCL).
        pub align_per_centroid: bool = false,
        /// Pseudo-features per class per `align` epoch, as a multiple of the batch size.
        pub align_samples_factor: i64 = 5,
        /// Prompts per task (1 = HiDe-Prompt's single task prompt; more = keyed pools).
        pub pool_size: usize = 1,
        /// Prompts of the pool each sample uses.
        pub top_k: usize = 1,
        /// Weight of the key–query matching term (pools only).
        pub match_weight: f64 = 0.0,
        /// Start a task's prompts as a copy of the previous task's (`shared_prompt_pool`).
        pub init_from_previous: bool = true,
        /// Epochs of an `embeddings` stage before the first task's others: BERT's
        /// entity-marker rows, position and token-type embeddings and embedding LayerNorm
        /// trained through a throw-away head, then frozen, for queries and prompted
        /// features alike (the WAVE-CRE group's code: 10). 0 keeps the pretrained ones.
        pub embedding_epochs: usize = 0,
        /// Adam learning rate of the `embeddings` stage (the group's `encoder_lr`).
        pub embedding_lr: f64 = 0.001,
        /// `official` pairs key and value halves across the batch as the official code's
        /// `reshape` does (to reproduce published numbers); `correct` gives each sample its own.
        pub prefix_layout: PrefixLayout = PrefixLayout::Correct,
        /// Task-specific LoRA on the attention projections, e.g. `{ rank = 5, alpha = 1.0,
        /// targets = ["k", "v"], layers = [0, 1, 2, 3, 4] }`; none by default.
        pub lora: Option<LoraSpec> = None,
        /// TII on the backbone under one LoRA trained by the `tii` stage of every task
        /// (HiDe-PET's task identifier, its `continual_lora` run), instead of on the frozen
        /// query; its statistics are taken after each task's `tii` stage. None by default.
        pub tii_lora: Option<LoraSpec> = None,
        /// The TII LoRA's learning rate after the first task as a multiple of the `tii`
        /// stage's (`--slow_lr`, `continual_type = first_sl`; the head keeps the full rate).
        pub tii_lora_lr_scale: f64 = 0.1,
        /// Gaussian samples per seen class per `tii-align` epoch, as a multiple of the batch
        /// size (HiDe-Prompt's TII trainer: 1; HiDe-PET's TII run aligns as TAP does: 5).
        pub tii_align_samples_factor: i64 = 1,
    }
}

pub struct HidePrompt {
    vs: nn::VarStore,
    /// None with `layers = []` or adaptive prompts.
    prompts: Option<TaskPrompts>,
    adaptive: Option<AdaptivePrompts>,
    lora: Option<TaskLora>,
    /// HiDe-PET's TII LoRA (`tii_lora`), one set for every task.
    tii_lora: Option<TaskLora>,
    gates: Option<ExpertGates>,
    head: Classifier,
    tii: TaskIdentity,
    tap_stats: ClassStats,
    embeddings: Option<EmbeddingTuning>,
    backbone: Rc<Backbone>,
    params: Params,
    name: &'static str,
    batch_size: i64,
    seed: u64,
}

impl HidePrompt {
    pub fn new(ctx: &MethodContext, params: Params, name: &'static str) -> Result<Self> {
        let bad = |reason: String| LearnerError::Params { method: name.into(), reason };
        if !(0.0..=1.0).contains(&params.prompt_momentum) || !(params.temperature > 0.0) {
            return Err(bad("need 0 <= prompt_momentum <= 1 and temperature > 0".into()));
        }
        if params.statistics == StatsKind::MultiCentroid && params.n_centroids == 0 {
            return Err(bad("n_centroids must be >= 1".into()));
        }
        if !(params.tii_lr > 0.0 && params.tii_align_lr > 0.0 && params.align_lr > 0.0)
            || params.align_samples_factor < 1
            || !(params.align_weight_decay >= 0.0)
        {
            return Err(bad("the learning rates must be positive, align_weight_decay >= 0 and align_samples_factor >= 1".into()));
        }
        if !(params.embedding_lr > 0.0) {
            return Err(bad(format!("embedding_lr = {} must be positive", params.embedding_lr)));
        }
        if params.replay_samples < 0 || (params.align_from_first_task && params.replay_samples == 0) {
            return Err(bad(format!(
                "replay_samples = {} must be >= 0, and > 0 with align_from_first_task (the official draw takes #old-classes steps: none in the first task)",
                params.replay_samples
            )));
        }
        if params
            .head_hidden
            .iter()
            .chain(match &params.tii_net {
                TiiNet::Classifier(w) => w.as_slice(),
                TiiNet::Mapping | TiiNet::Linear => &[],
            })
            .any(|&w| w < 1)
        {
            return Err(bad("head_hidden and tii_net's widths must be >= 1".into()));
        }
        for spec in params.lora.iter().chain(&params.tii_lora) {
            spec.validate(ctx.backbone.depth(), ctx.backbone.token_dim()).map_err(bad)?;
        }
        if params.tii_lora.is_some() && params.tii_epochs == 0 {
            return Err(bad("tii_lora trains in the `tii` stage: it needs tii_epochs >= 1".into()));
        }
        if !(params.tii_lora_lr_scale >= 0.0) || params.tii_align_samples_factor < 1 {
            return Err(bad(format!(
                "tii_lora_lr_scale = {} must be >= 0 and tii_align_samples_factor = {} >= 1",
                params.tii_lora_lr_scale, params.tii_align_samples_factor
            )));
        }
        if params.layers.is_empty()
            && (params.lora.is_none() || params.prompt.gate.is_some() || params.pool_size > 1 || params.prompt.param == PromptParam::Adaptive)
        {
            return Err(bad("layers = [] (no task prompts) needs `lora`, and takes no prompt gate or pool".into()));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let set = PromptSetConfig {
            prompt_name: "e_prompt",
            key_name: Some("e_key"),
            layers: params.layers.clone(),
            length: params.length,
            pool_size: params.pool_size,
            top_k: params.top_k,
            seed_tag: 40,
            expert: params.prompt.clone(),
        };
        let adaptive_param = params.prompt.param == PromptParam::Adaptive;
        if adaptive_param && (params.prompt.gate.is_some() || params.pool_size > 1) {
            return Err(bad("prompt.param = \"adaptive\" takes no prompt.gate and no pool (pool_size = 1)".into()));
        }
        let prompts =
            (!params.layers.is_empty() && !adaptive_param).then(|| TaskPrompts::new(&root, ctx, set)).transpose().map_err(|e| bad(e.to_string()))?;
        let adaptive = adaptive_param
            .then(|| {
                let e = &params.prompt;
                let shape = AdaptiveShape {
                    kernel: e.adaptive_kernel,
                    padding: e.adaptive_padding,
                    hidden: e.adaptive_hidden,
                    conv_dropout: e.adaptive_conv_dropout,
                    mlp_dropout: e.adaptive_mlp_dropout,
                };
                AdaptivePrompts::new(&root, ctx, &params.layers, params.length, shape, 47)
            })
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let lora = params.lora.as_ref().map(|spec| TaskLora::new(&root, ctx, spec, 45)).transpose().map_err(|e| bad(e.to_string()))?;
        let tii_lora =
            params.tii_lora.as_ref().map(|spec| TaskLora::shared(&root, ctx, spec, 46, TII_LORA)).transpose().map_err(|e| bad(e.to_string()))?;
        let (layers, h, hd) = (params.layers.len(), ctx.backbone.num_heads(), ctx.backbone.head_dim());
        let gates = ExpertGates::new(&root, params.prompt.gate, ctx.num_tasks, layers, h, hd);
        let d = ctx.feature_dim();
        let head = Classifier::new(&root, d, &params.head_hidden, ctx.num_classes, ctx.seed, LinearInit::Timm);
        let tii = TaskIdentity::new(&root, ctx, &params.tii_net, &params.tii_mlp_hidden, params.statistics, params.n_centroids);
        let tap_stats = ClassStats::new(&(&root / "tap_stats"), params.statistics, ctx.num_classes, d, params.n_centroids);
        let embeddings = (params.embedding_epochs > 0)
            .then(|| EmbeddingTuning::new(&root, ctx, &params.head_hidden))
            .transpose()
            .map_err(|e| bad(format!("embedding_epochs = {}: {e}", params.embedding_epochs)))?;
        Ok(Self {
            embeddings,
            vs,
            prompts,
            adaptive,
            lora,
            tii_lora,
            gates,
            head,
            tii,
            tap_stats,
            backbone: ctx.backbone.clone(),
            batch_size: ctx.optim.batch_size as i64,
            seed: ctx.seed,
            params,
            name,
        })
    }

    /// The hooks every forward pass starts from: the tuned embeddings, if any.
    fn base(&self) -> Prompts<'_> {
        self.embeddings.as_ref().map_or_else(Prompts::none, EmbeddingTuning::prompts)
    }

    /// The un-prompted query, without autograd.
    fn query(&self, x: &Inputs) -> Result<Tensor> {
        self.backbone.query_under(x, &self.base())
    }

    /// What TII reads: the frozen query, or with `tii_lora` the feature under the TII
    /// LoRA (with autograd: the `tii` stage trains it).
    fn tii_input(&self, x: &Inputs) -> Result<Tensor> {
        match &self.tii_lora {
            None => self.query(x),
            Some(l) => {
                let updates = l.of_task(0);
                Ok(self.backbone.forward(x, &lora::with_updates(self.base(), &updates))?.feature)
            }
        }
    }

    /// TII's statistics of the task's classes, from [`Self::tii_input`].
    fn fit_tii(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (q, y) = tch::no_grad(|| crate::method::collect_features(data, &mut |x| self.tii_input(x)))?;
        self.tii.fit(task.classes.clone(), &q, &y, self.seed)
    }

    /// Prompted features for prefixes `e` (`[B or 1, layers, 2, L, H, hd]`; none without
    /// prompts), gated, with the LoRA updates and adaptive prompts of the task(s)
    /// `route` says (`train`: their dropout on).
    fn prompted(&self, x: &Inputs, e: Option<&Tensor>, route: Route, train: bool) -> Result<Tensor> {
        let updates = self.lora.as_ref().map(|l| l.routed(route)).unwrap_or_default();
        let (first, generators) = match &self.adaptive {
            Some(a) => (Some(a.first_tokens(route)), a.generators(route, train)),
            None => (None, Vec::new()),
        };
        let mut base = lora::with_updates(self.base(), &updates);
        if let (Some(a), Some(first)) = (&self.adaptive, &first) {
            base = base.with_tokens(a.layers()[0], first);
            for (l, g) in &generators {
                base = base.with_token_generator(*l, g);
            }
        }
        let (Some(set), Some(e)) = (&self.prompts, e) else {
            return Ok(self.backbone.forward(x, &base)?.feature);
        };
        let e = self.params.prefix_layout.arrange(e, x.len());
        let routed = self.gates.as_ref().map(|g| g.routed(route));
        let gates = routed.as_ref().map_or(LayerGates::None, |g| g.layer_gates());
        let prompts = prefix_prompts(base, set.layers(), &e, gates);
        Ok(self.backbone.forward(x, &prompts)?.feature)
    }

    /// Task t's prefixes for a batch of it (`mixed`: as the prompt stage trains them,
    /// else as sealed) and the key-matching term; none without prompts.
    fn task_prefixes(&self, x: &Inputs, t: usize, mixed: bool) -> Result<(Option<Tensor>, Tensor)> {
        let Some(set) = &self.prompts else {
            return Ok((None, Tensor::zeros([], (Kind::Float, x.device()))));
        };
        let pool = if mixed { set.mixed(t, self.params.prompt_momentum) } else { set.pool(t) }.unsqueeze(0);
        let keys = set.keys.get(t).map(|k| k.unsqueeze(0));
        // Only key matching reads the frozen query here.
        let q = keys.is_some().then(|| self.query(x)).transpose()?;
        let (e, matching) = set.choose(&pool, keys.as_ref(), q.as_ref())?;
        Ok((Some(e), matching))
    }

    /// `CE(MMᵀ/τ, I)` over [stored means of classes < `seen_before`; batch features].
    fn contrastive(&self, feats: &Tensor, seen_before: usize) -> Tensor {
        let m = if seen_before > 0 { Tensor::cat(&[self.tap_stats.means(seen_before), feats.shallow_clone()], 0) } else { feats.shallow_clone() };
        let n = m.size()[0];
        let sim = m.matmul(&m.tr()) / self.params.temperature;
        sim.cross_entropy_for_logits(&Tensor::arange(n, (Kind::Int64, feats.device())))
    }

    fn prompt_step(&self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let t = task.task;
        let (e, matching) = self.task_prefixes(x, t, true)?;
        let feats = self.prompted(x, e.as_ref(), Route::Task(t), true)?;
        let step = ce_step(&self.head.forward(&feats), labels, train_classes(task, self.params.train_mask));
        let mut loss = step.loss + matching * self.params.match_weight;
        if self.params.reg != 0.0 {
            loss = loss + self.contrastive(&feats, task.classes.start) * self.params.reg;
        }
        Ok(Step { loss, ..step }.with_features(&feats))
    }

    /// Features of inputs of task `t` under that task's own prompts, without autograd.
    fn own_features(&self, x: &Inputs, t: usize) -> Result<Tensor> {
        tch::no_grad(|| {
            let (e, _) = self.task_prefixes(x, t, false)?;
            self.prompted(x, e.as_ref(), Route::Task(t), false)
        })
    }

    /// Per-class statistics of the task's prompted features (after the momentum write-back).
    fn fit_tap(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let t = task.task;
        if let Some(set) = &mut self.prompts {
            set.seal(t, self.params.prompt_momentum);
        }
        if let Some(l) = &mut self.lora {
            l.seal(t);
        }
        let (mut fs, mut ys) = (Vec::new(), Vec::new());
        data.for_each(&mut |x, y| {
            fs.push(self.own_features(x, t)?);
            ys.push(y.shallow_clone());
            Ok(())
        })?;
        let seed = self.seed;
        alignment::fit_classes(&mut self.tap_stats, task.classes.clone(), &Tensor::cat(&fs, 0), &Tensor::cat(&ys, 0), |c| {
            seed ^ ((c as u64) << 16) ^ 1
        })
    }
}

const EMBED: &str = embedding_tuning::NAME;
const TII: &str = "tii";
const TII_ALIGN: &str = "tii-align";
/// The TII LoRA's variables (`tii_lora.a.0`, `tii_lora.b.0`).
const TII_LORA: &str = "tii_lora";
const PROMPT: &str = "prompt";
const ALIGN: &str = "align";

impl ContinualMethod for HidePrompt {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        let p = &self.params;
        let align = task.task > 0 || p.align_from_first_task;
        let tii_optim = StageOptim::adam(optim.scaled(p.tii_lr)).betas(optim.betas).weight_decay(optim.weight_decay).clip(optim.clip_grad_norm);
        let tii_align = align.then(|| {
            p.align_optimizer.stage(TII_ALIGN, p.tii_align_epochs, optim.scaled(p.tii_align_lr), tii::NAME).weight_decay(p.align_weight_decay)
        });
        let mut stages = Vec::new();
        if task.task == 0 && self.embeddings.is_some() {
            let adam = StageOptim::adam(p.embedding_lr).clip(optim.clip_grad_norm);
            stages.push(Stage::new(EMBED, p.embedding_epochs, adam, StageData::TrainTransform).only(&[(EMBED, 1.0)]));
        }
        if p.tii_epochs > 0 {
            let lora_scale = if task.task == 0 { 1.0 } else { p.tii_lora_lr_scale };
            let trains: &[(&str, f64)] = if self.tii_lora.is_some() { &[(tii::NAME, 1.0), (TII_LORA, lora_scale)] } else { &[(tii::NAME, 1.0)] };
            stages.push(Stage::new(TII, p.tii_epochs, tii_optim, StageData::TrainTransform).only(trains));
            stages.extend(tii_align.clone());
        }
        let mut trains: Vec<(&str, f64)> = self.prompts.iter().flat_map(TaskPrompts::names).map(|n| (n, 1.0)).collect();
        if self.lora.is_some() {
            trains.push((lora::NAME, 1.0));
        }
        if self.adaptive.is_some() {
            trains.push((adaptive_prompt::NAME, 1.0));
        }
        if let Some(g) = &self.gates {
            trains.push((g.name(), 1.0));
        }
        trains.push(("head", p.head_lr_scale));
        stages.push(Stage::from_run(PROMPT, optim).only(&trains));
        // Without a `tii` stage the query statistics come with the prompt stage's end.
        if p.tii_epochs == 0 {
            stages.extend(tii_align);
        }
        if align {
            stages.push(p.align_optimizer.stage(ALIGN, p.align_epochs, p.align_lr, "head").weight_decay(p.align_weight_decay));
        }
        stages
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        if let Some(set) = &mut self.prompts {
            set.begin_task(task.task, self.params.init_from_previous);
        }
        if let Some(l) = &mut self.lora {
            l.begin_task(task.task);
        }
        if let Some(l) = &mut self.tii_lora {
            l.begin_task(0);
        }
        if let Some(a) = &mut self.adaptive {
            a.begin_task(task.task, self.params.init_from_previous);
        }
        if let Some(g) = &mut self.gates {
            g.begin_task(task.task);
        }
        Ok(())
    }

    fn generate(&mut self, task: &TaskInfo) -> Result<Vec<(Tensor, Tensor)>> {
        let (stats, per_class) = match task.stage {
            TII_ALIGN => (&self.tii.stats, self.batch_size * self.params.tii_align_samples_factor),
            ALIGN => (&self.tap_stats, self.batch_size * self.params.align_samples_factor),
            s => return Err(LearnerError::Invalid(format!("{}: stage `{s}` does not generate data", self.name))),
        };
        let (batches, steps) = if self.params.replay_samples > 0 {
            let steps = (self.params.replay_samples as usize * task.seen.end).div_ceil(self.batch_size as usize);
            (alignment::pseudo_batches_drawn(stats, 0..task.seen.end, self.params.replay_samples, self.batch_size, steps), steps)
        } else {
            let per_centroid = self.params.align_per_centroid && self.params.statistics == StatsKind::MultiCentroid;
            let draw = if per_centroid { per_class * self.params.n_centroids as i64 } else { per_class };
            (alignment::pseudo_batches_drawn(stats, 0..task.seen.end, draw, per_class, task.classes.start), task.classes.start)
        };
        // Multi-centroid statistics skip single-point clusters (as the official code, which
        // then fails on an empty `torch.cat`): with every cluster skipped nothing would align.
        if batches.is_empty() && steps > 0 {
            return Err(LearnerError::Invalid(format!(
                "{}: stage `{}` drew no pseudo-samples: every cluster of the seen classes' statistics holds one example \
                 (n_centroids = {} for this few examples per class); lower n_centroids or use statistics = \"variance\"",
                self.name, task.stage, self.params.n_centroids
            )));
        }
        Ok(batches)
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        match task.stage {
            EMBED => match &self.embeddings {
                Some(e) => e.step(&self.backbone, x, labels, train_classes(task, self.params.train_mask)),
                None => Err(LearnerError::Invalid(format!("{}: no stage `{EMBED}` (embedding_epochs = 0)", self.name))),
            },
            TII => Ok(self.tii.step(&self.tii_input(x)?, labels, train_classes(task, self.params.train_mask))),
            TII_ALIGN => Ok(self.tii.step(x.features()?, labels, 0..task.seen.end)),
            PROMPT => self.prompt_step(x, labels, task),
            ALIGN => Ok(ce_step(&self.head.forward(x.features()?), labels, 0..task.seen.end)),
            s => Err(LearnerError::Invalid(format!("{}: no stage `{s}`", self.name))),
        }
    }

    fn end_stage(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        match task.stage {
            TII => self.fit_tii(task, data),
            PROMPT => {
                if self.params.tii_epochs == 0 {
                    self.fit_tii(task, data)?;
                }
                self.fit_tap(task, data)
            }
            _ => Ok(()),
        }
    }

    fn task_features(&self, x: &Inputs, task: &TaskInfo) -> Result<Option<Tensor>> {
        Ok(Some(self.own_features(x, task.task)?))
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        // The frozen query is TII's input without `tii_lora`; with it, only key matching reads one.
        let tii_q = tch::no_grad(|| self.tii_input(x))?;
        let tasks = self.tii.predict_tasks(&tii_q, seen);
        let (task_ids, e) = match &self.prompts {
            Some(set) => {
                let (task_ids, pools, keys) = set.for_tasks(&tasks, x.device());
                let q = match (&self.tii_lora, &keys) {
                    (None, _) => Some(tii_q),
                    (Some(_), Some(_)) => Some(self.query(x)?),
                    (Some(_), None) => None,
                };
                (task_ids, Some(set.choose(&pools, keys.as_ref(), q.as_ref())?.0))
            }
            None => (crate::parts::task_ids(&tasks, x.device()), None),
        };
        let feats = self.prompted(x, e.as_ref(), Route::Samples(&task_ids), false)?;
        let logits = self.head.forward(&feats).narrow(1, 0, seen as i64);
        Ok(Prediction::new(logits, Some(task_ids)).with_features(&feats))
    }
}

impl std::fmt::Debug for HidePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}
