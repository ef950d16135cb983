//! VAPT's adaptive prompts (Le et al., "Revisit visual prompt tuning: the
//! expressiveness of prompt experts", arXiv 2501.18936; official
//! `Minhchuyentoancbn/VAPT` @ff3e65b `src/models/vit_prompt/vit.py`
//! `PromptedTransformerAdaptive`), as per-task experts (issue #18).
//!
//! The first prompted block gets T static prompt tokens (`prompt_embeddings`,
//! U(±√(6 / (3·p² + D))), p the patch size), inserted after the class token.
//! Every later prompted block gets T tokens made from what enters it, the
//! previous block's output without its prompt tokens (`forward_deep_prompt`):
//! `LayerNorm` (eps 1e-5, its own per block) → drop the class token → the
//! patches as a `[D, rows, cols]` grid → one k×k kernel shared by all
//! channels (depthwise, stride 1, no bias, N(0, 1)) → `Dropout2d(0.1)` →
//! `Linear(rows'·cols', T)` on the spatial axis (zero-initialised, so every
//! adaptive prompt starts at exactly 0) → a residual MLP shared by the blocks,
//! `x + W₂·dropout(ReLU(W₁·x))` (D → h → D, no biases, `nn.Linear`'s init).
//! The tokens replace the previous block's prompt tokens.
//!
//! Continual learning (promptcl's choice; VAPT fine-tunes once): every task
//! owns all of these, trained in its task only, started as a copy of the
//! previous task's when the method copies prompts forward, and routed per
//! sample at inference. The MLP is shared by the blocks of a task, as the
//! official `SHARE_PROJECTOR`, not across tasks.

use promptcl_model::{ModelError, TokenGenerator};
use promptcl_stream::SplitMix64;
use tch::{Kind, Tensor};

use super::Route;
use crate::methods::common::{gaussian, seeded_uniform, var_from};
use crate::{Encoder, LearnerError, MethodContext, Result};

/// The variables' group name (`vapt.<task>.…`).
pub const NAME: &str = "vapt";

/// VAPT's sizes (the official `MODEL.PROMPT` defaults).
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveShape {
    /// k of the shared k×k kernel (`KERNEL = 2`).
    pub kernel: i64,
    /// Zero padding of the convolution (`PADDING = 0`).
    pub padding: i64,
    /// Hidden width of the feature MLP (`HIDDEN_DIM = 8`).
    pub hidden: i64,
    /// `Dropout2d` after the convolution (0.1, hard-coded there).
    pub conv_dropout: f64,
    /// Dropout after the MLP's ReLU (`DROPOUT_MLP = 0.1`).
    pub mlp_dropout: f64,
}

/// One adaptive block's modules.
struct Layer {
    norm_weight: Tensor,
    norm_bias: Tensor,
    /// `[1, 1, k, k]`
    kernel: Tensor,
    /// `[T, rows'·cols']`, `[T]`
    proj_weight: Tensor,
    proj_bias: Tensor,
}

/// One task's expert.
struct Expert {
    /// `[1, T, D]`
    first: Tensor,
    layers: Vec<Layer>,
    /// `[h, D]`, `[D, h]`
    mlp: (Tensor, Tensor),
}

impl Expert {
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.first, &self.mlp.0, &self.mlp.1];
        for l in &self.layers {
            v.extend([&l.norm_weight, &l.norm_bias, &l.kernel, &l.proj_weight, &l.proj_bias]);
        }
        v
    }
}

pub struct AdaptivePrompts {
    experts: Vec<Expert>,
    layers: Vec<usize>,
    shape: AdaptiveShape,
    grid: (i64, i64),
    tokens: i64,
}

impl AdaptivePrompts {
    /// Prompts at `layers` (static at the first, adaptive after), `tokens` per block.
    pub fn new(p: &tch::nn::Path, ctx: &MethodContext, layers: &[usize], tokens: i64, shape: AdaptiveShape, seed_tag: u64) -> Result<Self> {
        let bad = |m: String| Err(LearnerError::Invalid(m));
        let Encoder::Vit(vit) = &ctx.backbone.encoder else {
            return bad("adaptive prompts (VAPT) read a patch grid: they need a ViT backbone".into());
        };
        let cfg = vit.config();
        if layers.is_empty() || tokens < 1 || shape.kernel < 1 || shape.padding < 0 || shape.hidden < 1 {
            return bad(format!(
                "adaptive prompts need layers, length >= 1, adaptive_kernel >= 1, adaptive_padding >= 0 and adaptive_hidden >= 1 (got {layers:?}, {tokens}, {}, {}, {})",
                shape.kernel, shape.padding, shape.hidden
            ));
        }
        if !(0.0..1.0).contains(&shape.conv_dropout) || !(0.0..1.0).contains(&shape.mlp_dropout) {
            return bad("adaptive dropouts must be in [0, 1)".into());
        }
        let g = cfg.grid_size();
        let out = g + 2 * shape.padding - shape.kernel + 1;
        if out < 1 {
            return bad(format!("adaptive_kernel {} with padding {} does not fit the {g}×{g} patch grid", shape.kernel, shape.padding));
        }
        let (d, t, h, k) = (cfg.embed_dim, tokens, shape.hidden, shape.kernel);
        let first_bound = (6.0 / (3 * cfg.patch_size * cfg.patch_size + d) as f64).sqrt();
        let experts = (0..ctx.num_tasks)
            .map(|task| {
                let e = p / NAME / task;
                let tag = |i: u64| [seed_tag, task as u64, i];
                let mlp_init = |i: u64, dims: &[i64], fan_in: i64| {
                    let b = 1.0 / (fan_in as f64).sqrt();
                    seeded_uniform(ctx.seed, &tag(i), dims, -b, b)
                };
                let layers = (1..layers.len())
                    .map(|j| {
                        let l = &e / "layer" / j;
                        let mut rng = SplitMix64::derive(ctx.seed, &tag(100 + j as u64));
                        let kernel: Vec<f32> = (0..k * k).map(|_| gaussian(&mut rng) as f32).collect();
                        Layer {
                            norm_weight: l.ones("norm_weight", &[d]),
                            norm_bias: l.zeros("norm_bias", &[d]),
                            kernel: var_from(&l, "kernel", Tensor::from_slice(&kernel).view([1, 1, k, k])),
                            proj_weight: l.zeros("proj_weight", &[t, out * out]),
                            proj_bias: l.zeros("proj_bias", &[t]),
                        }
                    })
                    .collect();
                Expert {
                    first: var_from(&e, "prompt", seeded_uniform(ctx.seed, &tag(0), &[1, t, d], -first_bound, first_bound)),
                    layers,
                    mlp: (var_from(&e, "mlp_fc1", mlp_init(1, &[h, d], d)), var_from(&e, "mlp_fc2", mlp_init(2, &[d, h], h))),
                }
            })
            .collect();
        Ok(Self { experts, layers: layers.to_vec(), shape, grid: (out, out), tokens })
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// Trains task `t`'s expert only; with `copy_previous` it starts as task t−1's.
    pub fn begin_task(&mut self, t: usize, copy_previous: bool) {
        // Tensor by tensor, the tasks' copies side by side (shallow: the same storage).
        for k in 0..self.experts[0].tensors().len() {
            let mut per_task: Vec<Tensor> = self.experts.iter().map(|e| e.tensors()[k].shallow_clone()).collect();
            if copy_previous {
                super::copy_previous(&mut per_task, t);
            }
            super::train_only(&mut per_task, t);
        }
    }

    /// The static first-block tokens of each sample's task, `[B or 1, T, D]`.
    pub fn first_tokens(&self, route: Route) -> Tensor {
        match route {
            Route::Task(t) => self.experts[t].first.shallow_clone(),
            Route::Samples(ids) => Tensor::cat(&self.experts.iter().map(|e| e.first.shallow_clone()).collect::<Vec<_>>(), 0).index_select(0, ids),
        }
    }

    /// One generator per adaptive block (`layers[1..]`), for [`promptcl_model::Prompts::with_token_generator`].
    /// Per-sample routes are grouped by task once here (one device read for all blocks).
    pub fn generators<'a>(&'a self, route: Route<'a>, train: bool) -> Vec<(usize, Generator<'a>)> {
        let groups = match route {
            Route::Task(t) => vec![(t, None)],
            Route::Samples(ids) => {
                let mut tasks: Vec<i64> = Vec::try_from(ids.to_device(tch::Device::Cpu)).unwrap_or_default();
                tasks.sort_unstable();
                tasks.dedup();
                tasks.into_iter().map(|t| (t as usize, Some(ids.eq(t).nonzero().squeeze_dim(1)))).collect()
            }
        };
        let groups = std::rc::Rc::new(groups);
        self.layers[1..].iter().enumerate().map(|(j, &l)| (l, Generator { set: self, layer: j, groups: groups.clone(), train })).collect()
    }

    fn compute(&self, task: usize, j: usize, x: &Tensor, grid: (i64, i64), train: bool) -> std::result::Result<Tensor, ModelError> {
        let (e, l) = (&self.experts[task], &self.experts[task].layers[j]);
        let s = x.size();
        let (b, d) = (s[0], s[2]);
        let (rows, cols) = grid;
        let k = self.shape.kernel;
        let out = ((rows + 2 * self.shape.padding - k + 1), (cols + 2 * self.shape.padding - k + 1));
        if out != self.grid {
            return Err(ModelError::Input(format!(
                "adaptive prompts were made for a {0}×{0} patch grid (the config's image size), got {rows}×{cols}",
                self.grid.0 + k - 1 - 2 * self.shape.padding
            )));
        }
        let xn = x.layer_norm([d], Some(&l.norm_weight), Some(&l.norm_bias), 1e-5, false).narrow(1, 1, rows * cols);
        let grid_x = xn.permute([0, 2, 1]).reshape([b, d, rows, cols]);
        let w = l.kernel.expand([d, 1, k, k], false);
        let y = grid_x.conv2d(&w, None::<Tensor>, [1, 1], [self.shape.padding, self.shape.padding], [1, 1], d);
        let y = if train && self.shape.conv_dropout > 0.0 { y.feature_dropout(self.shape.conv_dropout, true) } else { y };
        let y = y.reshape([b, d, out.0 * out.1]).linear(&l.proj_weight, Some(&l.proj_bias)).permute([0, 2, 1]);
        let hidden = y.matmul(&e.mlp.0.tr()).relu();
        let hidden = if train && self.shape.mlp_dropout > 0.0 { hidden.dropout(self.shape.mlp_dropout, true) } else { hidden };
        Ok(&y + hidden.matmul(&e.mlp.1.tr()))
    }
}

/// One adaptive block's token generator under a routing.
pub struct Generator<'a> {
    set: &'a AdaptivePrompts,
    layer: usize,
    /// Each task of the batch and its samples' indices (none: the whole batch).
    groups: std::rc::Rc<Vec<(usize, Option<Tensor>)>>,
    train: bool,
}

impl TokenGenerator for Generator<'_> {
    fn tokens(&self, x: &Tensor, grid: (i64, i64)) -> promptcl_model::Result<Tensor> {
        match self.groups.as_slice() {
            [(t, None)] => return self.set.compute(*t, self.layer, x, grid, self.train),
            // `generators` could not read the ids (not an int64 `[B]`).
            [] => return Err(ModelError::Input("adaptive prompts: the per-sample task ids must be an int64 [B] tensor".into())),
            _ => {}
        }
        let s = x.size();
        let mut out = Tensor::zeros([s[0], self.set.tokens, s[2]], (Kind::Float, x.device()));
        for (t, idx) in self.groups.iter() {
            let Some(idx) = idx else { continue };
            let part = self.set.compute(*t, self.layer, &x.index_select(0, idx), grid, self.train)?;
            out = out.index_copy(0, idx, &part);
        }
        Ok(out)
    }
}
