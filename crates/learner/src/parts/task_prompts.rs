//! Per-task prefix prompts (HiDe-Prompt's, NoRGa's and EPI's task prompts,
//! WAVE-CRE's task pools, DualPrompt's E-prompts, CODA-Prompt's components;
//! [`TaskPrompts::shared`]: L2P's one prefix pool): task t owns M prompts `[M, layers, 2, L, H, hd]`
//! (official layout: key/value, length, heads, head dim) and, with M > 1,
//! keys `[M, D]`; a sample uses the `top_k` prompts of its task's pool whose
//! keys are nearest (cosine) to its frozen query, concatenated along the
//! prefix length. Only the current task's prompts train. How the prefixes are
//! made from trainable parameters is the set's [`PrefixExpert`] (direct, a
//! reparameterising generator, the frozen projections, …).

use promptcl_model::{NoRGaGate, PrefixScoreHook, Prompts, ZeroInitGate};
use tch::{nn, Device, Kind, Tensor};

use super::prompt_param::{Parameterization, PrefixExpert};
use crate::methods::common::{l2_normalize, seeded_uniform, split_prefix, var_from};
use crate::{LearnerError, MethodContext, Result};

/// How a task prompt set is laid out.
#[derive(Debug, Clone)]
pub struct PromptSetConfig {
    /// Variable names: `<prompt_name>.<task>`, `<key_name>.<task>`; a generated
    /// parameterisation adds `<prompt_name>_gen…`, `<prompt_name>_stored.<task>`
    /// and `<prompt_name>_sealed`.
    pub prompt_name: &'static str,
    /// `None`: a pool without keys, whose owner weighs its prompts itself (CODA-Prompt's components).
    pub key_name: Option<&'static str>,
    pub layers: Vec<usize>,
    pub length: i64,
    /// Prompts per task (1: one task prompt, no keys).
    pub pool_size: usize,
    pub top_k: usize,
    /// Tags the seeded initialisation (prompts; keys use `seed_tag + 1`, generators `seed_tag + 2`).
    pub seed_tag: u64,
    /// How the prefixes are parameterised ([`crate::parts::prompt_param`]); its gate is the method's to apply.
    pub expert: PrefixExpert,
}

pub struct TaskPrompts {
    /// Per task, what its prefixes are made from ([`Parameterization::param_dims`]).
    params: Vec<Tensor>,
    /// Per task `[M, D]` when M > 1.
    pub keys: Vec<Tensor>,
    param: Parameterization,
    /// Generated parameterisations: per task its prefixes `[M, layers, 2, L, H, hd]` once
    /// sealed, and `[T]` flags (1 = sealed), kept in the store so a resumed run has them.
    stored: Vec<Tensor>,
    sealed: Option<Tensor>,
    gen_name: String,
    cfg: PromptSetConfig,
}

impl TaskPrompts {
    pub fn new(p: &nn::Path, ctx: &MethodContext, cfg: PromptSetConfig) -> Result<Self> {
        Self::with_sets(p, ctx, cfg, false)
    }

    /// One pool that every task trains in turn (L2P's), named `<prompt_name>.0`:
    /// use it as task 0's, [`Self::begin_task`]`(0, false)` each task, never sealed.
    pub fn shared(p: &nn::Path, ctx: &MethodContext, cfg: PromptSetConfig) -> Result<Self> {
        Self::with_sets(p, ctx, cfg, true)
    }

    fn with_sets(p: &nn::Path, ctx: &MethodContext, cfg: PromptSetConfig, shared: bool) -> Result<Self> {
        let sets = if shared { 1 } else { ctx.num_tasks };
        let depth = ctx.backbone.depth();
        let bad = |reason: String| Err(LearnerError::Invalid(reason));
        if let Some(l) = cfg.layers.iter().find(|&&l| l >= depth) {
            return bad(format!("prompt layer {l} beyond the backbone's depth {depth}"));
        }
        if cfg.length < 1 || cfg.layers.is_empty() {
            return bad("need at least one prompt layer and length >= 1".into());
        }
        if cfg.pool_size == 0 || cfg.top_k == 0 || cfg.top_k > cfg.pool_size {
            return bad(format!("need 1 <= top_k ({}) <= pool_size ({})", cfg.top_k, cfg.pool_size));
        }
        let gen_name = format!("{}_gen", cfg.prompt_name);
        let param =
            Parameterization::new(&(p / gen_name.as_str()), &ctx.backbone, &cfg.expert, &cfg.layers, cfg.length, sets, ctx.seed, cfg.seed_tag + 2)?;
        let (h, hd, d) = (ctx.backbone.num_heads(), ctx.backbone.head_dim(), ctx.feature_dim());
        let m = cfg.pool_size as i64;
        let layers = cfg.layers.len() as i64;
        let dims = param.param_dims(m, layers);
        let params = (0..sets)
            .map(|t| var_from(&(p / cfg.prompt_name), &t.to_string(), param.init(&ctx.backbone, ctx.seed, &[cfg.seed_tag, t as u64], &dims)))
            .collect();
        let keys = match cfg.key_name {
            Some(name) if m > 1 => (0..sets)
                .map(|t| var_from(&(p / name), &t.to_string(), seeded_uniform(ctx.seed, &[cfg.seed_tag + 1, t as u64], &[m, d], -1.0, 1.0)))
                .collect(),
            _ => Vec::new(),
        };
        // A shared pool keeps training, so there is nothing to seal.
        let (stored, sealed) = if param.is_direct() || shared {
            (Vec::new(), None)
        } else {
            let store = p / format!("{}_stored", cfg.prompt_name);
            let stored = (0..sets).map(|t| store.zeros_no_train(&t.to_string(), &[m, layers, 2, cfg.length, h, hd])).collect();
            (stored, Some(p.zeros_no_train(&format!("{}_sealed", cfg.prompt_name), &[sets as i64])))
        };
        Ok(Self { params, keys, param, stored, sealed, gen_name, cfg })
    }

    pub fn layers(&self) -> &[usize] {
        &self.cfg.layers
    }

    pub fn keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The names of the variables that train with the current task.
    pub fn names(&self) -> Vec<&str> {
        let mut names = vec![self.cfg.prompt_name];
        if let (true, Some(name)) = (self.keyed(), self.cfg.key_name) {
            names.push(name);
        }
        if self.param.has_generator() {
            names.push(&self.gen_name);
        }
        names
    }

    /// Trains task `t`'s prompts (keys, per-task generator) only; with
    /// `copy_previous` (official `shared_prompt_pool`) they start as a copy of task t−1's.
    pub fn begin_task(&mut self, t: usize, copy_previous: bool) {
        if copy_previous {
            super::copy_previous(&mut self.params, t);
        }
        super::train_only(&mut self.params, t);
        if self.keyed() {
            super::train_only(&mut self.keys, t);
        }
        self.param.begin_task(t, copy_previous);
    }

    /// The sealed flags of tasks `0..n`, read in one transfer (none for direct prompts).
    fn sealed_flags(&self, n: usize) -> Vec<bool> {
        match &self.sealed {
            Some(s) => Vec::<f64>::try_from(s.narrow(0, 0, n as i64).to_kind(Kind::Double).to_device(Device::Cpu))
                .expect("flags")
                .into_iter()
                .map(|f| f > 0.5)
                .collect(),
            None => vec![false; n],
        }
    }

    fn is_sealed(&self, t: usize) -> bool {
        self.sealed_flags(t + 1)[t]
    }

    /// Task t's prefixes `[M, layers, 2, L, H, hd]`: generated while its task
    /// trains, read from the sealed store after.
    pub fn pool(&self, t: usize) -> Tensor {
        self.pool_given(t, self.is_sealed(t))
    }

    fn pool_given(&self, t: usize, sealed: bool) -> Tensor {
        if self.param.is_direct() {
            self.params[t].shallow_clone()
        } else if sealed {
            self.stored[t].shallow_clone()
        } else {
            self.param.prefixes(&self.params[t], t)
        }
    }

    /// Each task's parameters ([`Parameterization::param_dims`]), for owners that
    /// initialise them their own way (CODA-Prompt's Gram–Schmidt) or penalise them.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }

    /// Tasks `0..n`'s prefixes stacked `[n, M, layers, 2, L, H, hd]`, the flags read once.
    pub fn pools(&self, n: usize) -> Tensor {
        let sealed = self.sealed_flags(n);
        Tensor::stack(&(0..n).map(|t| self.pool_given(t, sealed[t])).collect::<Vec<_>>(), 0)
    }

    /// Task t's prefixes as HiDe-Prompt trains them: `(1−m)·P_t + m·mean(P_<t)`,
    /// the mean detached.
    pub fn mixed(&self, t: usize, momentum: f64) -> Tensor {
        let own = self.pool(t);
        if t == 0 || momentum == 0.0 {
            return own;
        }
        let earlier = self.pools(t).mean_dim(0, false, Kind::Float).detach();
        own * (1.0 - momentum) + earlier * momentum
    }

    /// Ends task t's prompt training: the mix is written into its prefixes
    /// (direct: into P_t; generated: into the sealed store, which from then on
    /// is what the task's prompts are).
    pub fn seal(&mut self, t: usize, momentum: f64) {
        if self.param.is_direct() {
            if t > 0 && momentum > 0.0 {
                let mixed = tch::no_grad(|| self.mixed(t, momentum));
                tch::no_grad(|| self.params[t].copy_(&mixed));
            }
            return;
        }
        // A shared pool has no store: it trains on.
        if self.sealed.is_none() || self.is_sealed(t) {
            return;
        }
        let mixed = tch::no_grad(|| self.mixed(t, momentum).detach());
        tch::no_grad(|| {
            self.stored[t].copy_(&mixed);
            if let Some(s) = &self.sealed {
                let _ = s.get(t as i64).fill_(1.0);
            }
        });
    }

    /// Routes each sample to its task's pool: the task ids `[B]` (int64 on
    /// `device`), the pools `[B, M, ...]` and keys `[B, M, D]`.
    pub fn for_tasks(&self, tasks: &[usize], device: Device) -> (Tensor, Tensor, Option<Tensor>) {
        let task_ids = super::task_ids(tasks, device);
        let (pools, keys) = self.for_ids(&task_ids, tasks.iter().max().map_or(1, |&m| m + 1));
        (task_ids, pools, keys)
    }

    /// [`Self::for_tasks`] for ids already on the device (`[B]` int64, each below `n_tasks`).
    pub fn for_ids(&self, task_ids: &Tensor, n_tasks: usize) -> (Tensor, Option<Tensor>) {
        let pools = self.pools(n_tasks).index_select(0, task_ids);
        let keys = self.keyed().then(|| Tensor::stack(&self.keys[..n_tasks], 0).index_select(0, task_ids));
        (pools, keys)
    }

    /// Each sample's prefix from its pool: `pools` `[B or 1, M, layers, 2, L, H, hd]`,
    /// `keys` `[B or 1, M, D]`, `q` `[B, D]` → `[B or 1, layers, 2, K·L, H, hd]`
    /// and the matching term: `1 − cos` summed over the K chosen keys, averaged over
    /// the batch (WAVE-CRE's Eq. 15 and its group's `reduce_sim`; zero without keys).
    pub fn choose(&self, pools: &Tensor, keys: Option<&Tensor>, q: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (Some(keys), Some(q)) = (keys, q) else {
            if keys.is_some() {
                return Err(LearnerError::Invalid("keyed prompt pools need the frozen query".into()));
            }
            return Ok((pools.select(1, 0), Tensor::zeros([], (Kind::Float, pools.device()))));
        };
        let b = q.size()[0];
        let s = pools.size();
        let k = self.cfg.top_k as i64;
        let cos = l2_normalize(keys, 2).matmul(&l2_normalize(q, 1).unsqueeze(2)).squeeze_dim(2);
        let cos = cos.expand([b, s[1]], false);
        let (sim, idx) = cos.topk(k, 1, true, true);
        let matching = (sim.ones_like() - sim).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
        Ok((concat_chosen(pools, &idx), matching))
    }
}

/// Each sample's chosen prompts concatenated along the prefix length:
/// `pools` `[B or 1, M, layers, 2, L, H, hd]`, `idx` `[B, k]` (int64) →
/// `[B, layers, 2, k·L, H, hd]`, the k-th prompt's positions after the (k−1)-th's.
pub fn concat_chosen(pools: &Tensor, idx: &Tensor) -> Tensor {
    let s = pools.size();
    let (b, k) = (idx.size()[0], idx.size()[1]);
    let pools = pools.expand(&[b, s[1], s[2], s[3], s[4], s[5], s[6]][..], false);
    let gather = idx.view(&[b, k, 1, 1, 1, 1, 1][..]).expand(&[b, k, s[2], s[3], s[4], s[5], s[6]][..], false);
    pools.gather(1, &gather, false).permute(&[0, 2, 3, 1, 4, 5, 6][..]).reshape([b, s[2], s[3], k * s[4], s[5], s[6]])
}

/// How a batch's E-prompt prefixes reach the attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixLayout {
    /// Each sample gets the key and value halves of its own prompt.
    #[default]
    Correct,
    /// As dualprompt-pytorch, HiDe-Prompt and MoE_PromptCL compute it (their
    /// issue 8): the selected prompts `[L, 2, B, …]` are reshaped to
    /// `[L, B, 2, …]` without a permute, so sample b < B/2 gets the key halves
    /// of samples 2b and 2b+1 as its key and value, sample b ≥ B/2 the value
    /// halves of samples 2b−B and 2b−B+1 (with one prompt for the whole batch,
    /// the first half attends to (K, K), the second to (V, V)). For
    /// reproducing published numbers; results then depend on batch order.
    Official,
}

impl PrefixLayout {
    /// `e` (`[B or 1, layers, 2, L, H, hd]`) for a batch of `batch` samples.
    pub fn arrange(self, e: &Tensor, batch: i64) -> Tensor {
        match self {
            Self::Correct => e.shallow_clone(),
            Self::Official => {
                let s = e.size();
                let e = e.expand([batch, s[1], s[2], s[3], s[4], s[5]], false);
                // [B, layers, 2, …] → the official [layers, 2, B, …], read back as [layers, B, 2, …].
                e.permute([1, 2, 0, 3, 4, 5]).contiguous().reshape([s[1], batch, s[2], s[3], s[4], s[5]]).permute([1, 0, 2, 3, 4, 5])
            }
        }
    }
}

/// Which gate each prompted layer's prefix passes (index i: the i-th prompted layer).
#[derive(Clone, Copy, Default)]
pub enum LayerGates<'a> {
    /// One joint softmax over prefix and tokens (plain prefix-tuning).
    #[default]
    None,
    /// NoRGa's score hook on the prefix logits.
    NoRGa(&'a [NoRGaGate]),
    /// Zero-initialised attention: the prefix's own softmax times tanh(g).
    ZeroInit(&'a [ZeroInitGate]),
}

/// Adds prefixes `e` (`[B or 1, layers, 2, L, H, hd]`, official layout) at
/// `layers`, each through its gate.
pub fn prefix_prompts<'a>(mut prompts: Prompts<'a>, layers: &[usize], e: &Tensor, gates: LayerGates<'a>) -> Prompts<'a> {
    for (i, &l) in layers.iter().enumerate() {
        let (k, v) = split_prefix(&e.select(1, i as i64));
        prompts = prompts.with_prefix(l, &k, &v);
        match gates {
            LayerGates::None => {}
            LayerGates::NoRGa(g) => {
                if let Some(g) = g.get(i) {
                    prompts = prompts.with_score_hook(l, g as &dyn PrefixScoreHook);
                }
            }
            LayerGates::ZeroInit(g) => {
                if let Some(g) = g.get(i) {
                    prompts = prompts.with_zero_gate(l, g);
                }
            }
        }
    }
    prompts
}
