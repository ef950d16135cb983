//! The losses of HierC ("Leveraging hierarchical taxonomies in prompt-based
//! continual learning"; tranquyenbk173/HierC,
//! `engines/hide_promtp_wtp_and_tap_engine.py`), written as the official
//! functions compute them:
//!
//! - [`supcon`] = `supervised_contrastive_loss`: features L2-normalised,
//!   similarities `f·fᵀ / T` multiplied elementwise by `Γ[yᵢ, yⱼ]` when given,
//!   row maximum subtracted, log-softmax over *all* columns (the anchor
//!   itself included), then the mean of `−log p` over positive pairs
//!   (same label, not self); 0 when there is no positive pair.
//! - [`subgroup_supcon`] = `subsup_loss`: that loss inside each leaf group of
//!   the label tree (with Γ when the OT switch is on), summed over groups
//!   with more than one sample and divided by the number of groups.
//! - [`cluster_loss`]: the batch's features joined with pseudo-features of
//!   seen classes, then `reg_glob · supcon(all, Γ = none) + reg_sub · subgroup_supcon`.

use tch::{Kind, Tensor};

use crate::ot::affinity;

/// # Shapes
/// - `features`: `[N, D]`; `labels`: `[N]` int64 class ids; `gamma`: `[C, C]`
pub fn supcon(features: &Tensor, labels: &Tensor, temperature: f64, gamma: Option<&Tensor>) -> Tensor {
    let f = features / features.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    let mut sim = f.matmul(&f.tr()) / temperature;
    if let Some(g) = gamma {
        let w = g.to_device(f.device()).to_kind(f.kind()).index_select(0, labels).index_select(1, labels).detach();
        sim = sim * w;
    }
    let n = labels.size()[0];
    let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
    let not_self = Tensor::eye(n, (Kind::Bool, f.device())).logical_not();
    let positive = same.logical_and(&not_self);
    let count = positive.sum(Kind::Int64).int64_value(&[]);
    if count == 0 {
        return Tensor::zeros([], (f.kind(), f.device()));
    }
    let logits = &sim - sim.amax([1], true).detach();
    let log_prob = logits.log_softmax(1, f.kind());
    -log_prob.masked_select(&positive).sum(f.kind()) / count as f64
}

/// # Shapes
/// - `features`: `[N, D]`; `labels`: `[N]`; `groups`: class ids per leaf group
pub fn subgroup_supcon(features: &Tensor, labels: &Tensor, groups: &[Vec<usize>], temperature: f64, gamma: Option<&Tensor>) -> Tensor {
    let mut total = Tensor::zeros([], (features.kind(), features.device()));
    if groups.is_empty() {
        return total;
    }
    for group in groups {
        let ids = Tensor::from_slice(&group.iter().map(|&c| c as i64).collect::<Vec<_>>()).to_device(labels.device());
        let member = labels.unsqueeze(1).eq_tensor(&ids.unsqueeze(0)).any_dim(1, false);
        let idx = member.nonzero().squeeze_dim(1);
        if idx.size()[0] > 1 {
            total = total + supcon(&features.index_select(0, &idx), &labels.index_select(0, &idx), temperature, gamma);
        }
    }
    total / groups.len() as f64
}

/// HierC's regulariser weights. `reg_glob` and `reg_sub` default to the
/// Split CIFAR-100 script (`training_scripts/train_cifar100_vit.sh`:
/// `--reg_glob 0.05 --reg_sub 0.1`; the ImageNet-R script uses 0.0 and 0.4).
/// `delta` and `ot` come from HierC's config file, not checked yet: set them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HiercParams {
    pub reg_glob: f64,
    pub reg_sub: f64,
    pub temperature: f64,
    /// Γ = exp(−W/δ).
    pub delta: f64,
    /// Weight the subgroup loss by Γ (`--OT_trick`).
    pub ot: bool,
}

impl Default for HiercParams {
    fn default() -> Self {
        Self { reg_glob: 0.05, reg_sub: 0.1, temperature: 0.1, delta: 1.0, ot: true }
    }
}

/// `reg_glob · SupCon(all) + reg_sub · mean over groups of SupCon(group, Γ)`,
/// over the batch joined with pseudo-features `old` of seen classes.
///
/// # Shapes
/// - `features`, `old.0`: `[N, D]`, `[M, D]`; labels `[N]`, `[M]`; `w`: `[C, C]` class OT distances
pub fn cluster_loss(
    features: &Tensor,
    labels: &Tensor,
    old: Option<(&Tensor, &Tensor)>,
    groups: &[Vec<usize>],
    w: Option<&Tensor>,
    p: &HiercParams,
) -> Tensor {
    let (f, y) = match old {
        Some((x, l)) => (Tensor::cat(&[features, &x.to_kind(features.kind())], 0), Tensor::cat(&[labels, l], 0)),
        None => (features.shallow_clone(), labels.shallow_clone()),
    };
    let gamma = if p.ot { w.map(|w| affinity(w, p.delta)) } else { None };
    supcon(&f, &y, p.temperature, None) * p.reg_glob + subgroup_supcon(&f, &y, groups, p.temperature, gamma.as_ref()) * p.reg_sub
}
