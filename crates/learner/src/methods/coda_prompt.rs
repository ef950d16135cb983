//! CODA-Prompt (Smith et al., CVPR 2023; official GT-RIPL/CODA-Prompt `CodaPrompt`).
//!
//! Per prompted layer, a pool of `pool_size` prompt components `P` (length
//! `length`) with keys `K` and attention vectors `A`, split evenly across
//! tasks. The query q (frozen class token) weighs component m by
//! `cos(q ⊙ A_m, K_m)`; the weighted sum of components is split in half into
//! key and value prefixes. Each task's components are initialised by
//! Gram–Schmidt orthogonal to all earlier ones and trained only during that
//! task (the official code `.detach()`es earlier ones; here they are frozen
//! variables). Optional orthogonality penalty as the official code computes
//! it, per prompted layer: `ortho_mu·(‖KKᵀ−I‖² + ‖AAᵀ−I‖² + ‖PPᵀ−I‖²)` (means,
//! over the components of every task so far), only when `ortho_mu > 0` (the
//! official runs have 0). Its schedule is `coda-cosine` (`[optim]`).

use std::rc::Rc;

use promptcl_model::Prompts;
use promptcl_stream::SplitMix64;
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, gaussian, head, l2_normalize, seeded_uniform, train_classes, var_from, LinearInit};
use crate::method::{tasks_seen, Backbone, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::train_only;
use crate::{LearnerError, Result};

crate::method_params! {
    /// Defaults: CODA-Prompt `configs/cifar-100_prompt.yaml` (`prompt_param: [100, 8, 0.0]`).
    pub struct Params {
        /// Prompt components in all, split evenly across tasks.
        pub pool_size: usize = 100,
        /// Component length (even: halves become key and value prefixes).
        pub length: i64 = 8,
        /// Blocks that get the prefix.
        pub layers: Vec<usize> = vec![0, 1, 2, 3, 4],
        /// Weight of the orthogonality penalty (0: none).
        pub ortho_mu: f64 = 0.0,
        /// Score only the task's classes while training (`train_mask`).
        pub train_mask: bool = true,
    }
}

/// One layer's components, one variable per task: `p[t]` `[pt, L, D]`, `k[t]`, `a[t]` `[pt, D]`.
struct Layer {
    p: Vec<Tensor>,
    k: Vec<Tensor>,
    a: Vec<Tensor>,
}

pub struct CodaPrompt {
    vs: nn::VarStore,
    layers: Vec<(usize, Layer)>,
    head: nn::Linear,
    backbone: Rc<Backbone>,
    task_sizes: Vec<usize>,
    params: Params,
    seed: u64,
}

impl CodaPrompt {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let bad = |reason: String| Err(LearnerError::Params { method: "coda-prompt".into(), reason });
        if !params.pool_size.is_multiple_of(ctx.num_tasks) || params.pool_size == 0 {
            return bad(format!("pool_size {} must be a positive multiple of the number of tasks {}", params.pool_size, ctx.num_tasks));
        }
        if params.length < 2 || params.length % 2 != 0 {
            return bad(format!("length {} must be even (split into key and value halves)", params.length));
        }
        if let Some(l) = params.layers.iter().find(|&&l| l >= ctx.backbone.depth()) {
            return bad(format!("layer {l} beyond the backbone's depth {}", ctx.backbone.depth()));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let pt = (params.pool_size / ctx.num_tasks) as i64;
        let (d, f) = (ctx.token_dim(), ctx.feature_dim());
        let mut layers = Vec::new();
        for &l in &params.layers {
            let lp = &root / "e" / l;
            let mut layer = Layer { p: Vec::new(), k: Vec::new(), a: Vec::new() };
            for t in 0..ctx.num_tasks {
                let s = |which: u64, dims: &[i64]| seeded_uniform(ctx.seed, &[20, l as u64, t as u64, which], dims, 0.0, 1.0);
                layer.p.push(var_from(&(&lp / "p"), &t.to_string(), s(0, &[pt, params.length, d])));
                layer.k.push(var_from(&(&lp / "k"), &t.to_string(), s(1, &[pt, f])));
                layer.a.push(var_from(&(&lp / "a"), &t.to_string(), s(2, &[pt, f])));
            }
            layers.push((l, layer));
        }
        let head = head(&root, f, ctx.num_classes, ctx.seed, LinearInit::Torch);
        Ok(Self { vs, layers, head, backbone: ctx.backbone.clone(), task_sizes: ctx.task_sizes.clone(), params, seed: ctx.seed })
    }

    /// Prefixes from the components of tasks `0..n_tasks`, and the ortho penalty.
    fn prompts(&self, query: &Tensor, n_tasks: usize, train: bool) -> (Prompts<'static>, Tensor) {
        let mut prompts = Prompts::none();
        let mut loss = Tensor::zeros([], (Kind::Float, query.device()));
        let bb = &self.backbone;
        let b = query.size()[0];
        let half = self.params.length / 2;
        for (l, layer) in &self.layers {
            let k = Tensor::cat(&layer.k[..n_tasks], 0);
            let a = Tensor::cat(&layer.a[..n_tasks], 0);
            let p = Tensor::cat(&layer.p[..n_tasks], 0);
            let m = k.size()[0];
            let aq = l2_normalize(&(query.unsqueeze(1) * a.unsqueeze(0)), 2);
            let weights = (aq * l2_normalize(&k, 1).unsqueeze(0)).sum_dim_intlist(2, false, Kind::Float);
            let mixed = weights.matmul(&p.view([m, -1])).view([b, self.params.length, bb.token_dim()]);
            let to_heads = |x: Tensor| x.view([b, half, bb.num_heads(), bb.head_dim()]).permute([0, 2, 1, 3]);
            let ek = to_heads(mixed.narrow(1, 0, half));
            let ev = to_heads(mixed.narrow(1, half, half));
            prompts = prompts.with_prefix(*l, &ek, &ev);
            if train && self.params.ortho_mu > 0.0 {
                loss = loss + (ortho_penalty(&k) + ortho_penalty(&a) + ortho_penalty(&p.view([m, -1]))) * self.params.ortho_mu;
            }
        }
        (prompts, loss)
    }

    /// Re-initialises task `t`'s components orthogonal to tasks `< t` (official `gram_schmidt`).
    fn orthogonalise(&mut self, t: usize) {
        let seed = self.seed;
        tch::no_grad(|| {
            for (l, layer) in &mut self.layers {
                for (which, set) in [&mut layer.p, &mut layer.k, &mut layer.a].into_iter().enumerate() {
                    let earlier: Vec<Tensor> = set[..t].iter().map(|x| x.flatten(1, -1)).collect();
                    let mut rng = SplitMix64::derive(seed, &[21, *l as u64, t as u64, which as u64]);
                    let fresh = gram_schmidt(&earlier, set[t].flatten(1, -1).size(), &mut rng);
                    let (shape, device) = (set[t].size(), set[t].device());
                    set[t].copy_(&fresh.view(shape.as_slice()).to_device(device));
                }
            }
        });
    }
}

fn ortho_penalty(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    (t.matmul(&t.tr()) - Tensor::eye(n, (Kind::Float, t.device()))).square().mean(Kind::Float)
}

/// `rows` new unit vectors, each orthogonal to all earlier (given and new)
/// ones; earlier vectors are kept as they are. Classical Gram–Schmidt from
/// Gaussian draws, as the official code: each draw is projected against the
/// earlier rows as they are (not re-orthonormalised), so orthogonality to
/// rows that training has moved is approximate, exactly as there. A draw in
/// the span is redrawn.
fn gram_schmidt(earlier: &[Tensor], new_size: Vec<i64>, rng: &mut SplitMix64) -> Tensor {
    let (rows, dim) = (new_size[0] as usize, new_size[1] as usize);
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for e in earlier {
        let e = e.to_device(tch::Device::Cpu).to_kind(Kind::Double);
        for r in 0..e.size()[0] {
            basis.push(Vec::try_from(e.get(r)).expect("f64 rows"));
        }
    }
    let mut out = Vec::with_capacity(rows * dim);
    for _ in 0..rows {
        let u = loop {
            let v: Vec<f64> = (0..dim).map(|_| gaussian(rng)).collect();
            let mut u = v.clone();
            for b in &basis {
                let bb: f64 = b.iter().map(|x| x * x).sum();
                if bb < 1e-8 {
                    continue;
                }
                let c = b.iter().zip(&v).map(|(x, y)| x * y).sum::<f64>() / bb;
                u.iter_mut().zip(b).for_each(|(ui, bi)| *ui -= c * bi);
            }
            if u.iter().map(|x| x * x).sum::<f64>() > 1e-12 {
                break u;
            }
        };
        basis.push(u.clone());
        let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        out.extend(u.iter().map(|x| (x / n) as f32));
    }
    Tensor::from_slice(&out).view([rows as i64, dim as i64])
}

impl ContinualMethod for CodaPrompt {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn begin_task(&mut self, task: &TaskInfo) -> Result<()> {
        self.orthogonalise(task.task);
        for (_, layer) in &mut self.layers {
            for set in [&mut layer.p, &mut layer.k, &mut layer.a] {
                train_only(set, task.task);
            }
        }
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let query = self.backbone.query(x)?;
        let (prompts, ortho) = self.prompts(&query, task.task + 1, true);
        let out = self.backbone.forward(x, &prompts)?;
        let logits = self.head.forward(&out.feature);
        let mut step = ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&out.feature);
        step.loss = step.loss + ortho;
        Ok(step)
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let query = self.backbone.query(x)?;
        let (prompts, _) = self.prompts(&query, tasks_seen(&self.task_sizes, seen), false);
        let out = self.backbone.forward(x, &prompts)?;
        Ok(Prediction::new(self.head.forward(&out.feature).narrow(1, 0, seen as i64), None).with_features(&out.feature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_schmidt_rows_are_orthonormal_and_orthogonal_to_earlier() {
        let mut rng = SplitMix64::new(0);
        let first = gram_schmidt(&[], vec![4, 16], &mut rng);
        let second = gram_schmidt(&[first.shallow_clone()], vec![4, 16], &mut rng);
        let all = Tensor::cat(&[first, second], 0);
        let gram = all.matmul(&all.tr());
        let err = (gram - Tensor::eye(8, (Kind::Float, tch::Device::Cpu))).abs().max().double_value(&[]);
        assert!(err < 1e-5, "{err}");
    }
}
