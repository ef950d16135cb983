//! Optimal transport between classes' feature samples, for HierC's
//! hierarchical regulariser: `W[i][j]` = earth mover's distance between the
//! sample sets of classes i and j (uniform weights, squared Euclidean cost:
//! POT's `ot.emd2(ot.unif(n), ot.unif(m), ot.dist(X, Y))`), and the affinity
//! `Γ = exp(−W/δ)`.
//!
//! - [`emd2`]: exact. With equal sample counts and uniform weights an optimal
//!   plan is a permutation (Birkhoff–von Neumann), so the exact cost is a
//!   minimum-cost assignment, solved by the Hungarian algorithm in O(n³).
//! - [`sinkhorn2`]: entropic OT (log-domain Sinkhorn), batched over class
//!   pairs as one tensor program, so it runs on the GPU; it approaches the
//!   exact cost as the regularisation shrinks.

use tch::{Kind, Tensor};

use crate::{LearnerError, Result};

/// `ot.dist`: pairwise squared Euclidean distances.
///
/// # Shapes
/// - `x`: `[.., n, d]`, `y`: `[.., m, d]` → `[.., n, m]`
pub fn sq_dist(x: &Tensor, y: &Tensor) -> Tensor {
    let xx = x.square().sum_dim_intlist(-1, true, x.kind());
    let yy = y.square().sum_dim_intlist(-1, true, y.kind()).transpose(-2, -1);
    (xx + yy - x.matmul(&y.transpose(-2, -1)) * 2.0).clamp_min(0.0)
}

/// Exact squared-Euclidean EMD between two equal-size uniform point sets.
pub fn emd2(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (n, m) = (x.size()[0], y.size()[0]);
    if n != m {
        return Err(LearnerError::Invalid(format!("exact OT here needs equal sample counts (got {n} and {m}); use the Sinkhorn variant")));
    }
    if n == 0 {
        return Ok(0.0);
    }
    let cost = sq_dist(&x.to_kind(Kind::Double), &y.to_kind(Kind::Double)).to_device(tch::Device::Cpu);
    let c: Vec<f64> = Vec::try_from(cost.flatten(0, -1)).expect("f64 costs");
    let assignment = hungarian(&c, n as usize);
    Ok(assignment.iter().enumerate().map(|(i, &j)| c[i * n as usize + j]).sum::<f64>() / n as f64)
}

/// Minimum-cost perfect assignment of an `n×n` row-major cost matrix
/// (Kuhn–Munkres with potentials); returns the column of each row.
pub fn hungarian(cost: &[f64], n: usize) -> Vec<usize> {
    // 1-based arrays as in the classic formulation; column 0 is a sentinel.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            assignment[p[j] - 1] = j - 1;
        }
    }
    assignment
}

/// Entropic OT cost `⟨P, C⟩` for a batch of uniform point-set pairs
/// (log-domain Sinkhorn, `reg` on the cost's scale).
///
/// # Shapes
/// - `x`: `[B, n, d]`, `y`: `[B, m, d]` → `[B]`
pub fn sinkhorn2(x: &Tensor, y: &Tensor, reg: f64, iters: usize) -> Tensor {
    let c = sq_dist(x, y);
    let (n, m) = (c.size()[1], c.size()[2]);
    let log_k = -&c / reg;
    let (log_a, log_b) = (-(n as f64).ln(), -(m as f64).ln());
    let mut f = Tensor::zeros([c.size()[0], n], (Kind::Float, c.device()));
    let mut g = Tensor::zeros([c.size()[0], m], (Kind::Float, c.device()));
    for _ in 0..iters {
        f = -(&log_k + g.unsqueeze(1)).logsumexp([2], false) + log_a;
        g = -(&log_k + f.unsqueeze(2)).logsumexp([1], false) + log_b;
    }
    let plan = (log_k + f.unsqueeze(2) + g.unsqueeze(1)).exp();
    (plan * c).sum_dim_intlist([1, 2].as_slice(), false, Kind::Float)
}

/// How `class_distances` computes each pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OtSolver {
    Exact,
    Sinkhorn { reg: f64, iters: usize },
}

/// `W[i][j]` between the sample sets of every pair of classes (symmetric,
/// zero diagonal). Sinkhorn solves all pairs in one batch.
///
/// # Shapes
/// - `samples`: `[C, n, d]` → `[C, C]`
pub fn class_distances(samples: &Tensor, solver: OtSolver) -> Result<Tensor> {
    let c = samples.size()[0];
    let pairs: Vec<(i64, i64)> = (0..c).flat_map(|i| (i + 1..c).map(move |j| (i, j))).collect();
    let w = Tensor::zeros([c, c], (Kind::Float, samples.device()));
    let values = pair_distances(samples, &pairs, solver)?;
    tch::no_grad(|| {
        for (&(i, j), v) in pairs.iter().zip(values) {
            let _ = w.get(i).get(j).fill_(v);
            let _ = w.get(j).get(i).fill_(v);
        }
    });
    Ok(w)
}

/// OT distances between the sample sets of the given class pairs.
///
/// # Shapes
/// - `samples`: `[C, n, d]`
pub fn pair_distances(samples: &Tensor, pairs: &[(i64, i64)], solver: OtSolver) -> Result<Vec<f64>> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match solver {
        OtSolver::Exact => pairs.iter().map(|&(i, j)| emd2(&samples.get(i), &samples.get(j))).collect::<Result<_>>()?,
        OtSolver::Sinkhorn { reg, iters } => {
            // Chunks of pairs keep the [pairs, n, n] cost tensors near 2^26 elements.
            let n = samples.size()[1];
            let chunk = ((1i64 << 26) / (n * n).max(1)).clamp(1, pairs.len() as i64) as usize;
            let mut out = Vec::with_capacity(pairs.len());
            for part in pairs.chunks(chunk) {
                let idx_i = Tensor::from_slice(&part.iter().map(|p| p.0).collect::<Vec<_>>()).to_device(samples.device());
                let idx_j = Tensor::from_slice(&part.iter().map(|p| p.1).collect::<Vec<_>>()).to_device(samples.device());
                let d = tch::no_grad(|| sinkhorn2(&samples.index_select(0, &idx_i), &samples.index_select(0, &idx_j), reg, iters));
                out.extend(Vec::<f64>::try_from(d.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("f64"));
            }
            out
        }
    })
}

/// A Sinkhorn solver whose `reg` is a fraction of the mean squared distance
/// between the first and the last sample set of `samples` `[C, n, d]`, so one
/// setting serves features of any scale.
pub fn relative_sinkhorn(samples: &Tensor, reg: f64, iters: usize) -> OtSolver {
    let last = samples.size()[0] - 1;
    let scale = sq_dist(&samples.get(0), &samples.get(last)).mean(Kind::Float).double_value(&[]);
    OtSolver::Sinkhorn { reg: reg * scale.max(1e-12), iters }
}

/// HierC's affinity `Γ = exp(−W/δ)`.
pub fn affinity(w: &Tensor, delta: f64) -> Tensor {
    (-w / delta).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn pts(v: &[f32], n: i64, d: i64) -> Tensor {
        Tensor::from_slice(v).view([n, d])
    }

    #[test]
    fn identical_sets_cost_nothing_and_shifts_cost_the_squared_shift() {
        tch::manual_seed(0);
        let x = Tensor::randn([12, 3], (Kind::Float, Device::Cpu));
        assert!(emd2(&x, &x).unwrap().abs() < 1e-9);
        let shift = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
        let y = &x + &shift;
        let want = 0.25 + 1.0 + 4.0;
        assert!((emd2(&x, &y).unwrap() - want).abs() < 1e-4);
        // The order of the points does not matter.
        let perm = Tensor::randperm(12, (Kind::Int64, Device::Cpu));
        assert!((emd2(&x, &y.index_select(0, &perm)).unwrap() - want).abs() < 1e-4);
    }

    #[test]
    fn a_hand_checked_matching() {
        // X = {0, 1}, Y = {0.9, 0.1}: match 0↔0.1 and 1↔0.9, cost (0.01 + 0.01) / 2.
        let x = pts(&[0.0, 1.0], 2, 1);
        let y = pts(&[0.9, 0.1], 2, 1);
        assert!((emd2(&x, &y).unwrap() - 0.01).abs() < 1e-7);
        assert!(emd2(&x, &pts(&[1.0], 1, 1)).is_err(), "unequal counts need Sinkhorn");
    }

    #[test]
    fn hungarian_equals_brute_force_on_small_problems() {
        fn permutations(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for p in permutations(n - 1) {
                for k in 0..n {
                    let mut q = p.clone();
                    q.insert(k, n - 1);
                    out.push(q);
                }
            }
            out
        }
        let mut rng = promptcl_stream::SplitMix64::new(5);
        for n in 1..=6 {
            for _ in 0..20 {
                let c: Vec<f64> = (0..n * n).map(|_| rng.uniform(0.0, 10.0)).collect();
                let total = |a: &[usize]| a.iter().enumerate().map(|(i, &j)| c[i * n + j]).sum::<f64>();
                let best = permutations(n).iter().map(|p| total(p)).fold(f64::INFINITY, f64::min);
                assert!((total(&hungarian(&c, n)) - best).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn sinkhorn_approaches_exact_ot_as_regularisation_shrinks() {
        tch::manual_seed(1);
        let x = Tensor::randn([1, 16, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([1, 16, 4], (Kind::Float, Device::Cpu)) + 0.7;
        let exact = emd2(&x.get(0), &y.get(0)).unwrap();
        let errs: Vec<f64> = [1.0, 0.3, 0.05].iter().map(|&reg| (sinkhorn2(&x, &y, reg, 2000).double_value(&[0]) - exact).abs() / exact).collect();
        assert!(errs[0] > errs[1] && errs[1] > errs[2], "{errs:?}");
        assert!(errs[2] < 0.02, "relative error at reg 0.05: {}", errs[2]);
    }

    #[test]
    fn gamma_is_symmetric_with_unit_diagonal() {
        tch::manual_seed(2);
        let samples = Tensor::randn([5, 8, 3], (Kind::Float, Device::Cpu)) + Tensor::arange(5, (Kind::Float, Device::Cpu)).view([5, 1, 1]);
        for solver in [OtSolver::Exact, OtSolver::Sinkhorn { reg: 0.1, iters: 500 }] {
            let w = class_distances(&samples, solver).unwrap();
            let g = affinity(&w, 2.0);
            assert!(g.equal(&g.tr()), "{solver:?}");
            assert!((g.diagonal(0, 0, 1) - 1.0).abs().max().double_value(&[]) < 1e-12);
            assert!(g.max().double_value(&[]) <= 1.0 && g.min().double_value(&[]) > 0.0);
            // Farther-apart class means, larger distance.
            assert!(w.double_value(&[0, 4]) > w.double_value(&[0, 1]));
        }
    }
}
