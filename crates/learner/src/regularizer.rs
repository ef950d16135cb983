//! Regularisers any method can add from its config
//! (`[method] regularizers = [{ kind = "hierarchical-ot", … }]`): a wrapper
//! runs the method unchanged and adds each regulariser's loss on the
//! features the method's head reads (`Step::features`), consolidates after
//! each task, and may re-score predictions.
//!
//! **hierarchical-ot** is HierC ("Leveraging hierarchical taxonomies in
//! prompt-based continual learning"; tranquyenbk173/HierC,
//! `engines/hide_promtp_wtp_and_tap_engine.py`):
//! - after each task, Gaussian statistics of the *original* (frozen,
//!   un-prompted) model's features per new class (`_compute_mean_org`), and
//!   `W[i][j]` = exact OT (`ot.emd2`, uniform weights, squared Euclidean
//!   cost) between `ot_samples` samples per centroid of every pair of seen
//!   classes that involves a new class (`update_WSM` / `wsd_gmm_s`);
//!   Γ = exp(−W/δ);
//! - statistics of the method's own features per class (from the last epoch
//!   of the task's last stage that produced features, HierC's `_compute_mean`
//!   with the task's prompt), whose samples stand in for earlier classes;
//! - loss: `reg_glob · SupCon(all) + reg_sub · mean over leaf groups of
//!   SupCon(group, Γ)` on the batch's features joined with `old_samples`
//!   pseudo-features of earlier classes (`hierc::cluster_loss`). The label
//!   tree grows with the stream: only seen classes form the groups;
//! - optional evaluation variant (`mahalanobis_eval`): per leaf group g,
//!   `E_g = exp(η0 · max logit_g − η · M[ĉ_g, g] · d_g)` with d the
//!   Mahalanobis distances to the classes' feature Gaussians (HierC's
//!   `MHD_cls`: diag(var) + 1e-6 per centroid, the nearest centroid),
//!   `M = exp(−W_eval/δ₂)` with W_eval's diagonal zeroed (W_eval from the
//!   method's feature statistics), logits of g scaled by E_g / Σ E (HierC's
//!   `process_MHD`).
//!
//! Differences from the official code, on purpose: the official
//! `train_task_adaptive_prediction` assigns `old_data` without `global`, so
//! its cluster loss never sees pseudo-features (the paper's method does; so
//! does promptcl's); Γ's common factor is removed before normalising E (the
//! ratio is unchanged, overflow is not possible).

use std::ops::Range;
use std::rc::Rc;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::hierc::{cluster_loss, HiercParams};
use crate::method::{Backbone, BatchSource, ContinualMethod, DataScope, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::ot::{pair_distances, relative_sinkhorn, OtSolver};
use crate::parts::alignment::fit_classes;
use crate::stats::{ClassStats, StatsKind};
use crate::{LearnerError, OptimConfig, Result, Stage};

/// One entry of `regularizers = [...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RegularizerConfig {
    HierarchicalOt(HierOtConfig),
}

/// Defaults: HierC's Split CIFAR-100 script (`reg_glob 0.05`, `reg_sub 0.1`,
/// SupCon temperature 0.1, multi-centroid statistics with 10 centroids,
/// `batch·5` samples per centroid) and its configs' `--eta 0.03 --eta_0 0.07`.
/// HierC's configs set `--delta 100` for features of its ViT-B/16; δ depends
/// on the feature scale, so the default here is scale-free instead (the
/// median of W's new entries, `delta = 0`) and the paper configs set 100.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HierOtConfig {
    pub reg_glob: f64,
    pub reg_sub: f64,
    pub temperature: f64,
    /// Γ = exp(−W/δ); 0 = the median of the off-diagonal W.
    pub delta: f64,
    /// Weight the subgroup SupCon by Γ (`--OT_trick`).
    pub ot: bool,
    pub statistics: StatsKind,
    pub n_centroids: usize,
    /// Samples per centroid for OT; 0 = 5 × batch size.
    pub ot_samples: i64,
    /// Earlier-class pseudo-features joined to each batch; 0 = 5 × batch size.
    pub old_samples: i64,
    /// `false` reproduces the official engine, whose `old_data` assignment (no
    /// `global`) never reaches the cluster loss, so it sees the batch alone.
    pub old_data_reaches_loss: bool,
    /// `exact` (Hungarian = `ot.emd2` for equal uniform sets; O(n³) per pair,
    /// for small sample sets) or `sinkhorn` (all pairs batched, on the GPU when there is one).
    pub solver: SolverChoice,
    /// Entropic regularisation as a fraction of the mean squared distance between samples.
    pub sinkhorn_reg: f64,
    pub sinkhorn_iters: usize,
    pub mahalanobis_eval: bool,
    pub eta: f64,
    pub eta0: f64,
    /// The evaluation weights `1/exp(W_eval/delta2)` (W_eval's diagonal zeroed), `--delta2`.
    pub delta2: f64,
    /// W_ii as HierC's `update_WSM` computes it: the OT distance between two
    /// independent draws of class i, so W_ii > 0 and Γ_ii < 1. `false`: W_ii = 0.
    pub self_distance: bool,
}

impl Default for HierOtConfig {
    fn default() -> Self {
        Self {
            reg_glob: 0.05,
            reg_sub: 0.1,
            temperature: 0.1,
            delta: 0.0,
            ot: true,
            statistics: StatsKind::MultiCentroid,
            n_centroids: 10,
            ot_samples: 0,
            old_samples: 0,
            solver: SolverChoice::Exact,
            sinkhorn_reg: 0.05,
            sinkhorn_iters: 200,
            mahalanobis_eval: false,
            eta: 0.03,
            eta0: 0.07,
            delta2: 15.0,
            old_data_reaches_loss: true,
            self_distance: true,
        }
    }
}

/// `solver` of the hierarchical-OT regulariser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverChoice {
    Exact,
    Sinkhorn,
}

impl HierOtConfig {
    fn solver(&self) -> Result<OtSolver> {
        match self.solver {
            SolverChoice::Exact => Ok(OtSolver::Exact),
            SolverChoice::Sinkhorn if self.sinkhorn_reg > 0.0 && self.sinkhorn_iters > 0 => {
                Ok(OtSolver::Sinkhorn { reg: self.sinkhorn_reg, iters: self.sinkhorn_iters })
            }
            SolverChoice::Sinkhorn => Err(LearnerError::Params {
                method: "hierarchical-ot".into(),
                reason: "solver = \"sinkhorn\" needs sinkhorn_reg > 0 and sinkhorn_iters > 0".into(),
            }),
        }
    }
}

/// Reads `regularizers` out of a method's parameter table (the rest is the method's).
pub fn split_params(params: &toml::Table) -> Result<(toml::Table, Vec<RegularizerConfig>)> {
    let mut rest = params.clone();
    let Some(value) = rest.remove("regularizers") else { return Ok((rest, Vec::new())) };
    let configs: Vec<RegularizerConfig> = value
        .try_into()
        .map_err(|e: toml::de::Error| LearnerError::Params { method: "regularizers".into(), reason: crate::did_you_mean(&e.to_string()) })?;
    for c in &configs {
        let RegularizerConfig::HierarchicalOt(h) = c;
        h.solver()?;
    }
    Ok((rest, configs))
}

/// Something that adds a loss on a method's features.
pub trait Regularizer {
    fn loss(&mut self, features: &Tensor, labels: &Tensor, task: &TaskInfo) -> Result<Tensor>;
    fn begin_epoch(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }
    fn end_epoch(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }
    /// Before the task trains, over its data under the test transform.
    fn prepare_task(&mut self, _task: &TaskInfo, _data: &mut dyn BatchSource) -> Result<()> {
        Ok(())
    }
    /// After the task, over its data under the test transform; `features`
    /// are the trained method's [`ContinualMethod::task_features`] of that
    /// data with its labels, where the method gives them.
    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource, features: Option<(&Tensor, &Tensor)>) -> Result<()>;
    fn rescore(&self, pred: Prediction, _seen: usize) -> Result<Prediction> {
        Ok(pred)
    }
}

/// A method with regularisers. Their state lives in the method's `VarStore`
/// (under `reg<i>.`), so checkpoints and resumes carry it.
pub struct Regularized {
    inner: Box<dyn ContinualMethod>,
    regs: Vec<Box<dyn Regularizer>>,
    name: String,
}

pub fn wrap(name: &str, inner: Box<dyn ContinualMethod>, ctx: &MethodContext, configs: &[RegularizerConfig]) -> Result<Box<dyn ContinualMethod>> {
    if configs.is_empty() {
        return Ok(inner);
    }
    let mut regs: Vec<Box<dyn Regularizer>> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let RegularizerConfig::HierarchicalOt(cfg) = c;
        let p = inner.vars().root() / format!("reg{i}");
        regs.push(Box::new(HierarchicalOt::new(&p, ctx, cfg.clone())?));
    }
    Ok(Box::new(Regularized { inner, regs, name: name.into() }))
}

impl ContinualMethod for Regularized {
    fn vars(&self) -> &tch::nn::VarStore {
        self.inner.vars()
    }

    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        self.inner.stages(task, optim)
    }

    fn data_scope(&self) -> DataScope {
        self.inner.data_scope()
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        self.inner.begin_task(task)
    }

    fn prepare_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        self.inner.prepare_task(task, data)?;
        self.regs.iter_mut().try_for_each(|r| r.prepare_task(task, data))
    }

    fn begin_epoch(&mut self, task: &TaskInfo) -> Result<()> {
        self.inner.begin_epoch(task)?;
        self.regs.iter_mut().try_for_each(|r| r.begin_epoch(task))
    }

    fn generate(&mut self, task: &TaskInfo) -> Result<Vec<(Tensor, Tensor)>> {
        self.inner.generate(task)
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let mut step = self.inner.train_step(x, labels, task)?;
        let Some(features) = step.features.as_ref().map(Tensor::shallow_clone) else {
            // Stages without encoder features (TII, alignment on pseudo-features).
            return Ok(step);
        };
        for r in &mut self.regs {
            step.loss = step.loss + r.loss(&features, labels, task)?;
        }
        Ok(step)
    }

    fn end_epoch(&mut self, task: &TaskInfo) -> Result<()> {
        self.inner.end_epoch(task)?;
        self.regs.iter_mut().try_for_each(|r| r.end_epoch(task))
    }

    fn end_stage(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        self.inner.end_stage(task, data)
    }

    fn end_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        self.inner.end_task(task, data)?;
        let inner = &self.inner;
        let (mut fs, mut ys) = (Vec::new(), Vec::new());
        data.for_each(&mut |x, y| {
            if let Some(f) = tch::no_grad(|| inner.task_features(x, task))? {
                fs.push(f);
                ys.push(y.shallow_clone());
            }
            Ok(())
        })?;
        let features = (!fs.is_empty()).then(|| (Tensor::cat(&fs, 0), Tensor::cat(&ys, 0)));
        for r in &mut self.regs {
            r.end_task(task, data, features.as_ref().map(|(f, y)| (f, y)))?;
        }
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let mut pred = self.inner.predict(x, seen)?;
        for r in &self.regs {
            pred = r.rescore(pred, seen)?;
        }
        Ok(pred)
    }
}

impl std::fmt::Debug for Regularized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} + {} regulariser(s)", self.name, self.regs.len())
    }
}

pub struct HierarchicalOt {
    cfg: HierOtConfig,
    /// Leaf group of each incremental label.
    groups: Vec<usize>,
    backbone: Rc<Backbone>,
    org_stats: ClassStats,
    feat_stats: ClassStats,
    /// `[C, C]` OT distances in the original model's space, and (for the
    /// evaluation variant) in the method's feature space.
    w: Tensor,
    w_eval: Tensor,
    delta: Tensor,
    batch: i64,
    seed: u64,
    /// Features of the current epoch (transient: cleared at each epoch's
    /// start; turned into `feat_stats` at a stage's last epoch).
    buffer: Vec<(Tensor, Tensor)>,
}

impl HierarchicalOt {
    pub fn new(p: &tch::nn::Path, ctx: &MethodContext, cfg: HierOtConfig) -> Result<Self> {
        let groups = ctx.groups.clone().ok_or_else(|| LearnerError::Params {
            method: "hierarchical-ot".into(),
            reason: "the dataset has no label tree (CIFAR-100 has one built in; give others `hierarchy = <tree.json>`)".into(),
        })?;
        cfg.solver()?;
        if !(cfg.delta2 > 0.0) {
            return Err(LearnerError::Params { method: "hierarchical-ot".into(), reason: format!("delta2 = {} must be positive", cfg.delta2) });
        }
        let c = ctx.num_classes as i64;
        let k = cfg.n_centroids;
        Ok(Self {
            org_stats: ClassStats::new(&(p / "org_stats"), cfg.statistics, ctx.num_classes, ctx.feature_dim(), k),
            feat_stats: ClassStats::new(&(p / "feat_stats"), cfg.statistics, ctx.num_classes, ctx.feature_dim(), k),
            w: p.zeros_no_train("ot_distance", &[c, c]),
            w_eval: p.zeros_no_train("ot_distance_eval", &[c, c]),
            delta: p.zeros_no_train("delta", &[1]),
            groups,
            backbone: ctx.backbone.clone(),
            batch: ctx.optim.batch_size as i64,
            seed: ctx.seed,
            buffer: Vec::new(),
            cfg,
        })
    }

    /// The leaf groups among classes `0..seen` (the tree as it stands).
    pub fn seen_groups(&self, seen: usize) -> Vec<Vec<usize>> {
        let n = self.groups.iter().copied().max().map_or(0, |m| m + 1);
        let mut g = vec![Vec::new(); n];
        for c in 0..seen {
            g[self.groups[c]].push(c);
        }
        g.into_iter().filter(|g| !g.is_empty()).collect()
    }

    /// A sample count from the config, where 0 means HierC's `batch · 5`.
    fn or_five_batches(&self, n: i64) -> i64 {
        if n > 0 {
            n
        } else {
            5 * self.batch
        }
    }

    /// Fills `w` for every pair of seen classes that involves a class of `new`.
    fn update_distances(&self, stats: &ClassStats, w: &Tensor, new: Range<usize>) -> Result<()> {
        let n = self.or_five_batches(self.cfg.ot_samples);
        let sets: Vec<Tensor> = (0..new.end).map(|c| stats.sample_per_component(c, n)).collect();
        let m = sets.iter().map(|s| s.size()[0]).min().unwrap_or(0);
        if m == 0 {
            return Err(LearnerError::Invalid("hierarchical-ot: a class has no usable statistics to sample".into()));
        }
        let mut samples = Tensor::stack(&sets.iter().map(|s| s.narrow(0, 0, m)).collect::<Vec<_>>(), 0);
        let mut pairs: Vec<(i64, i64)> =
            (0..new.end as i64).flat_map(|i| (i + 1..new.end as i64).map(move |j| (i, j))).filter(|&(_, j)| j >= new.start as i64).collect();
        let solver = match self.cfg.solver()? {
            // `sinkhorn_reg` is relative to the typical squared distance between samples.
            OtSolver::Sinkhorn { reg, iters } => relative_sinkhorn(&samples, reg, iters),
            s => s,
        };
        if self.cfg.self_distance {
            // A second draw of each new class, stacked after the first draws: pair (c, end + k).
            let again: Vec<Tensor> = new.clone().map(|c| stats.sample_per_component(c, n).narrow(0, 0, m)).collect();
            samples = Tensor::cat(&[samples, Tensor::stack(&again, 0)], 0);
            pairs.extend(new.clone().enumerate().map(|(k, c)| (c as i64, (new.end + k) as i64)));
        }
        let values = pair_distances(&samples, &pairs, solver)?;
        tch::no_grad(|| {
            for (&(i, j), v) in pairs.iter().zip(values) {
                let j = if j >= new.end as i64 { i } else { j };
                let _ = w.get(i).get(j).fill_(v);
                let _ = w.get(j).get(i).fill_(v);
            }
        });
        Ok(())
    }

    /// The loss weights, with δ from the config or (0) the stored median of W.
    fn hierc_params(&self) -> HiercParams {
        let c = &self.cfg;
        let delta = if c.delta > 0.0 { c.delta } else { self.delta.double_value(&[0]).max(1e-12) };
        HiercParams { reg_glob: c.reg_glob, reg_sub: c.reg_sub, temperature: c.temperature, delta, ot: c.ot }
    }
}

impl Regularizer for HierarchicalOt {
    fn loss(&mut self, features: &Tensor, labels: &Tensor, task: &TaskInfo) -> Result<Tensor> {
        let d = self.feat_stats.means(1).size()[1];
        if features.size()[1] != d {
            return Err(LearnerError::Invalid(format!(
                "hierarchical-ot: the method's features are {} wide, the encoder's {d} (use the head input that reads the encoder feature)",
                features.size()[1]
            )));
        }
        self.buffer.push((features.detach(), labels.shallow_clone()));
        let earlier = task.classes.start;
        let old = (earlier > 0 && self.cfg.old_data_reaches_loss).then(|| {
            let want = self.or_five_batches(self.cfg.old_samples);
            let per_class = (want / earlier as i64).max(1);
            let (x, y) = self.feat_stats.sample_classes(0..earlier, per_class);
            let take = want.min(x.size()[0]);
            let idx = Tensor::randperm(x.size()[0], (Kind::Int64, x.device())).narrow(0, 0, take);
            (x.index_select(0, &idx), y.index_select(0, &idx))
        });
        let groups = self.seen_groups(task.seen.end);
        Ok(cluster_loss(features, labels, old.as_ref().map(|(x, y)| (x, y)), &groups, Some(&self.w), &self.hierc_params()))
    }

    fn begin_epoch(&mut self, _task: &TaskInfo) -> Result<()> {
        self.buffer.clear();
        Ok(())
    }

    /// The last epoch of a stage that produced features fits the feature
    /// statistics (kept in the store, so a resumed run has them); a later
    /// such stage overwrites them.
    fn end_epoch(&mut self, task: &TaskInfo) -> Result<()> {
        if !task.is_last_epoch() || self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let f = Tensor::cat(&buffer.iter().map(|b| b.0.shallow_clone()).collect::<Vec<_>>(), 0);
        let fy = Tensor::cat(&buffer.iter().map(|b| b.1.shallow_clone()).collect::<Vec<_>>(), 0);
        let seed = self.seed;
        fit_classes(&mut self.feat_stats, task.classes.clone(), &f, &fy, |c| seed ^ ((c as u64) << 20) ^ 0x4017 ^ 1)
    }

    /// HierC's `_compute_mean_org` runs before the task trains: the frozen
    /// model's statistics of the task's classes, and W over every seen class
    /// with them, so Γ already weighs the task's own pairs while it trains.
    fn prepare_task(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (q, y) = self.backbone.queries(data)?;
        let seed = self.seed;
        fit_classes(&mut self.org_stats, task.classes.clone(), &q, &y, |c| seed ^ ((c as u64) << 20) ^ 0x4017)?;
        // Samples for OT come from libtorch's generator, which the harness seeds before this hook.
        self.update_distances(&self.org_stats, &self.w, task.classes.clone())?;
        // A scale-free δ: the median OT distance between distinct seen classes.
        let n = task.seen.end as i64;
        let off = self.w.narrow(0, 0, n).narrow(1, 0, n).masked_select(&Tensor::eye(n, (Kind::Bool, self.w.device())).logical_not());
        if off.numel() > 0 {
            let _ = tch::no_grad(|| self.delta.fill_(off.median().double_value(&[])));
        }
        Ok(())
    }

    /// HierC's `_compute_mean`: the statistics behind the cluster loss's
    /// pseudo-features and W_eval are those of the trained model's features
    /// under the test transform; a method that gives none keeps those of its
    /// last training epoch.
    fn end_task(&mut self, task: &TaskInfo, _data: &mut dyn BatchSource, features: Option<(&Tensor, &Tensor)>) -> Result<()> {
        if let Some((f, y)) = features {
            let seed = self.seed;
            fit_classes(&mut self.feat_stats, task.classes.clone(), f, y, |c| seed ^ ((c as u64) << 20) ^ 0x4017 ^ 1)?;
        }
        // The task's classes are new: fitted means fitted in this task.
        if !task.classes.clone().all(|c| self.feat_stats.is_fitted(c)) {
            return Err(LearnerError::Invalid(format!("hierarchical-ot: the method produced no features in any stage of task {}", task.task + 1)));
        }
        if self.cfg.mahalanobis_eval {
            self.update_distances(&self.feat_stats, &self.w_eval, task.classes.clone())?;
        }
        Ok(())
    }

    fn rescore(&self, pred: Prediction, seen: usize) -> Result<Prediction> {
        if !self.cfg.mahalanobis_eval {
            return Ok(pred);
        }
        let Some(feats) = pred.features.as_ref() else {
            return Err(LearnerError::Invalid("hierarchical-ot: mahalanobis_eval needs the method's features at prediction".into()));
        };
        let dist = self.feat_stats.mahalanobis_hierc(feats, seen);
        // hideprompt_trainer.py: W_eval with its diagonal zeroed, W = 1/exp(W_eval/delta2).
        let c = self.w_eval.size()[0];
        let off_diagonal = Tensor::ones([c, c], (Kind::Float, self.w_eval.device())) - Tensor::eye(c, (Kind::Float, self.w_eval.device()));
        let weights = (&self.w_eval * off_diagonal / -self.cfg.delta2).exp();
        let logits = &pred.logits;
        let (b, dev) = (logits.size()[0], logits.device());
        let mut scores = Tensor::full([b, seen as i64], f64::NEG_INFINITY, (Kind::Float, dev));
        let groups: Vec<Tensor> =
            self.seen_groups(seen).iter().map(|g| Tensor::from_slice(&g.iter().map(|&c| c as i64).collect::<Vec<_>>()).to_device(dev)).collect();
        let mut log_e = Vec::new();
        for idx in &groups {
            let (top, arg) = logits.index_select(1, idx).max_dim(1, false);
            let nearest = idx.index_select(0, &arg);
            let map_w = weights.index_select(0, &nearest).index_select(1, idx);
            let d = (map_w * dist.index_select(1, idx)).sum_dim_intlist(1, false, Kind::Float);
            log_e.push(top * self.cfg.eta0 - d * self.cfg.eta);
        }
        let log_e = Tensor::stack(&log_e, 1);
        let e = (&log_e - log_e.amax([1], true)).exp();
        let total = e.sum_dim_intlist(1, true, Kind::Float);
        for (k, idx) in groups.iter().enumerate() {
            let scaled = logits.index_select(1, idx) * e.narrow(1, k as i64, 1) / &total;
            scores = scores.index_copy(1, idx, &scaled);
        }
        Ok(Prediction { logits: scores, ..pred })
    }
}
