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
//!
//! Experts (issue #18), where CODA-Prompt's code is silent, chosen as follows:
//! - `prompt = { param, … }` parameterises the components: each task's
//!   components are a [`TaskPrompts`] set (`pool_size / tasks` prompts of
//!   `length / 2` key and value positions), so a generated task's components
//!   are sealed at the end of its task like any task prompt. Gram–Schmidt
//!   orthogonalises what trains, the set's parameters (for `direct` the
//!   components themselves, as the official code; otherwise the embeddings the
//!   generator reads), and the ortho penalty reads the same tensors.
//! - `prompt.gate`: the prefix mixes every task's components, so there is no
//!   task to route a gate by: NoRGa's gate is as everywhere (trained in the
//!   first task), a zero-initialised gate is one set trained in every task.
//! - `lora = { … }`: likewise one shared set of factors trained in every task
//!   (sequential LoRA), since CODA-Prompt infers no task.

use std::rc::Rc;

use promptcl_model::Prompts;
use promptcl_stream::SplitMix64;
use tch::{nn, nn::Module, Kind, Tensor};

use super::common::{ce_step, gaussian, head, l2_normalize, seeded_uniform, train_classes, var_from, LinearInit};
use crate::method::{tasks_seen, Backbone, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::lora::LoraSpec;
use crate::parts::prompt_param::PrefixExpert;
use crate::parts::shared_experts::{Routed, SharedExperts};
use crate::parts::task_prompts::{PromptSetConfig, TaskPrompts};
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
        /// The components' parameterisation and the prefix gate (see hide-prompt's `prompt`); direct by default.
        pub prompt: PrefixExpert = PrefixExpert::default(),
        /// One LoRA trained in every task (CODA-Prompt infers no task to route per-task factors by); none by default.
        pub lora: Option<LoraSpec> = None,
    }
}

/// One layer's keys and attention vectors, one variable per task: `k[t]`, `a[t]` `[pt, D]`.
struct Layer {
    k: Vec<Tensor>,
    a: Vec<Tensor>,
}

pub struct CodaPrompt {
    vs: nn::VarStore,
    layers: Vec<(usize, Layer)>,
    /// The components, per task `[pt, layers, …]` (`e.p.<t>`).
    components: TaskPrompts,
    experts: SharedExperts,
    head: nn::Linear,
    backbone: Rc<Backbone>,
    task_sizes: Vec<usize>,
    params: Params,
    seed: u64,
}

impl CodaPrompt {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let bad = |reason: String| LearnerError::Params { method: "coda-prompt".into(), reason };
        if !params.pool_size.is_multiple_of(ctx.num_tasks) || params.pool_size == 0 {
            return Err(bad(format!("pool_size {} must be a positive multiple of the number of tasks {}", params.pool_size, ctx.num_tasks)));
        }
        if params.length < 2 || params.length % 2 != 0 {
            return Err(bad(format!("length {} must be even (split into key and value halves)", params.length)));
        }
        if let Some(l) = params.layers.iter().find(|&&l| l >= ctx.backbone.depth()) {
            return Err(bad(format!("layer {l} beyond the backbone's depth {}", ctx.backbone.depth())));
        }
        let f = ctx.feature_dim();
        // Gram–Schmidt draws `pool_size` orthogonal rows: it cannot in fewer dimensions.
        if params.pool_size as i64 > f {
            return Err(bad(format!("pool_size {} exceeds the query width {f}: keys cannot all be orthogonal", params.pool_size)));
        }
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let experts =
            SharedExperts::new(&root, ctx, params.prompt.gate, params.layers.len(), params.lora.as_ref(), 23, "CODA-Prompt").map_err(bad)?;
        let pt = (params.pool_size / ctx.num_tasks) as i64;
        let set = PromptSetConfig {
            prompt_name: "p",
            key_name: None,
            layers: params.layers.clone(),
            length: params.length / 2,
            pool_size: pt as usize,
            top_k: 1,
            seed_tag: 22,
            expert: params.prompt.clone(),
        };
        let components = TaskPrompts::new(&(&root / "e"), ctx, set).map_err(|e| bad(e.to_string()))?;
        let width: i64 = components.params()[0].select(1, 0).size()[1..].iter().product();
        if params.pool_size as i64 > width {
            return Err(bad(format!(
                "pool_size {} exceeds the {width} numbers of a component's parameters (length, prompt.param): they cannot all be orthogonal",
                params.pool_size
            )));
        }
        let mut layers = Vec::new();
        for &l in &params.layers {
            let lp = &root / "e" / l;
            let mut layer = Layer { k: Vec::new(), a: Vec::new() };
            for t in 0..ctx.num_tasks {
                let s = |which: u64, dims: &[i64]| seeded_uniform(ctx.seed, &[20, l as u64, t as u64, which], dims, 0.0, 1.0);
                layer.k.push(var_from(&(&lp / "k"), &t.to_string(), s(1, &[pt, f])));
                layer.a.push(var_from(&(&lp / "a"), &t.to_string(), s(2, &[pt, f])));
            }
            layers.push((l, layer));
        }
        let head = head(&root, f, ctx.num_classes, ctx.seed, LinearInit::Torch);
        Ok(Self { vs, layers, components, experts, head, backbone: ctx.backbone.clone(), task_sizes: ctx.task_sizes.clone(), params, seed: ctx.seed })
    }

    /// Prefixes from the components of tasks `0..n_tasks`, and the ortho penalty.
    fn prompts<'a>(&'a self, query: &Tensor, n_tasks: usize, train: bool, experts: &'a Routed) -> (Prompts<'a>, Tensor) {
        let mut loss = Tensor::zeros([], (Kind::Float, query.device()));
        let b = query.size()[0];
        // [n, pt, layers, 2, L/2, H, hd]: component m of layer i is row m of its [n·pt, L·D] view.
        let pools = self.components.pools(n_tasks);
        let per_layer: Vec<Tensor> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, (_, layer))| {
                let k = Tensor::cat(&layer.k[..n_tasks], 0);
                let a = Tensor::cat(&layer.a[..n_tasks], 0);
                let m = k.size()[0];
                let p = pools.select(2, i as i64);
                let shape = p.size();
                let aq = l2_normalize(&(query.unsqueeze(1) * a.unsqueeze(0)), 2);
                let weights = (aq * l2_normalize(&k, 1).unsqueeze(0)).sum_dim_intlist(2, false, Kind::Float);
                let mixed = weights.matmul(&p.reshape([m, -1]));
                if train && self.params.ortho_mu > 0.0 {
                    let own = self.layer_params(i, n_tasks);
                    loss += (ortho_penalty(&k) + ortho_penalty(&a) + ortho_penalty(&own)) * self.params.ortho_mu;
                }
                mixed.view(&[&[b][..], &shape[2..]].concat()[..])
            })
            .collect();
        let layer_ids: Vec<usize> = self.layers.iter().map(|(l, _)| *l).collect();
        let prompts = experts.prompts(&layer_ids, &Tensor::stack(&per_layer, 1));
        (prompts, loss)
    }

    /// Layer `i`'s component parameters of tasks `0..n`, one row per component.
    fn layer_params(&self, i: usize, n: usize) -> Tensor {
        Tensor::cat(&self.components.params()[..n], 0).select(1, i as i64).flatten(1, -1)
    }

    /// The logits and feature of a batch through tasks `0..n_tasks`' components (and the penalty).
    fn forward(&self, x: &Inputs, n_tasks: usize, train: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let query = self.backbone.query(x)?;
        let experts = self.experts.routed();
        let (prompts, ortho) = self.prompts(&query, n_tasks, train, &experts);
        let feature = self.backbone.forward(x, &prompts)?.feature;
        Ok((self.head.forward(&feature), feature, ortho))
    }

    /// Re-initialises task `t`'s components orthogonal to tasks `< t` (official `gram_schmidt`).
    fn orthogonalise(&mut self, t: usize) {
        let seed = self.seed;
        let fresh_rows = |earlier: Vec<Tensor>, like: &Tensor, tags: [u64; 4]| {
            let mut rng = SplitMix64::derive(seed, &tags);
            gram_schmidt(&earlier, like.flatten(1, -1).size(), &mut rng).view(like.size().as_slice()).to_device(like.device())
        };
        tch::no_grad(|| {
            for (i, (l, layer)) in self.layers.iter_mut().enumerate() {
                for (which, set) in [(1, &mut layer.k), (2, &mut layer.a)] {
                    let fresh = fresh_rows(set[..t].iter().map(|x| x.flatten(1, -1)).collect(), &set[t], [21, *l as u64, t as u64, which]);
                    set[t].copy_(&fresh);
                }
                let params = self.components.params_mut();
                let earlier = params[..t].iter().map(|x| x.select(1, i as i64).flatten(1, -1)).collect();
                let mut own = params[t].select(1, i as i64);
                let fresh = fresh_rows(earlier, &own, [21, *l as u64, t as u64, 0]);
                own.copy_(&fresh);
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
        self.components.begin_task(task.task, false);
        for (_, layer) in &mut self.layers {
            for set in [&mut layer.k, &mut layer.a] {
                train_only(set, task.task);
            }
        }
        self.experts.begin_task(task.task);
        Ok(())
    }

    /// Generated components are sealed with their task.
    fn end_task(&mut self, task: &TaskInfo, _data: &mut dyn crate::BatchSource) -> Result<()> {
        self.components.seal(task.task, 0.0);
        Ok(())
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let (logits, feature, ortho) = self.forward(x, task.task + 1, true)?;
        let mut step = ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&feature);
        step.loss = step.loss + ortho;
        Ok(step)
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let (logits, feature, _) = self.forward(x, tasks_seen(&self.task_sizes, seen), false)?;
        Ok(Prediction::new(logits.narrow(1, 0, seen as i64), None).with_features(&feature))
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
