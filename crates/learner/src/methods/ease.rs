//! EASE (Zhou et al., "Expandable subspace ensemble for pre-trained
//! model-based class-incremental learning", CVPR 2024; official
//! `sun-hailong/CVPR24-Ease` `models/ease.py`, identical in LAMDA-PILOT):
//! each task trains a fresh set of AdaptFormer adapters (a new subspace) with
//! a fresh cosine head over its classes, and the backbone stays frozen. After
//! the task, each of its classes gets a prototype in every subspace so far
//! (the class mean of that subspace's class token). An old class has no data
//! in a newer subspace, so its prototype there is completed from the
//! prototypes of the newer classes, weighted by the softmax of cosine
//! similarities measured in the old class's own subspace. A class's logit is
//! its cosine in its own subspace plus `alpha / t` times its cosines in the
//! others, each subspace normalised on its own.
//!
//! Composed of [`Petl`] (one per task) and [`CosineHead`] (one per task).
//! Prediction runs the backbone once per subspace, as the official code does.

use std::ops::Range;
use std::rc::Rc;

use promptcl_stream::SplitMix64;
use tch::{nn, Kind, Tensor};

use super::common::{ce_step, l2_normalize, CosineHead};
use crate::method::{collect_features, tasks_seen, Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::petl::{Petl, PetlKind, PetlShape};
use crate::{LearnerError, OptimConfig, Result, Stage};

crate::method_params! {
    pub struct Params {
        /// Adapter bottleneck width (official `ffn_num`).
        pub ffn_num: i64 = 64,
        /// Adapter output scale (official `ffn_adapter_scalar`).
        pub adapter_scale: f64 = 0.1,
        /// Dropout after the adapter's ReLU while training (hard-coded 0.1 officially).
        pub adapter_dropout: f64 = 0.1,
        /// Weight of a class's cosines in the other tasks' subspaces, divided by the task index (official `alpha`).
        pub alpha: f64 = 0.1,
        /// Add the adapter-free pretrained class token as a subspace of every class (official `use_init_ptm`).
        pub use_init_ptm: bool = false,
        /// Weight of the pretrained subspace with `use_init_ptm` (official `beta`).
        pub beta: f64 = 0.0,
        /// Re-complete every old class in every newer subspace after each task, with all newer
        /// classes as references (official `recalc_sim = true`, every shipped config); false completes
        /// only the newest subspace, from the current task's classes.
        pub recalc_sim: bool = true,
    }
}

impl Params {
    pub fn validate(&self) -> Result<()> {
        if self.ffn_num < 1 || !(0.0..1.0).contains(&self.adapter_dropout) || !(self.alpha >= 0.0) || !(self.beta >= 0.0) {
            return Err(LearnerError::Invalid(format!(
                "ease: ffn_num must be at least 1, adapter_dropout in [0, 1), alpha and beta >= 0; got {}, {}, {}, {}",
                self.ffn_num, self.adapter_dropout, self.alpha, self.beta
            )));
        }
        Ok(())
    }
}

/// Which subspaces there are and where their prototypes live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// First class of each task, and the number of classes at the end.
    pub starts: Vec<usize>,
    /// Block 0 holds the pretrained feature (`use_init_ptm`).
    pub ptm: bool,
}

impl Layout {
    pub fn new(task_sizes: &[usize], ptm: bool) -> Self {
        let starts = std::iter::once(0)
            .chain(task_sizes.iter().scan(0, |s, &n| {
                *s += n;
                Some(*s)
            }))
            .collect();
        Self { starts, ptm }
    }

    /// The prototype block of task `t`'s subspace.
    pub fn block(&self, t: usize) -> usize {
        t + self.ptm as usize
    }

    /// Blocks in use after task `t`.
    pub fn blocks(&self, t: usize) -> usize {
        self.block(t) + 1
    }

    pub fn classes(&self, t: usize) -> Range<usize> {
        self.starts[t]..self.starts[t + 1]
    }
}

/// The official `solve_sim_reset` (`all`) or `solve_similarity`, after task `t`:
/// old class prototypes `protos [C, blocks, D]` in newer subspaces, in place.
/// Only real prototypes are read (those of a class in its own and older
/// subspaces), so the order of the blocks written does not matter.
pub fn complete_prototypes(protos: &Tensor, layout: &Layout, t: usize, all: bool) {
    let rows = |r: Range<usize>, block: usize| protos.narrow(0, r.start as i64, (r.end - r.start) as i64).select(1, block as i64);
    tch::no_grad(|| {
        for k in 0..t {
            let targets = if all { k + 1..t + 1 } else { t..t + 1 };
            for j in targets {
                // References: every class of tasks j..=t (all), or of task t only.
                let refs = if all { layout.starts[j]..layout.starts[t + 1] } else { layout.classes(t) };
                let (a, b) = (rows(refs.clone(), layout.block(k)), rows(refs, layout.block(j)));
                let a_hat = rows(layout.classes(k), layout.block(k));
                let sim = cosine(&a_hat, &a).softmax(1, Kind::Float);
                rows(layout.classes(k), layout.block(j)).copy_(&sim.matmul(&b));
            }
        }
    });
}

/// `torch.cosine_similarity` of every row of `a` with every row of `b` (eps 1e-8).
fn cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let n = |x: &Tensor| x.norm_scalaropt_dim(2, [1], true);
    a.matmul(&b.tr()) / n(a).matmul(&n(b).tr()).clamp_min(1e-8)
}

/// The official `forward_reweight` after task `t`: `features [B, blocks, D]`
/// against `protos [C, blocks, D]`, `[B, seen]`. A class of task i scores its
/// own block with weight 1, the pretrained block with `beta`, every other
/// task's block with `alpha / t`.
pub fn reweighted_logits(features: &Tensor, protos: &Tensor, layout: &Layout, t: usize, alpha: f64, beta: f64) -> Tensor {
    let seen = layout.starts[t + 1];
    let blocks = layout.blocks(t) as i64;
    let f = l2_normalize(features, 2);
    let p = l2_normalize(&protos.narrow(0, 0, seen as i64).narrow(1, 0, blocks), 2);
    // [blocks, B, seen]
    let cos = f.transpose(0, 1).matmul(&p.permute([1, 2, 0]));
    let mut w = vec![0f32; seen * blocks as usize];
    for i in 0..=t {
        for c in layout.classes(i) {
            for j in 0..blocks as usize {
                w[c * blocks as usize + j] = if j == layout.block(i) {
                    1.0
                } else if layout.ptm && j == 0 {
                    beta as f32
                } else {
                    (alpha / t as f64) as f32
                };
            }
        }
    }
    let w = Tensor::from_slice(&w).view([seen as i64, blocks]).tr().unsqueeze(1).to_device(features.device());
    (cos * w).sum_dim_intlist(&[0i64][..], false, Kind::Float)
}

pub struct Ease {
    vs: nn::VarStore,
    /// One adapter set per task (`subspace.{t}.adapter.*`).
    subspaces: Vec<Petl>,
    /// One cosine head per task (`proxy.{t}.cosine_head.*`), for its training only.
    heads: Vec<CosineHead>,
    /// `[C, blocks, D]`: each class's prototype in each subspace.
    protos: Tensor,
    layout: Layout,
    task_sizes: Vec<usize>,
    params: Params,
    backbone: Rc<Backbone>,
}

fn tag(kind: &str, t: usize) -> String {
    format!("{kind}.{t}")
}

impl Ease {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        params.validate()?;
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let shape = PetlShape { width: params.ffn_num, scale: params.adapter_scale, dropout: params.adapter_dropout, prompt_tokens: 0 };
        let d = ctx.feature_dim();
        let mut subspaces = Vec::new();
        let mut heads = Vec::new();
        for t in 0..ctx.num_tasks {
            // Each task's adapters and head start fresh (official `add_adapter_to_list`, `update_fc`).
            let seed = SplitMix64::derive(ctx.seed, &[0xEA5E, t as u64]).next_u64();
            subspaces.push(Petl::new(&(&root / "subspace" / t), PetlKind::Adapter, shape, &ctx.backbone, seed)?);
            heads.push(CosineHead::new(&(&root / "proxy" / t), d, ctx.num_classes, seed));
        }
        let layout = Layout::new(&ctx.task_sizes, params.use_init_ptm);
        let blocks = layout.blocks(ctx.num_tasks - 1) as i64;
        let protos = root.zeros_no_train("prototypes", &[ctx.num_classes as i64, blocks, d]);
        Ok(Self { vs, subspaces, heads, protos, layout, task_sizes: ctx.task_sizes.clone(), params, backbone: ctx.backbone.clone() })
    }

    /// The class token of every subspace after task `t`, without autograd: `[B, blocks, D]`.
    fn features(&self, x: &Inputs, t: usize) -> Result<Tensor> {
        let mut fs = Vec::with_capacity(self.layout.blocks(t));
        if self.layout.ptm {
            fs.push(tch::no_grad(|| self.backbone.query(x))?);
        }
        for s in &self.subspaces[..=t] {
            fs.push(tch::no_grad(|| s.forward(&self.backbone, x, false))?);
        }
        Ok(Tensor::stack(&fs, 1))
    }
}

impl ContinualMethod for Ease {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The task's own adapters and head; earlier subspaces stay as they are.
    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        vec![Stage::from_run("train", optim).only(&[(&tag("subspace", task.task), 1.0), (&tag("proxy", task.task), 1.0)])]
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let feats = self.subspaces[task.task].forward(&self.backbone, x, true)?;
        // The official head covers the task's classes only: the same CE as masking the others.
        Ok(ce_step(&self.heads[task.task].forward(&feats), labels, task.classes.clone()))
    }

    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let t = task.task;
        let (f, y) = collect_features(data, &mut |x| self.features(x, t))?;
        let classes = self.layout.classes(t);
        let (c, blocks, d) = (self.protos.size()[0], self.layout.blocks(t) as i64, f.size()[2]);
        let sums = Tensor::zeros([c, blocks, d], (Kind::Float, f.device())).index_add(0, &y, &f);
        let counts = Tensor::zeros([c], (Kind::Float, f.device())).index_add(0, &y, &Tensor::ones([y.size()[0]], (Kind::Float, f.device())));
        for cl in classes.clone() {
            if counts.double_value(&[cl as i64]) < 1.0 {
                return Err(LearnerError::Invalid(format!("ease: class {cl} has no training sample in task {t}")));
            }
        }
        let (start, n) = (classes.start as i64, (classes.end - classes.start) as i64);
        let means = sums.narrow(0, start, n) / counts.narrow(0, start, n).view([n, 1, 1]);
        // A new class's prototype in every subspace so far, old ones included.
        tch::no_grad(|| self.protos.narrow(0, start, n).narrow(1, 0, blocks).copy_(&means));
        complete_prototypes(&self.protos, &self.layout, t, self.params.recalc_sim);
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let t = tasks_seen(&self.task_sizes, seen) - 1;
        let logits = reweighted_logits(&self.features(x, t)?, &self.protos, &self.layout, t, self.params.alpha, self.params.beta);
        Ok(Prediction::new(logits.narrow(1, 0, seen as i64), None))
    }
}
