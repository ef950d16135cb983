//! A ridge-regression classifier on fixed features, as RanPAC computes it
//! (`RanPAC.py` / LAMDA-PILOT `models/ranpac.py`): the Gram matrix
//! G = Σ hᵀh and the cross-correlation Q = Σ hᵀy (one-hot over every class
//! of the stream) are accumulated over the tasks seen, and
//! W = (G + λI)⁻¹ Q. λ is chosen per task on that task's data alone: fitted on
//! its first 80 % of rows, scored by the mean squared error on the rest,
//! over a grid (official `10^{−8..8}`).
//!
//! promptcl accumulates and solves in f64 (the official code, in f32 on the
//! CPU) on the method's device, and keeps G and Q in the method's store, so a
//! resumed run has them.

use tch::{nn, Kind, Tensor};

use crate::methods::common::zeros_f64_no_train;
use crate::{LearnerError, Result};

/// The official λ grid: `10.0 ** np.arange(-8, 9)`.
pub fn official_grid() -> Vec<f64> {
    (-8..=8).map(|e| 10f64.powi(e)).collect()
}

pub struct Ridge {
    gram: Tensor,
    cross: Tensor,
}

/// W = (G + λI)⁻¹ Q, `[dim, classes]`, in f64.
pub fn solve(gram: &Tensor, cross: &Tensor, lambda: f64) -> Tensor {
    let m = gram.size()[0];
    let eye = Tensor::eye(m, (Kind::Double, gram.device()));
    Tensor::linalg_solve(&(gram + eye * lambda), cross, true)
}

/// The λ of `grid` whose ridge fitted on the first `fit_fraction` of the rows
/// of `h` `[N, M]` / `y` `[N, C]` has the least mean squared error on the
/// rest (`F.mse_loss`, the mean over every entry), with every λ's error.
pub fn select_lambda(h: &Tensor, y: &Tensor, grid: &[f64], fit_fraction: f64) -> Result<(f64, Vec<f64>)> {
    let n = h.size()[0];
    let fit = (fit_fraction * n as f64) as i64;
    if grid.is_empty() {
        return Err(LearnerError::Invalid("ridge: the λ grid is empty".into()));
    }
    if fit < 1 || fit >= n {
        return Err(LearnerError::Invalid(format!("ridge: {n} samples cannot be split {fit_fraction} / {} to choose λ", 1.0 - fit_fraction)));
    }
    let (h, y) = (h.to_kind(Kind::Double), y.to_kind(Kind::Double));
    let (h1, y1) = (h.narrow(0, 0, fit), y.narrow(0, 0, fit));
    let (h2, y2) = (h.narrow(0, fit, n - fit), y.narrow(0, fit, n - fit));
    let (g, q) = (h1.tr().matmul(&h1), h1.tr().matmul(&y1));
    let losses: Vec<f64> = grid.iter().map(|&l| (h2.matmul(&solve(&g, &q, l)) - &y2).square().mean(Kind::Double).double_value(&[])).collect();
    // The first minimum, as `np.argmin`.
    let best = losses.iter().enumerate().fold(0, |b, (i, &l)| if l < losses[b] { i } else { b });
    Ok((grid[best], losses))
}

impl Ridge {
    /// `gram` `[dim, dim]` and `cross` `[dim, classes]` (f64, on the store's device) under `p`.
    pub fn new(p: &nn::Path, dim: i64, classes: usize) -> Self {
        Self { gram: zeros_f64_no_train(p, "gram", &[dim, dim]), cross: zeros_f64_no_train(p, "cross", &[dim, classes as i64]) }
    }

    /// Bytes the statistics take: what a width must fit in.
    pub fn bytes(dim: i64, classes: usize) -> u64 {
        8 * dim as u64 * (dim as u64 + classes as u64)
    }

    /// Adds features `h` `[N, dim]` of classes `labels` `[N]`.
    pub fn add(&mut self, h: &Tensor, labels: &Tensor) {
        let device = self.gram.device();
        let h = h.to_device(device).to_kind(Kind::Double);
        let c = self.cross.size()[1];
        let y = labels.to_device(device).one_hot(c).to_kind(Kind::Double);
        tch::no_grad(|| {
            let _ = self.gram.g_add_(&h.tr().matmul(&h));
            let _ = self.cross.g_add_(&h.tr().matmul(&y));
        });
    }

    /// W for the statistics so far, `[dim, classes]` (f64).
    pub fn solve(&self, lambda: f64) -> Tensor {
        solve(&self.gram, &self.cross, lambda)
    }
}
