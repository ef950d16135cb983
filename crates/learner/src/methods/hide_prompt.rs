//! HiDe-Prompt (Wang et al., NeurIPS 2023; thu-ml/HiDe-Prompt) and, with the
//! gate on, NoRGa (Le et al., 2024, arXiv 2405.14124; Minhchuyentoancbn/MoE_PromptCL),
//! following MoE_PromptCL `engines/norga_tii_engine.py` + `norga_prompt_engine.py`.
//!
//! Three parts, all trained within promptcl's one task loop (the official code
//! runs TII as a separate first run; per task the two are independent, so
//! interleaving them is the same algorithm, and one frozen query forward per
//! batch serves both):
//!
//! - **TII** (task-identity inference): `MlpMapping(hidden=[2])` (Linear D→2D,
//!   GELU, Linear 2D→D, residual, LayerNorm) + linear head on the frozen,
//!   un-prompted class token, trained with cross-entropy masked to the task's
//!   classes for `tii_epochs` (Adam at `tii_lr`); after each task, per-class
//!   statistics of the frozen features, and from task 2 on a refinement of the
//!   MLP + head on Gaussian pseudo-features of all seen classes
//!   (`tii_align_epochs`, SGD momentum 0.9, wd 5e-4, lr `tii_align_lr`,
//!   cosine; `batch` samples per class, `#old classes` steps per epoch).
//! - **WTP** (within-task prediction): one prefix prompt per task in `layers`
//!   (length `length`), no shared prompt. Task t's prompt starts as a copy of
//!   task t−1's; while training, the prompt used is
//!   `(1−m)·P_t + m·mean(P_<t)` (the mean detached), and after training that
//!   mix is written into P_t. Loss: cross-entropy masked to the task's classes
//!   + `reg` × a contrastive term: rows = stored class means of earlier
//!   classes then the batch's prompted features, `CE(MMᵀ/0.8, identity)`.
//!   The head learns at `head_lr_scale` × the prompt learning rate (`--larger_prompt_lr`).
//! - **TAP** (task-adaptive prediction): after each task, per-class statistics
//!   of the prompted features (with the class's own task prompt); from task 2
//!   on, the head is retrained on `5 × batch` pseudo-features per seen class
//!   (`align_epochs`, SGD momentum 0.9, wd 5e-4, lr `align_lr`, cosine,
//!   `#old classes` steps per epoch, logits masked to seen classes).
//! - **Inference**: TII's class → its task → that task's prompt → prompted
//!   forward → head.
//!
//! **Prompt pools** (WAVE-CRE, see `wave_cre.rs`): with `pool_size` M > 1
//! each task owns M prompts with keys; a sample uses the `top_k` prompts of
//! its task's pool whose keys are nearest (cosine) to its frozen query,
//! concatenated along the prefix length, and the loss gains
//! `match_weight · mean(1 − cos(q, k))` over the chosen keys. M = 1 is the
//! single task prompt of HiDe-Prompt.
//!
//! **NoRGa**: each prompted layer's prefix logits pass through
//! `s + α·σ(τ·s)`; (τ, α) per layer, initialised to 1, trained with the
//! prompts during the first task and frozen afterwards (the official engine
//! sets `act_scale.requires_grad_(False)` from task 2 on).

use std::rc::Rc;

use promptcl_model::{GateActivation, NoRGaGate, PrefixScoreHook, Prompts};
use serde::Deserialize;
use tch::{nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};

use super::common::{ce_step, head, mask_outside, masked_ce, seeded_uniform, split_prefix, var_from};
use crate::method::{Backbone, BatchSource, ContinualMethod, MethodContext, Prediction, Step, TaskInfo};
use crate::stats::{ClassStats, StatsKind};
use crate::{LearnerError, Result};

/// Defaults: MoE_PromptCL `scripts/cifar100_Sup21k_NoRGa.sh` and
/// `configs/cifar100_norgaprompt.py` @5bd6f7a (the prompt stage's
/// `--lr 0.03 --sched step` live in `[optim]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub layers: Vec<usize>,
    pub length: i64,
    pub prompt_momentum: f64,
    pub reg: f64,
    pub temperature: f64,
    pub head_lr_scale: f64,
    pub train_mask: bool,
    /// NoRGa's σ; `None` = plain prefix-tuning (HiDe-Prompt).
    pub gate: Option<GateActivation>,
    pub statistics: StatsKind,
    pub n_centroids: usize,
    pub tii_epochs: usize,
    /// The TII stage's Adam learning rate (scaled by batch/256 like `[optim].lr` when that is).
    pub tii_lr: f64,
    pub tii_mlp_hidden: Vec<i64>,
    pub tii_align_epochs: usize,
    pub tii_align_lr: f64,
    pub align_epochs: usize,
    pub align_lr: f64,
    /// Pseudo-features per class per TAP epoch, as a multiple of the batch size.
    pub align_samples_factor: i64,
    /// Prompts per task (1 = HiDe-Prompt's single task prompt).
    pub pool_size: usize,
    /// Prompts of the pool each sample uses.
    pub top_k: usize,
    /// Weight of the key–query matching term (pools only).
    pub match_weight: f64,
    /// Start a task's prompts as a copy of the previous task's (`shared_prompt_pool`).
    pub init_from_previous: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            layers: vec![0, 1, 2, 3, 4],
            length: 5,
            prompt_momentum: 0.01,
            reg: 0.1,
            temperature: 0.8,
            head_lr_scale: 0.1,
            train_mask: true,
            gate: None,
            statistics: StatsKind::Covariance,
            n_centroids: 10,
            tii_epochs: 20,
            tii_lr: 0.0005,
            tii_mlp_hidden: vec![2],
            tii_align_epochs: 30,
            tii_align_lr: 0.005,
            align_epochs: 80,
            align_lr: 0.05,
            align_samples_factor: 5,
            pool_size: 1,
            top_k: 1,
            match_weight: 0.0,
            init_from_previous: true,
        }
    }
}

/// The TII network on top of the frozen class token.
struct Tii {
    layers: Vec<nn::Linear>,
    norm_w: Tensor,
    norm_b: Tensor,
    head: nn::Linear,
}

impl Tii {
    fn new(p: &nn::Path, d: i64, hidden: &[i64], classes: usize, seed: u64) -> Self {
        let mut dims = vec![d];
        dims.extend(hidden.iter().map(|h| h * d));
        dims.push(d);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let bound = 1.0 / (w[0] as f64).sqrt();
                let lp = p / "mlp" / i;
                let ws = var_from(&lp, "weight", seeded_uniform(seed, &[30, i as u64, 0], &[w[1], w[0]], -bound, bound));
                let bs = var_from(&lp, "bias", seeded_uniform(seed, &[30, i as u64, 1], &[w[1]], -bound, bound));
                nn::Linear { ws, bs: Some(bs) }
            })
            .collect();
        let norm_w = p.ones("norm_weight", &[d]);
        let norm_b = p.zeros("norm_bias", &[d]);
        Self { layers, norm_w, norm_b, head: head(p, d, classes, seed ^ 0x7111) }
    }

    /// `MlpMapping` (residual + LayerNorm) then the head.
    fn logits(&self, q: &Tensor) -> Tensor {
        let mut h = q.shallow_clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h);
            if i != last {
                h = h.gelu("none");
            }
        }
        let d = q.size()[1];
        let x = (h + q).layer_norm([d], Some(&self.norm_w), Some(&self.norm_b), 1e-5, false);
        self.head.forward(&x)
    }
}

pub struct HidePrompt {
    vs: nn::VarStore,
    /// Per task `[M, layers, 2, L, H, hd]`.
    prompts: Vec<Tensor>,
    /// Per task `[M, D]` when M > 1.
    keys: Vec<Tensor>,
    /// `[layers, 2]`: column 0 τ, column 1 α (official `act_scale`).
    gate: Option<Tensor>,
    head: nn::Linear,
    tii: Tii,
    tii_stats: ClassStats,
    tap_stats: ClassStats,
    backbone: Rc<Backbone>,
    task_sizes: Vec<usize>,
    params: Params,
    name: &'static str,
    prompt_epochs: usize,
    batch_size: i64,
    seed: u64,
    tii_lr_scale: f64,
}

impl HidePrompt {
    pub fn new(ctx: &MethodContext, params: Params, name: &'static str) -> Result<Self> {
        let bad = |reason: String| Err(LearnerError::Params { method: name.into(), reason });
        let depth = ctx.backbone.depth();
        if let Some(l) = params.layers.iter().find(|&&l| l >= depth) {
            return bad(format!("prompt layer {l} beyond the backbone's depth {depth}"));
        }
        if params.length < 1 || !(0.0..=1.0).contains(&params.prompt_momentum) || !(params.temperature > 0.0) {
            return bad("need length >= 1, 0 <= prompt_momentum <= 1, temperature > 0".into());
        }
        if params.statistics == StatsKind::MultiCentroid && params.n_centroids == 0 {
            return bad("n_centroids must be >= 1".into());
        }
        if params.pool_size == 0 || params.top_k == 0 || params.top_k > params.pool_size {
            return bad(format!("need 1 <= top_k ({}) <= pool_size ({})", params.top_k, params.pool_size));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let (h, hd, d) = (ctx.backbone.num_heads(), ctx.backbone.head_dim(), ctx.feature_dim());
        // Group 0: prompts and gate at the prompt lr; 1: the head; 2: TII.
        let p0 = root.set_group(0);
        let m = params.pool_size as i64;
        let dims = [m, params.layers.len() as i64, 2, params.length, h, hd];
        let prompts = (0..ctx.num_tasks)
            .map(|t| var_from(&(&p0 / "e_prompt"), &t.to_string(), seeded_uniform(ctx.seed, &[40, t as u64], &dims, -1.0, 1.0)))
            .collect();
        let keys = if m > 1 {
            (0..ctx.num_tasks)
                .map(|t| var_from(&(&p0 / "e_key"), &t.to_string(), seeded_uniform(ctx.seed, &[41, t as u64], &[m, d], -1.0, 1.0)))
                .collect()
        } else {
            Vec::new()
        };
        let gate = params.gate.map(|_| p0.ones("act_scale", &[params.layers.len() as i64, 2]));
        let head = head(&root.set_group(1), d, ctx.num_classes, ctx.seed);
        let p2 = root.set_group(2) / "tii";
        let tii = Tii::new(&p2, d, &params.tii_mlp_hidden, ctx.num_classes, ctx.seed);
        let k = params.n_centroids;
        let tii_stats = ClassStats::new(&(&root / "tii_stats"), params.statistics, ctx.num_classes, d, k);
        let tap_stats = ClassStats::new(&(&root / "tap_stats"), params.statistics, ctx.num_classes, d, k);
        let tii_lr_scale = params.tii_lr / ctx.optim.lr;
        Ok(Self {
            vs,
            prompts,
            keys,
            gate,
            head,
            tii,
            tii_stats,
            tap_stats,
            backbone: ctx.backbone.clone(),
            task_sizes: ctx.task_sizes.clone(),
            prompt_epochs: ctx.optim.epochs,
            batch_size: ctx.optim.batch_size as i64,
            seed: ctx.seed,
            tii_lr_scale,
            params,
            name,
        })
    }

    /// The gates of every prompted layer (shared by all tasks).
    fn gates(&self) -> Vec<NoRGaGate> {
        match (&self.gate, self.params.gate) {
            (Some(g), Some(activation)) => (0..self.params.layers.len() as i64)
                .map(|i| NoRGaGate { tau: g.get(i).get(0), alpha: g.get(i).get(1), activation })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Prompted class-token features for prompts `e` (`[B or 1, layers, 2, L, H, hd]`).
    fn prompted(&self, images: &Tensor, e: &Tensor) -> Result<Tensor> {
        let gates = self.gates();
        let mut prompts = Prompts::none();
        for (i, &l) in self.params.layers.iter().enumerate() {
            let (k, v) = split_prefix(&e.select(1, i as i64));
            prompts = prompts.with_prefix(l, &k, &v);
            if let Some(g) = gates.get(i) {
                prompts = prompts.with_score_hook(l, g as &dyn PrefixScoreHook);
            }
        }
        Ok(self.backbone.forward(images, &prompts)?.feature)
    }

    /// Each sample's prefix from its task's pool: `pools` `[B or 1, M, layers, 2, L, H, hd]`,
    /// `keys` `[B or 1, M, D]`, `q` `[B, D]` → `[B or 1, layers, 2, K·L, H, hd]` and
    /// the matching term (zero without a pool).
    fn choose(&self, pools: &Tensor, keys: Option<&Tensor>, q: &Tensor) -> (Tensor, Tensor) {
        let Some(keys) = keys else {
            return unkeyed(pools);
        };
        let b = q.size()[0];
        let s = pools.size();
        let k = self.params.top_k as i64;
        let cos = super::common::l2_normalize(keys, 2).matmul(&super::common::l2_normalize(q, 1).unsqueeze(2)).squeeze_dim(2);
        let cos = cos.expand([b, s[1]], false);
        let (sim, idx) = cos.topk(k, 1, true, true);
        let pools = pools.expand(&[b, s[1], s[2], s[3], s[4], s[5], s[6]][..], false);
        let gather = idx.view(&[b, k, 1, 1, 1, 1, 1][..]).expand(&[b, k, s[2], s[3], s[4], s[5], s[6]][..], false);
        let chosen = pools.gather(1, &gather, false).permute(&[0, 2, 3, 1, 4, 5, 6][..]).reshape([b, s[2], s[3], k * s[4], s[5], s[6]]);
        (chosen, (sim.ones_like() - sim).mean(Kind::Float))
    }

    /// Task t's prompt as used in training: mixed with the mean of earlier prompts.
    fn training_prompt(&self, t: usize) -> Tensor {
        let own = &self.prompts[t];
        let m = self.params.prompt_momentum;
        if t == 0 || m == 0.0 {
            return own.shallow_clone();
        }
        let earlier = Tensor::stack(&self.prompts[..t], 0).mean_dim(0, false, Kind::Float).detach();
        own * (1.0 - m) + earlier * m
    }

    /// `CE(MMᵀ/τ, I)` over [stored means of classes < `seen_before`; batch features].
    fn contrastive(&self, feats: &Tensor, seen_before: usize) -> Tensor {
        let m = if seen_before > 0 { Tensor::cat(&[self.tap_stats.means(seen_before), feats.shallow_clone()], 0) } else { feats.shallow_clone() };
        let n = m.size()[0];
        let sim = m.matmul(&m.tr()) / self.params.temperature;
        sim.cross_entropy_for_logits(&Tensor::arange(n, (Kind::Int64, feats.device())))
    }

    /// SGD (momentum 0.9, wd 5e-4, cosine over epochs) on pseudo-features of
    /// all seen classes, `steps = #old classes` batches of `per_class` per epoch.
    fn align(&mut self, tii: bool, task: &TaskInfo) -> Result<()> {
        let (epochs, lr, per_class) = if tii {
            (self.params.tii_align_epochs, self.params.tii_align_lr, self.batch_size)
        } else {
            (self.params.align_epochs, self.params.align_lr, self.batch_size * self.params.align_samples_factor)
        };
        let steps = task.classes.start;
        if epochs == 0 || steps == 0 {
            return Ok(());
        }
        tch::manual_seed((self.seed ^ ((task.task as u64) << 8) ^ u64::from(tii)) as i64);
        let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 5e-4, nesterov: false }.build(&self.vs, lr)?;
        for epoch in 0..epochs {
            opt.set_lr(0.5 * lr * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos()));
            let stats = if tii { &self.tii_stats } else { &self.tap_stats };
            let (x, y) = stats.sample_classes(0..task.seen.end, per_class);
            let perm = Tensor::randperm(x.size()[0], (Kind::Int64, x.device()));
            let (x, y) = (x.index_select(0, &perm), y.index_select(0, &perm));
            for s in 0..steps as i64 {
                let (start, len) = (s * per_class, per_class.min(x.size()[0] - s * per_class));
                if len <= 0 {
                    break;
                }
                let (xb, yb) = (x.narrow(0, start, len), y.narrow(0, start, len));
                let logits = if tii { self.tii.logits(&xb) } else { self.head.forward(&xb) };
                let loss = masked_ce(&logits, &yb, 0..task.seen.end);
                opt.zero_grad();
                loss.backward();
                opt.step();
            }
        }
        opt.zero_grad();
        Ok(())
    }
}

impl ContinualMethod for HidePrompt {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn epochs(&self) -> Option<usize> {
        Some(self.prompt_epochs.max(self.params.tii_epochs))
    }

    fn lr_groups(&self) -> Vec<(usize, f64)> {
        vec![(1, self.params.head_lr_scale), (2, self.tii_lr_scale)]
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        let t = task.task;
        tch::no_grad(|| {
            if t > 0 && self.params.init_from_previous {
                // `shared_prompt_pool`: the new prompt starts from the previous one.
                let prev = self.prompts[t - 1].copy();
                self.prompts[t].copy_(&prev);
            }
        });
        for (i, p) in self.prompts.iter_mut().enumerate().chain(self.keys.iter_mut().enumerate()) {
            let own = i == t;
            if !own {
                p.zero_grad();
            }
            let _ = p.set_requires_grad(own);
        }
        if let Some(g) = &mut self.gate {
            if t > 0 {
                g.zero_grad();
            }
            let _ = g.set_requires_grad(t == 0);
        }
        Ok(())
    }

    fn train_step(&mut self, images: &Tensor, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let mut loss = Tensor::zeros([], (Kind::Float, images.device()));
        let (mut logits, mut features) = (None, None);
        let classes = if self.params.train_mask { task.classes.clone() } else { 0..task.seen.end };
        let train_tii = task.epoch < self.params.tii_epochs;
        let keys = self.keys.get(task.task).map(|k| k.unsqueeze(0));
        // The frozen query forward feeds only the TII head and key matching:
        // prompt-only epochs of unkeyed methods (HiDe, NoRGa) skip it.
        let q = if train_tii || keys.is_some() { Some(self.backbone.query(images)?) } else { None };
        if let (true, Some(q)) = (train_tii, &q) {
            loss = loss + masked_ce(&self.tii.logits(q), labels, classes.clone());
        }
        if task.epoch < self.prompt_epochs {
            let pool = self.training_prompt(task.task).unsqueeze(0);
            let (e, matching) = match &q {
                Some(q) => self.choose(&pool, keys.as_ref(), q),
                None => unkeyed(&pool),
            };
            let feats = self.prompted(images, &e)?;
            let step = ce_step(&self.head.forward(&feats), labels, classes);
            loss = loss + step.loss + self.contrastive(&feats, task.classes.start) * self.params.reg + matching * self.params.match_weight;
            logits = step.logits;
            features = Some(feats);
        }
        Ok(Step { loss, logits, features })
    }

    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let t = task.task;
        let m = self.params.prompt_momentum;
        if t > 0 && m > 0.0 {
            let mixed = tch::no_grad(|| self.training_prompt(t));
            tch::no_grad(|| self.prompts[t].copy_(&mixed));
        }
        // One pass: frozen and prompted features of the task's classes.
        let (mut q_all, mut f_all, mut y_all) = (Vec::new(), Vec::new(), Vec::new());
        let pool = self.prompts[t].unsqueeze(0);
        let keys = self.keys.get(t).map(|k| k.unsqueeze(0));
        data.for_each(&mut |images, labels| {
            tch::no_grad(|| -> Result<()> {
                let q = self.backbone.query(images)?;
                let (e, _) = self.choose(&pool, keys.as_ref(), &q);
                f_all.push(self.prompted(images, &e)?);
                q_all.push(q);
                y_all.push(labels.shallow_clone());
                Ok(())
            })
        })?;
        let (q, f, y) = (Tensor::cat(&q_all, 0), Tensor::cat(&f_all, 0), Tensor::cat(&y_all, 0));
        for c in task.classes.clone() {
            let idx = y.eq(c as i64).nonzero().squeeze_dim(1);
            let seed = self.seed ^ ((c as u64) << 16);
            self.tii_stats.fit(c, &q.index_select(0, &idx), seed)?;
            self.tap_stats.fit(c, &f.index_select(0, &idx), seed ^ 1)?;
        }
        if t > 0 {
            self.align(true, task)?;
            self.align(false, task)?;
        }
        Ok(())
    }

    fn predict(&self, images: &Tensor, seen: usize) -> Result<Prediction> {
        let q = self.backbone.query(images)?;
        let tii_logits = mask_outside(&self.tii.logits(&q), 0..seen);
        let classes: Vec<i64> = Vec::try_from(tii_logits.argmax(1, false).to_device(tch::Device::Cpu)).expect("int64");
        let tasks: Vec<i64> = classes.iter().map(|&c| crate::method::task_of(&self.task_sizes, c as usize) as i64).collect();
        let task_ids = Tensor::from_slice(&tasks).to_device(images.device());
        let n_tasks = tasks.iter().max().map_or(1, |&m| m as usize + 1);
        let pools = Tensor::stack(&self.prompts[..n_tasks], 0).index_select(0, &task_ids);
        let keys = (!self.keys.is_empty()).then(|| Tensor::stack(&self.keys[..n_tasks], 0).index_select(0, &task_ids));
        let (e, _) = self.choose(&pools, keys.as_ref(), &q);
        let feats = self.prompted(images, &e)?;
        let logits = self.head.forward(&feats).narrow(1, 0, seen as i64);
        Ok(Prediction::new(logits, Some(task_ids)).with_features(&feats))
    }
}

/// Without keys every pool holds one prompt: take it; no matching term.
fn unkeyed(pools: &Tensor) -> (Tensor, Tensor) {
    (pools.select(1, 0), Tensor::zeros([], (Kind::Float, pools.device())))
}

impl std::fmt::Debug for HidePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}
