//! VPT-NSP² (Lu et al., "Visual prompt tuning in null space for continual
//! learning", NeurIPS 2024; official `zugexiaodui/VPTinNSforCL`
//! `train_eval.py`, `utils/vit_builder.py`, `utils/mod_adam.py`): one shared
//! set of prompt tokens per layer, trained in every task, with a linear head
//! per task. From the second task on, every Adam update of a layer's prompts
//! is projected as `P₂ · Δ · P₁`, where P₁ (`[D, D]`) and P₂ (`[L, L]`) lean
//! towards the null spaces of the layer's accumulated image-query and
//! prompt-attention statistics, and a loss holds each prompt token's mean and
//! standard deviation at the previous task's (LayerNorm invariance).
//! Prediction concatenates every seen task's head.
//!
//! Composed of [`FrozenAttention`] (prompts as prefixes through the frozen
//! `norm1`/`qkv`, and the statistics), [`null_projection`] and the
//! optimizer's [`UpdateProjection`].

use std::rc::Rc;

use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, linear, seeded_uniform, zeros_f64_no_train, LinearInit};
use crate::method::{tasks_seen, Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::null_space::{null_projection, FrozenAttention};
use crate::{Encoder, LearnerError, OptimConfig, Result, Stage, UpdateProjection};

crate::method_params! {
    pub struct Params {
        /// Prompt tokens per layer (official `prompt_len`).
        pub length: i64 = 4,
        /// Prompted blocks; empty: every block (official `prompt_start_block` 0 … `prompt_end_block` 11).
        pub layers: Vec<usize> = Vec::new(),
        /// η of `P = η·B + (1 − η)·I` for both matrices (official `null_eta1/2`: 0.97 on CIFAR-100, 0.94 on ImageNet-R).
        pub eta: f64 = 0.97,
        /// The CE reads logits / temperature (official: 28 on CIFAR-100, 30 on ImageNet-R).
        pub temperature: f64 = 28.0,
        /// Weight of the LayerNorm-invariance loss from the second task (official `ln_loss_lam`, fixed at 1 with the null space).
        pub ln_loss: f64 = 1.0,
        /// Project the prompts' updates (official `use_null_space`); false with `ln_loss = 0` is the official VPT-deep baseline.
        pub null_space: bool = true,
    }
}

impl Params {
    pub fn validate(&self) -> Result<()> {
        if self.length < 1 || !(0.0..=1.0).contains(&self.eta) || !(self.temperature > 0.0) || !(self.ln_loss >= 0.0) {
            return Err(LearnerError::Invalid(format!(
                "vpt-nsp: length must be at least 1, eta in [0, 1], temperature > 0 and ln_loss >= 0; got {}, {}, {}, {}",
                self.length, self.eta, self.temperature, self.ln_loss
            )));
        }
        if self.null_space && self.length < 3 {
            return Err(LearnerError::Invalid(format!(
                "vpt-nsp: the null space of the prompt-attention matrix needs length >= 3, got {}",
                self.length
            )));
        }
        Ok(())
    }
}

struct Layer {
    block: usize,
    attn: FrozenAttention,
    /// `prompt.{block}`: `[L, D]`.
    prompt: Tensor,
    /// The prompts at the end of the previous task (the LayerNorm loss's target).
    previous: Tensor,
    /// Σ over tasks and batches of the per-batch statistics.
    m1: Tensor,
    m2: Tensor,
    /// `P₁ [D, D]`, `P₂ [L, L]`.
    right: Tensor,
    left: Tensor,
}

pub struct VptNsp {
    vs: nn::VarStore,
    layers: Vec<Layer>,
    heads: Vec<nn::Linear>,
    task_sizes: Vec<usize>,
    params: Params,
    backbone: Rc<Backbone>,
}

impl VptNsp {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        params.validate()?;
        let depth = ctx.backbone.depth();
        let blocks: Vec<usize> = if params.layers.is_empty() { (0..depth).collect() } else { params.layers.clone() };
        if let Some(&bad) = blocks.iter().find(|&&b| b >= depth) {
            return Err(LearnerError::Invalid(format!("vpt-nsp: layer {bad} is beyond the backbone's {depth} blocks")));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let (l, d) = (params.length, ctx.token_dim());
        let mut layers = Vec::new();
        for &b in &blocks {
            let p = &root / "prompt";
            // uniform(−1, 1), the official `--prompt_init uniform`.
            let prompt = super::common::var_from(&p, &b.to_string(), seeded_uniform(ctx.seed, &[0x75B, b as u64], &[l, d], -1.0, 1.0));
            let s = &root / "null" / b;
            layers.push(Layer {
                block: b,
                attn: FrozenAttention::of(&ctx.backbone, b)?,
                prompt,
                previous: s.zeros_no_train("previous", &[l, d]),
                m1: zeros_f64_no_train(&s, "m1", &[d, d]),
                m2: zeros_f64_no_train(&s, "m2", &[l, l]),
                right: zeros_f64_no_train(&s, "right", &[d, d]),
                left: zeros_f64_no_train(&s, "left", &[l, l]),
            });
        }
        // Task 0's head is timm's (trunc-normal .02); later ones `nn.Linear`'s own.
        let heads = (ctx.task_sizes.iter().enumerate())
            .map(|(t, &n)| {
                let init = if t == 0 { LinearInit::Timm } else { LinearInit::Torch };
                linear(&(&root / "head" / t), ctx.feature_dim(), n as i64, ctx.seed, &[0x4EAD, t as u64], init)
            })
            .collect();
        Ok(Self { vs, layers, heads, task_sizes: ctx.task_sizes.clone(), params, backbone: ctx.backbone.clone() })
    }

    fn prefixes(&self) -> Vec<(usize, Tensor, Tensor)> {
        self.layers
            .iter()
            .map(|ly| {
                let (k, v) = ly.attn.prefix(&ly.prompt);
                (ly.block, k, v)
            })
            .collect()
    }

    fn forward(&self, x: &Inputs, block_inputs: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let (Encoder::Vit(vit), Inputs::Images(images)) = (&self.backbone.encoder, x) else {
            return Err(LearnerError::Invalid("vpt-nsp reads images through a ViT".into()));
        };
        let prefixes = self.prefixes();
        let mut prompts = promptcl_model::Prompts::none();
        for (b, k, v) in &prefixes {
            prompts = prompts.with_prefix(*b, k, v);
        }
        let opts = promptcl_model::ForwardOptions { return_block_inputs: block_inputs, ..Default::default() };
        let out = vit.forward_with(images, &prompts, &opts)?;
        Ok((out.cls, out.block_inputs))
    }

    /// Every head's logits, `[B, all classes]`.
    fn logits(&self, feats: &Tensor) -> Tensor {
        Tensor::cat(&self.heads.iter().map(|h| h.forward(feats)).collect::<Vec<_>>(), 1)
    }

    /// The official LayerNorm loss: per layer, the mean over tokens of
    /// |mean − mean₀| + |std − std₀| (population std over the width).
    fn ln_loss(&self) -> Tensor {
        let stats = |p: &Tensor| (p.mean_dim(1, false, Kind::Float), p.std_correction(1, 0, false));
        let terms: Vec<Tensor> = self
            .layers
            .iter()
            .map(|ly| {
                let ((m, s), (m0, s0)) = (stats(&ly.prompt), stats(&ly.previous));
                (m - m0).abs().mean(Kind::Float) + (s - s0).abs().mean(Kind::Float)
            })
            .collect();
        Tensor::stack(&terms, 0).sum(Kind::Float)
    }
}

impl ContinualMethod for VptNsp {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The shared prompts and the task's head.
    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        vec![Stage::from_run("train", optim).only(&[("prompt", 1.0), (&format!("head.{}", task.task), 1.0)])]
    }

    fn update_projections(&self, task: &TaskInfo) -> Vec<UpdateProjection> {
        if !self.params.null_space || task.task == 0 {
            return Vec::new();
        }
        let f = |t: &Tensor| t.to_kind(Kind::Float);
        self.layers.iter().map(|ly| UpdateProjection { name: format!("prompt.{}", ly.block), left: f(&ly.left), right: f(&ly.right) }).collect()
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let (feats, _) = self.forward(x, false)?;
        let mut step = ce_step(&(self.logits(&feats) / self.params.temperature), labels, task.classes.clone());
        if task.task > 0 && self.params.ln_loss > 0.0 {
            step.loss = step.loss + self.ln_loss() * self.params.ln_loss;
        }
        Ok(step)
    }

    /// Adds the task's statistics (its training data, test transform, the
    /// prompts just learned) and rebuilds the projections; keeps the prompts
    /// for the next task's LayerNorm loss. The last task needs neither.
    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        tch::no_grad(|| {
            for ly in &mut self.layers {
                ly.previous.copy_(&ly.prompt);
            }
        });
        if !self.params.null_space || task.task + 1 == task.num_tasks {
            return Ok(());
        }
        let mut sums: Vec<(Tensor, Tensor)> = self.layers.iter().map(|ly| (ly.m1.zeros_like(), ly.m2.zeros_like())).collect();
        data.for_each(&mut |x, _| {
            let (_, inputs) = tch::no_grad(|| self.forward(x, true))?;
            for (ly, (s1, s2)) in self.layers.iter().zip(&mut sums) {
                let (m1, m2) = tch::no_grad(|| ly.attn.feature_matrices(&inputs[ly.block], &ly.prompt));
                *s1 += m1.to_kind(Kind::Double);
                *s2 += m2.to_kind(Kind::Double);
            }
            Ok(())
        })?;
        let eta = self.params.eta;
        tch::no_grad(|| {
            for (ly, (s1, s2)) in self.layers.iter_mut().zip(sums) {
                let _ = ly.m1.g_add_(&s1);
                let _ = ly.m2.g_add_(&s2);
                ly.right.copy_(&null_projection(&ly.m1, eta));
                ly.left.copy_(&null_projection(&ly.m2, eta));
            }
        });
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let (feats, _) = self.forward(x, false)?;
        let t = tasks_seen(&self.task_sizes, seen);
        let logits = Tensor::cat(&self.heads[..t].iter().map(|h| h.forward(&feats)).collect::<Vec<_>>(), 1);
        Ok(Prediction::new(logits.narrow(1, 0, seen as i64), None))
    }
}
