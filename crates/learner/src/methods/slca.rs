//! SLCA (Zhang et al., "SLCA: Slow learner with classifier alignment for
//! continual learning on a pre-trained model", ICCV 2023; official
//! `GengDavid/SLCA` `models/slca.py`): the whole backbone trains at a small
//! rate (`bcb_lrscale` × lr) with a new linear head per task (CE over the
//! task's classes, earlier heads frozen), and the pretrained final norm is
//! replaced by a fresh one. From the second task on, every head is then
//! aligned on Gaussian pseudo-features of every seen class (`torch.cov` +
//! 1e-4·I of the new classes, taken after the task's training; older
//! classes' means shrunk by `0.9 + 0.1·(t_c + 1)/(t + 1)`; logit-normalised
//! CE). The aligned heads serve that task's evaluation only: as the official
//! `fc.recall()`, the next task starts from the heads before alignment.

use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, linear, LinearInit};
use crate::method::{collect_features, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::alignment;
use crate::stats::{ClassStats, StatsKind};
use crate::{Encoder, LearnerError, OptimConfig, Result, Stage};

crate::method_params! {
    pub struct Params {
        /// The backbone's learning rate relative to the head's (official `bcb_lrscale`).
        pub bcb_lrscale: f64 = 0.01,
        /// Alignment epochs (official `ca_epochs`).
        pub ca_epochs: usize = 5,
        /// Alignment SGD rate (the official code's `lrate`).
        pub ca_lr: f64 = 0.01,
        pub ca_weight_decay: f64 = 5e-4,
        /// Pseudo-features per class and alignment epoch (official `num_sampled_pcls`).
        pub samples_per_class: i64 = 256,
        /// Logit-norm temperature (official `ca_with_logit_norm`); 0 = plain CE.
        pub logit_norm: f64 = 0.1,
        /// eps of the fresh final LayerNorm (the official `nn.LayerNorm(768)`: 1e-5; the blocks keep theirs).
        pub fresh_norm_eps: f64 = 1e-5,
    }
}

const TRAIN: &str = "train";
const ALIGN: &str = "align";

pub struct Slca {
    vs: nn::VarStore,
    encoder: Encoder,
    heads: Vec<nn::Linear>,
    /// The heads before alignment (official `fc.backup()`).
    backup: Vec<(Tensor, Tensor)>,
    stats: ClassStats,
    /// The task of each class.
    task_of: Vec<usize>,
    task_sizes: Vec<usize>,
    params: Params,
    seed: u64,
}

fn head_name(t: usize) -> String {
    format!("head.{t}")
}

impl Slca {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        if params.samples_per_class < 1 || !(params.logit_norm >= 0.0) || !(params.fresh_norm_eps > 0.0) {
            return Err(LearnerError::Invalid(format!(
                "slca: samples_per_class must be at least 1, logit_norm >= 0 and fresh_norm_eps > 0, got {}, {} and {}",
                params.samples_per_class, params.logit_norm, params.fresh_norm_eps
            )));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let mut encoder = ctx.backbone.trainable_copy(&root / "backbone", &vs);
        if let Encoder::Vit(vit) = &mut encoder {
            vit.set_final_norm_eps(params.fresh_norm_eps);
        }
        // A fresh final LayerNorm, as the official `vit_base_patch16_224_in21k` builder.
        let vars = vs.variables();
        tch::no_grad(|| {
            if let (Some(w), Some(b)) = (vars.get("backbone.norm.weight"), vars.get("backbone.norm.bias")) {
                let _ = w.shallow_clone().fill_(1.0);
                let _ = b.shallow_clone().fill_(0.0);
            }
        });
        let d = ctx.feature_dim();
        let heads: Vec<nn::Linear> = ctx
            .task_sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| linear(&(&root / "head" / t), d, n as i64, ctx.seed, &[0x4EAD, t as u64], LinearInit::Timm))
            .collect();
        let backup = ctx
            .task_sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                let p = &root / "head_backup" / t;
                (p.zeros_no_train("weight", &[n as i64, d]), p.zeros_no_train("bias", &[n as i64]))
            })
            .collect();
        let stats = ClassStats::new(&(&root / "stats"), StatsKind::Covariance, ctx.num_classes, d, 1);
        let task_of = ctx.task_sizes.iter().enumerate().flat_map(|(t, &n)| std::iter::repeat_n(t, n)).collect();
        Ok(Self { vs, encoder, heads, backup, stats, task_of, task_sizes: ctx.task_sizes.clone(), params, seed: ctx.seed })
    }

    /// Every head's logits, `[B, all classes]`.
    fn logits(&self, feats: &Tensor) -> Tensor {
        Tensor::cat(&self.heads.iter().map(|h| h.forward(feats)).collect::<Vec<_>>(), 1)
    }

    /// The official `logit_norm`: the logits of the seen classes divided by
    /// the mean over tasks of each task block's L2 norm, and by the temperature.
    fn normalised(&self, logits: &Tensor, task: usize) -> Tensor {
        let mut start = 0;
        let norms: Vec<Tensor> = self.task_sizes[..=task]
            .iter()
            .map(|&n| {
                let block = logits.narrow(1, start, n as i64);
                start += n as i64;
                block.norm_scalaropt_dim(2, [1], false) + 1e-7
            })
            .collect();
        let norm = Tensor::stack(&norms, 1).mean_dim(1, true, Kind::Float);
        logits / norm / self.params.logit_norm
    }
}

impl ContinualMethod for Slca {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        let own = head_name(task.task);
        let mut stages = vec![Stage::from_run(TRAIN, optim).only(&[("backbone", self.params.bcb_lrscale), (own.as_str(), 1.0)])];
        if task.task > 0 && self.params.ca_epochs > 0 {
            let heads: Vec<String> = (0..=task.task).map(head_name).collect();
            let trains: Vec<(&str, f64)> = heads.iter().map(|h| (h.as_str(), 1.0)).collect();
            stages.push(
                alignment::stage(ALIGN, self.params.ca_epochs, self.params.ca_lr, "head").only(&trains).weight_decay(self.params.ca_weight_decay),
            );
        }
        stages
    }

    /// The official `fc.recall()`: the heads as they were before the last alignment.
    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        if task.task > 0 {
            tch::no_grad(|| {
                for (h, (w, b)) in self.heads.iter_mut().zip(&self.backup).take(task.task) {
                    h.ws.copy_(w);
                    h.bs.as_mut().expect("heads have a bias").copy_(b);
                }
            });
        }
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        match task.stage {
            TRAIN => {
                let feats = self.encoder.forward(x, &promptcl_model::Prompts::none())?.feature;
                Ok(ce_step(&self.logits(&feats), labels, task.classes.clone()).with_features(&feats))
            }
            ALIGN => {
                let logits = self.logits(x.features()?).narrow(1, 0, task.seen.end as i64);
                let logits = if self.params.logit_norm > 0.0 { self.normalised(&logits, task.task) } else { logits };
                Ok(ce_step(&logits, labels, 0..task.seen.end))
            }
            s => Err(LearnerError::Invalid(format!("slca: no stage `{s}`"))),
        }
    }

    /// After training: the new classes' statistics, and the heads' backup.
    fn end_stage(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        if task.stage != TRAIN {
            return Ok(());
        }
        let (f, y) = collect_features(data, &mut |x| Ok(tch::no_grad(|| self.encoder.forward(x, &promptcl_model::Prompts::none()))?.feature))?;
        let seed = self.seed;
        alignment::fit_classes(&mut self.stats, task.classes.clone(), &f, &y, |c| seed ^ ((c as u64) << 16) ^ 5)?;
        tch::no_grad(|| {
            for (h, (w, b)) in self.heads.iter().zip(&mut self.backup) {
                w.copy_(&h.ws);
                b.copy_(h.bs.as_ref().expect("heads have a bias"));
            }
        });
        Ok(())
    }

    /// One alignment epoch: `samples_per_class` per seen class, earlier tasks'
    /// means shrunk, shuffled, in batches of `samples_per_class`.
    fn generate(&mut self, task: &TaskInfo) -> Result<Vec<(Tensor, Tensor)>> {
        let n = self.params.samples_per_class;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let means = self.stats.means(task.seen.end);
        for c in 0..task.seen.end {
            let scale = 0.9 + 0.1 * (self.task_of[c] + 1) as f64 / (task.task + 1) as f64;
            xs.push(self.stats.sample(c, n) + means.get(c as i64) * (scale - 1.0));
            ys.push(Tensor::full([n], c as i64, (Kind::Int64, means.device())));
        }
        let (x, y) = (Tensor::cat(&xs, 0), Tensor::cat(&ys, 0));
        let perm = Tensor::randperm(x.size()[0], (Kind::Int64, x.device()));
        let (x, y) = (x.index_select(0, &perm), y.index_select(0, &perm));
        Ok((0..task.seen.end as i64).map(|s| (x.narrow(0, s * n, n), y.narrow(0, s * n, n))).collect())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let feats = self.encoder.forward(x, &promptcl_model::Prompts::none())?.feature;
        Ok(Prediction::new(self.logits(&feats).narrow(1, 0, seen as i64), None).with_features(&feats))
    }
}
