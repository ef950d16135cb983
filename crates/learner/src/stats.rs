//! Per-class Gaussian statistics of features, for generative replay without
//! stored data (HiDe-Prompt's TII refinement and TAP, HierC, WAVE-CRE).
//!
//! As the official `_compute_mean` / `sample_data`:
//! - `covariance`: mean and `torch.cov(X.T) + 1e-4·I` (unbiased); samples `N(μ, Σ)`;
//! - `variance`: mean and the diagonal of that; samples `N(μ, diag)`;
//! - `multi-centroid`: k-means (k clusters) and each cluster's mean and
//!   (biased) variance; samples `N(μ_k, diag(var_k) + 1e-4·I)` per cluster,
//!   `n / k` each, skipping clusters whose variance is all zero.
//!
//! Everything lives in variables of the owning method's `VarStore`
//! (non-trainable), so checkpoints carry the statistics and no feature or
//! image is ever kept.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{LearnerError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StatsKind {
    #[default]
    Covariance,
    Variance,
    MultiCentroid,
}

pub struct ClassStats {
    kind: StatsKind,
    centroids: i64,
    /// `[C, D]`, or `[C, k, D]` for multi-centroid.
    mean: Tensor,
    /// Covariance: Cholesky factor `[C, D, D]`; variance: std `[C, D]`;
    /// multi-centroid: std `[C, k, D]` (0 marks a skipped cluster).
    spread: Tensor,
    /// `[C]`, 1 once a class has statistics.
    fitted: Tensor,
}

const EPS: f64 = 1e-4;

impl ClassStats {
    pub fn new(p: &nn::Path, kind: StatsKind, classes: usize, dim: i64, centroids: usize) -> Self {
        let c = classes as i64;
        let k = centroids as i64;
        let (mean, spread) = match kind {
            StatsKind::Covariance => (p.zeros_no_train("mean", &[c, dim]), p.zeros_no_train("cov_cholesky", &[c, dim, dim])),
            StatsKind::Variance => (p.zeros_no_train("mean", &[c, dim]), p.zeros_no_train("std", &[c, dim])),
            StatsKind::MultiCentroid => (p.zeros_no_train("mean", &[c, k, dim]), p.zeros_no_train("std", &[c, k, dim])),
        };
        Self { kind, centroids: k, mean, spread, fitted: p.zeros_no_train("fitted", &[c]) }
    }

    pub fn is_fitted(&self, class: usize) -> bool {
        self.fitted.double_value(&[class as i64]) > 0.0
    }

    /// Fits class `class` from its features `[N, D]` (N ≥ 2).
    pub fn fit(&mut self, class: usize, feats: &Tensor, seed: u64) -> Result<()> {
        let n = feats.size()[0];
        if n < 2 {
            return Err(LearnerError::Invalid(format!("class {class}: {n} sample(s), need at least 2 for statistics")));
        }
        let c = class as i64;
        let x = feats.to_kind(Kind::Float);
        let d = x.size()[1];
        tch::no_grad(|| -> Result<()> {
            match self.kind {
                StatsKind::Covariance | StatsKind::Variance => {
                    let mu = x.mean_dim(0, false, Kind::Float);
                    let xc = &x - &mu;
                    let cov = xc.tr().matmul(&xc) / (n - 1) as f64 + Tensor::eye(d, (Kind::Float, x.device())) * EPS;
                    self.mean.get(c).copy_(&mu);
                    if self.kind == StatsKind::Covariance {
                        // Cholesky in f64: Σ + 1e-4·I is positive definite, but f32 can round it off.
                        let l = cov.to_kind(Kind::Double).f_linalg_cholesky(false)?;
                        self.spread.get(c).copy_(&l.to_kind(Kind::Float));
                    } else {
                        self.spread.get(c).copy_(&cov.diagonal(0, 0, 1).sqrt());
                    }
                }
                StatsKind::MultiCentroid => {
                    let k = self.centroids.min(n);
                    let assign = kmeans(&x, k, seed);
                    for j in 0..self.centroids {
                        let members = assign.eq(j).nonzero().squeeze_dim(1);
                        if j >= k || members.size()[0] == 0 {
                            let _ = self.spread.get(c).get(j).zero_();
                            continue;
                        }
                        let xs = x.index_select(0, &members);
                        let mu = xs.mean_dim(0, false, Kind::Float);
                        let var = xs.var_dim(0, false, false);
                        self.mean.get(c).get(j).copy_(&mu);
                        // A zero-variance (single-point) cluster is skipped when sampling, as the official code.
                        let std = if var.max().double_value(&[]) == 0.0 { var.zeros_like() } else { (var + EPS).sqrt() };
                        self.spread.get(c).get(j).copy_(&std);
                    }
                }
            }
            let _ = self.fitted.get(c).fill_(1.0);
            Ok(())
        })
    }

    /// `n` samples of class `class` (fewer for multi-centroid: `n / k` per
    /// usable cluster). Draws from libtorch's generator.
    pub fn sample(&self, class: usize, n: i64) -> Tensor {
        let c = class as i64;
        tch::no_grad(|| match self.kind {
            StatsKind::Covariance => {
                let mu = self.mean.get(c);
                let z = Tensor::randn([n, mu.size()[0]], (Kind::Float, mu.device()));
                z.matmul(&self.spread.get(c).tr()) + mu
            }
            StatsKind::Variance => {
                let mu = self.mean.get(c);
                Tensor::randn([n, mu.size()[0]], (Kind::Float, mu.device())) * self.spread.get(c) + mu
            }
            StatsKind::MultiCentroid => {
                let per = n / self.centroids;
                let mut parts = Vec::new();
                for j in 0..self.centroids {
                    let std = self.spread.get(c).get(j);
                    if std.max().double_value(&[]) == 0.0 || per == 0 {
                        continue;
                    }
                    let mu = self.mean.get(c).get(j);
                    parts.push(Tensor::randn([per, mu.size()[0]], (Kind::Float, mu.device())) * std + mu);
                }
                if parts.is_empty() {
                    Tensor::zeros([0, self.mean.size()[2]], (Kind::Float, self.mean.device()))
                } else {
                    Tensor::cat(&parts, 0)
                }
            }
        })
    }

    /// Samples for every class in `classes` with their labels: `([M, D], [M])`.
    pub fn sample_classes(&self, classes: std::ops::Range<usize>, per_class: i64) -> (Tensor, Tensor) {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for c in classes {
            let s = self.sample(c, per_class);
            ys.push(Tensor::full([s.size()[0]], c as i64, (Kind::Int64, s.device())));
            xs.push(s);
        }
        (Tensor::cat(&xs, 0), Tensor::cat(&ys, 0))
    }

    /// The stored means of classes `0..end` (all centroids for multi-centroid): `[M, D]`.
    pub fn means(&self, end: usize) -> Tensor {
        let m = self.mean.narrow(0, 0, end as i64);
        match self.kind {
            StatsKind::MultiCentroid => m.flatten(0, 1),
            _ => m,
        }
    }

    /// Samples for `pairs`-style OT: `per_component` per centroid for
    /// multi-centroid (HierC's `gmm_sample`), else `per_component` in all.
    pub fn sample_per_component(&self, class: usize, per_component: i64) -> Tensor {
        match self.kind {
            StatsKind::MultiCentroid => self.sample(class, per_component * self.centroids),
            _ => self.sample(class, per_component),
        }
    }

    /// Mahalanobis distance of each row of `x` to classes `0..end`: `[B, end]`,
    /// under the stored (sampling) covariances. Multi-centroid takes the
    /// nearest usable centroid under its diagonal covariance.
    pub fn mahalanobis(&self, x: &Tensor, end: usize) -> Tensor {
        self.mahalanobis_with(x, end, 0.0, false)
    }

    /// HierC's evaluation distance (`MHD_cls`, `mahalanobis_distance`):
    /// `(Σ + 1e-6·I)⁻¹` where multi-centroid Σ is the centroid's raw diagonal
    /// variance (without the 1e-4 added for sampling), variance and covariance
    /// the stored ones (which include it). The covariance case keeps its
    /// stored factor: its extra 1e-6 is 1 % of the 1e-4 already there.
    pub fn mahalanobis_hierc(&self, x: &Tensor, end: usize) -> Tensor {
        self.mahalanobis_with(x, end, 1e-6, true)
    }

    fn mahalanobis_with(&self, x: &Tensor, end: usize, ridge: f64, raw_centroid_var: bool) -> Tensor {
        let n = end as i64;
        tch::no_grad(|| match self.kind {
            StatsKind::Covariance => {
                let diff = x.unsqueeze(0) - self.mean.narrow(0, 0, n).unsqueeze(1); // [C, B, D]
                let l = self.spread.narrow(0, 0, n);
                let z = Tensor::linalg_solve_triangular(&l, &diff.transpose(1, 2), false, true, false); // [C, D, B]
                z.square().sum_dim_intlist(1, false, Kind::Float).sqrt().tr()
            }
            StatsKind::Variance => {
                let diff = x.unsqueeze(1) - self.mean.narrow(0, 0, n).unsqueeze(0); // [B, C, D]
                let var = self.spread.narrow(0, 0, n).square() + ridge;
                (diff.square() / var.clamp_min(1e-24).unsqueeze(0)).sum_dim_intlist(2, false, Kind::Float).sqrt()
            }
            StatsKind::MultiCentroid => {
                let (mu, std) = (self.mean.narrow(0, 0, n), self.spread.narrow(0, 0, n)); // [C, k, D]
                let diff = x.unsqueeze(1).unsqueeze(1) - mu.unsqueeze(0); // [B, C, k, D]
                                                                          // The stored std is √(var + EPS) for sampling.
                let var = if raw_centroid_var { (std.square() - EPS).clamp_min(0.0) } else { std.square() } + ridge;
                let d = (diff.square() / var.clamp_min(1e-24).unsqueeze(0)).sum_dim_intlist(3, false, Kind::Float).sqrt();
                let unusable = std.amax([2], false).eq(0.0).unsqueeze(0);
                d.masked_fill(&unusable, f64::INFINITY).amin([2], false)
            }
        })
    }

    /// The full covariance of a class (for tests and Mahalanobis variants).
    pub fn covariance(&self, class: usize) -> Tensor {
        let c = class as i64;
        match self.kind {
            StatsKind::Covariance => {
                let l = self.spread.get(c);
                l.matmul(&l.tr())
            }
            StatsKind::Variance => self.spread.get(c).square().diag_embed(0, -2, -1),
            StatsKind::MultiCentroid => self.spread.get(c).square().mean_dim(0, false, Kind::Float).diag_embed(0, -2, -1),
        }
    }
}

/// Lloyd's k-means with k-means++ seeding from promptcl's RNG; returns the
/// cluster of each row. (The official code uses scikit-learn's KMeans.)
fn kmeans(x: &Tensor, k: i64, seed: u64) -> Tensor {
    let n = x.size()[0];
    let mut rng = promptcl_stream::SplitMix64::new(seed);
    let mut centers = vec![x.get(rng.below(n as u64) as i64)];
    while (centers.len() as i64) < k {
        let c = Tensor::stack(&centers, 0);
        let d2 = sq_dist(x, &c).min_dim(1, false).0;
        let w: Vec<f64> = Vec::try_from(d2.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("f64");
        let total: f64 = w.iter().sum();
        let pick = if total <= 0.0 {
            rng.below(n as u64) as usize
        } else {
            let mut r = rng.unit() * total;
            w.iter()
                .position(|&wi| {
                    r -= wi;
                    r <= 0.0
                })
                .unwrap_or(w.len() - 1)
        };
        centers.push(x.get(pick as i64));
    }
    let mut c = Tensor::stack(&centers, 0);
    let mut assign = sq_dist(x, &c).argmin(1, false);
    for _ in 0..100 {
        let mut next = Vec::with_capacity(k as usize);
        for j in 0..k {
            let members = assign.eq(j).nonzero().squeeze_dim(1);
            next.push(if members.size()[0] == 0 { c.get(j) } else { x.index_select(0, &members).mean_dim(0, false, Kind::Float) });
        }
        c = Tensor::stack(&next, 0);
        let new_assign = sq_dist(x, &c).argmin(1, false);
        if new_assign.equal(&assign) {
            break;
        }
        assign = new_assign;
    }
    assign
}

fn sq_dist(x: &Tensor, c: &Tensor) -> Tensor {
    (x.square().sum_dim_intlist(1, true, Kind::Float) - x.matmul(&c.tr()) * 2.0 + c.square().sum_dim_intlist(1, false, Kind::Float).unsqueeze(0))
        .clamp_min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(seed: i64, n: i64, d: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([n, d], (Kind::Float, tch::Device::Cpu)) * 2.0 + 3.0
    }

    #[test]
    fn covariance_matches_torch_cov_and_is_positive_definite() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut s = ClassStats::new(&vs.root(), StatsKind::Covariance, 3, 8, 1);
        // Fewer samples than dimensions: singular sample covariance, the 1e-4·I keeps it PD.
        let x = feats(0, 5, 8);
        s.fit(1, &x, 0).unwrap();
        let reference = x.tr().cov(1, None::<Tensor>, None::<Tensor>) + Tensor::eye(8, (Kind::Float, tch::Device::Cpu)) * 1e-4;
        assert!((s.covariance(1) - &reference).abs().max().double_value(&[]) < 1e-4);
        let eig = s.covariance(1).to_kind(Kind::Double).linalg_eigvalsh("L");
        assert!(eig.min().double_value(&[]) > 0.0, "positive definite");
        assert!(s.is_fitted(1) && !s.is_fitted(0));
        tch::manual_seed(1);
        let draws = s.sample(1, 20_000);
        let mean_err = (draws.mean_dim(0, false, Kind::Float) - x.mean_dim(0, false, Kind::Float)).abs().max().double_value(&[]);
        assert!(mean_err < 0.1, "{mean_err}");
    }

    #[test]
    fn variance_and_multi_centroid_shapes_and_sampling() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut v = ClassStats::new(&(vs.root() / "v"), StatsKind::Variance, 2, 4, 1);
        v.fit(0, &feats(2, 50, 4), 0).unwrap();
        assert_eq!(v.sample(0, 7).size(), [7, 4]);
        let mut m = ClassStats::new(&(vs.root() / "m"), StatsKind::MultiCentroid, 2, 4, 3);
        // Two well-separated blobs and one point.
        let a = feats(3, 20, 4);
        let b = feats(4, 20, 4) + 100.0;
        let x = Tensor::cat(&[a, b, Tensor::full([1, 4], -500.0, (Kind::Float, tch::Device::Cpu))], 0);
        m.fit(1, &x, 7).unwrap();
        assert_eq!(m.means(2).size(), [6, 4]);
        let s = m.sample(1, 30);
        assert_eq!(s.size(), [20, 4], "10 per non-degenerate cluster; the single point is skipped");
        let (xs, ys) = v.sample_classes(0..1, 5);
        assert_eq!((xs.size(), ys.size()), (vec![5, 4], vec![5]));
    }

    #[test]
    fn too_few_samples_is_an_error() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut s = ClassStats::new(&vs.root(), StatsKind::Covariance, 1, 4, 1);
        assert!(s.fit(0, &feats(0, 1, 4), 0).is_err());
    }
}
