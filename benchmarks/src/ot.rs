//! The OT step of the hierarchical-OT regulariser: W between the sample sets
//! of every pair of classes, as it runs once per task (all pairs at the last
//! task, the worst case), with exact OT timed on a subset of pairs and the
//! batched Sinkhorn on all of them.

use std::time::Instant;

use promptcl_learner::ot::{pair_distances, relative_sinkhorn, OtSolver};
use tch::{Device, Kind, Tensor};

#[derive(Debug, serde::Serialize)]
pub struct OtResult {
    pub classes: i64,
    pub samples_per_class: i64,
    pub dim: i64,
    pub pairs: usize,
    /// Seconds for all pairs with the batched Sinkhorn.
    pub sinkhorn_all_pairs_s: f64,
    /// Exact OT (Hungarian) seconds per pair, measured on `exact_pairs` pairs.
    pub exact_per_pair_s: f64,
    pub exact_pairs: usize,
    /// `exact_per_pair_s × pairs`.
    pub exact_all_pairs_estimate_s: f64,
}

pub fn run(classes: i64, samples: i64, dim: i64, exact_pairs: usize, device: Device) -> anyhow::Result<OtResult> {
    tch::manual_seed(0);
    let centres = Tensor::randn([classes, 1, dim], (Kind::Float, device)) * 2.0;
    let x = Tensor::randn([classes, samples, dim], (Kind::Float, device)) + centres;
    let pairs: Vec<(i64, i64)> = (0..classes).flat_map(|i| (i + 1..classes).map(move |j| (i, j))).collect();
    let solver = relative_sinkhorn(&x, 0.05, 100);
    pair_distances(&x, &pairs[..pairs.len().min(8)], solver)?; // warm-up
    let t = Instant::now();
    pair_distances(&x, &pairs, solver)?;
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let sinkhorn = t.elapsed().as_secs_f64();
    let subset = &pairs[..exact_pairs.min(pairs.len())];
    let t = Instant::now();
    pair_distances(&x.to_device(Device::Cpu), subset, OtSolver::Exact)?;
    let per_pair = t.elapsed().as_secs_f64() / subset.len().max(1) as f64;
    Ok(OtResult {
        classes,
        samples_per_class: samples,
        dim,
        pairs: pairs.len(),
        sinkhorn_all_pairs_s: sinkhorn,
        exact_per_pair_s: per_pair,
        exact_pairs: subset.len(),
        exact_all_pairs_estimate_s: per_pair * pairs.len() as f64,
    })
}
