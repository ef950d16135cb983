//! How a task's prefix keys and values are made from its trainable
//! parameters (issue #18): the expert's *parameterisation*, independent of
//! the continual method that owns the prompts and of the gate that mixes
//! them into the attention.
//!
//! - `direct`: free key/value tensors (L2P, DualPrompt, HiDe-Prompt).
//! - `reparam-mlp` / `reparam-linear`: Le et al., "Revisiting prefix-tuning"
//!   (ICLR 2025), official `Minhchuyentoancbn/ReparamPrefix`
//!   `CV/src/models/vit_prompt/vit.py` `PrefixTransformer` with `SHARE_KV`:
//!   per prompted layer an embedding `[L, D]` and its own generator,
//!   `Linear(D, 48) → Tanh → Linear(48, 2D)` (`SHARE_TYPE = "non-linear"`) or
//!   `Linear(D, 2D) → Tanh` (`"linear"`), whose output columns interleave key
//!   and value (`reshape(L, D, 2)`: even columns the key, odd the value). The
//!   official `NUM_TOKENS` is 2L (`num_experts = NUM_TOKENS // 2`).
//! - `frozen-projection`: prompt tokens `[L, D]` through the layer's frozen key
//!   and value projections, biases included (the official `KV_ONLY` "simple
//!   share" and the zero-init paper's `K_P = W_K·P`); no LayerNorm, as there.
//! - `nonlinear`: Diep et al., "On zero-initialized attention" (ICML 2025),
//!   official `duyhominhnguyen/llama-adaptor-nonlinear`
//!   `alpaca_finetuning_v1/llama/model.py` `ParameterGenerator`
//!   (`typ_act = "hypermodel"`): a layer embedding `[E]` (64, `nn.Embedding`
//!   N(0, 1)) through one decoder shared by the layers,
//!   `Linear(E, h) → ReLU → Linear(h, L·D)` (the output layer
//!   `hyperfanin_init_weight`-ed), giving prompt tokens that then pass the
//!   frozen key and value projections as in `frozen-projection`.
//!
//! **Continual learning** (the official code fine-tunes once): every task
//! owns its embeddings. The generator is `shared` (one, trained by every
//! task; default) or `per-task` (its own, trained only in its task). Either
//! way a finished task's prefixes are *sealed*: written into a stored,
//! non-trainable tensor at the end of its task and read from there after, so
//! a later task's training of a shared generator cannot change them, and
//! inference costs what direct prefixes cost. With a per-task generator,
//! sealing changes nothing numerically (its generator never trains again);
//! `shared` is the default because it is the paper's point, parameters
//! shared across prompts, carried over to tasks, at the memory of one
//! generator.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::methods::common::{gaussian, linear, seeded_uniform, var_from, LinearInit};
use crate::{Backbone, Encoder, LearnerError, Result};

/// How prefixes are parameterised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptParam {
    #[default]
    Direct,
    ReparamMlp,
    ReparamLinear,
    FrozenProjection,
    Nonlinear,
    /// VAPT's adaptive token prompts ([`super::adaptive_prompt`]): not prefixes, so
    /// only the HiDe engine's task prompts take it (without a gate or pool).
    Adaptive,
}

/// Who owns a generated parameterisation's generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// One generator trained by every task; finished tasks' prefixes sealed.
    #[default]
    Shared,
    /// One generator per task, trained in its task only (copied from the
    /// previous task's when the method copies prompts forward).
    PerTask,
}

crate::method_params! {
    /// The prefix expert: its parameterisation and its gate (`[method.params] prompt = { … }`).
    pub struct PrefixExpert {
        /// `direct`, `reparam-mlp`, `reparam-linear`, `frozen-projection` or `nonlinear`.
        pub param: PromptParam = PromptParam::Direct,
        /// None (one joint softmax), a NoRGa activation (`sigmoid`, `tanh`, …) or
        /// `zero-init` / `zero-init-query` (a separately normalised prefix scaled by tanh(g)).
        pub gate: Option<super::gate::PrefixGate> = None,
        /// Hidden width of `reparam-mlp`'s generator (official 48).
        pub reparam_hidden: i64 = 48,
        /// `shared` (default) or `per-task` generator.
        pub generator: Generator = Generator::Shared,
        /// Width of `nonlinear`'s layer embedding (official `dim_layer = 64`).
        pub nonlinear_embed: i64 = 64,
        /// Hidden width of `nonlinear`'s decoder (official `hidden_dim=64`, ReLU).
        pub nonlinear_hidden: i64 = 64,
        /// `adaptive`: k of the k×k kernel shared by the channels (official `KERNEL = 2`).
        pub adaptive_kernel: i64 = 2,
        /// `adaptive`: the convolution's zero padding (official `PADDING = 0`).
        pub adaptive_padding: i64 = 0,
        /// `adaptive`: hidden width of the residual feature MLP (official `HIDDEN_DIM = 8`).
        pub adaptive_hidden: i64 = 8,
        /// `adaptive`: `Dropout2d` after the convolution (official 0.1, hard-coded).
        pub adaptive_conv_dropout: f64 = 0.1,
        /// `adaptive`: dropout after the MLP's ReLU (official `DROPOUT_MLP = 0.1`).
        pub adaptive_mlp_dropout: f64 = 0.1,
    }
}

impl PrefixExpert {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.reparam_hidden < 1 || self.nonlinear_embed < 1 || self.nonlinear_hidden < 1 {
            return Err(format!(
                "prompt.reparam_hidden ({}), prompt.nonlinear_embed ({}) and prompt.nonlinear_hidden ({}) must be >= 1",
                self.reparam_hidden, self.nonlinear_embed, self.nonlinear_hidden
            ));
        }
        Ok(())
    }
}

/// One layer's frozen key and value projections `[D, D]`, `[D]`, in f32.
pub struct FrozenKv {
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    heads: i64,
}

impl FrozenKv {
    pub fn of(backbone: &Backbone, layer: usize) -> Result<Self> {
        let get = |key: String| backbone.frozen_f32(&key);
        let d = backbone.token_dim();
        let (key, value) = match &backbone.encoder {
            Encoder::Vit(_) => {
                let (w, b) = (get(format!("blocks.{layer}.attn.qkv.weight"))?, get(format!("blocks.{layer}.attn.qkv.bias")));
                let b = b.unwrap_or_else(|_| Tensor::zeros([3 * d], (Kind::Float, w.device())));
                ((w.narrow(0, d, d), b.narrow(0, d, d)), (w.narrow(0, 2 * d, d), b.narrow(0, 2 * d, d)))
            }
            Encoder::Bert(_) => {
                let one = |which: &str| -> Result<(Tensor, Tensor)> {
                    let base = format!("encoder.layer.{layer}.attention.self.{which}");
                    Ok((get(format!("{base}.weight"))?, get(format!("{base}.bias"))?))
                };
                (one("key")?, one("value")?)
            }
        };
        Ok(Self { key, value, heads: backbone.num_heads() })
    }

    /// Tokens `[.., L, D]` → key and value stacked `[.., 2, L, H, hd]` (the official prefix layout).
    pub fn project(&self, tokens: &Tensor) -> Tensor {
        let per_head = |(w, b): &(Tensor, Tensor)| {
            let out = tokens.linear(w, Some(b));
            let mut shape = out.size();
            let n = shape.len();
            shape.splice(n - 1.., [self.heads, -1]);
            out.view(shape.as_slice())
        };
        Tensor::stack(&[per_head(&self.key), per_head(&self.value)], -4)
    }
}

/// A generator's trainable layers.
enum Maker {
    /// Per prompted layer: `fc1` and, for the non-linear variant, `fc2`.
    Reparam(Vec<(nn::Linear, Option<nn::Linear>)>),
    /// The hypernetwork's decoder, shared by the layers.
    Hyper(nn::Linear, nn::Linear),
}

impl Maker {
    fn tensors(&mut self) -> Vec<&mut Tensor> {
        fn lin(l: &mut nn::Linear) -> impl Iterator<Item = &mut Tensor> {
            std::iter::once(&mut l.ws).chain(l.bs.as_mut())
        }
        match self {
            Self::Reparam(layers) => layers.iter_mut().flat_map(|(a, b)| lin(a).chain(b.iter_mut().flat_map(lin))).collect(),
            Self::Hyper(a, b) => lin(a).chain(lin(b)).collect(),
        }
    }
}

/// What a prompt set's parameters are and how they become prefixes.
pub struct Parameterization {
    param: PromptParam,
    generator: Generator,
    /// One (shared) or one per task; empty for `direct` and `frozen-projection`.
    makers: Vec<Maker>,
    /// Per prompted layer, for `frozen-projection` and `nonlinear`.
    kv: Vec<FrozenKv>,
    length: i64,
    heads: i64,
    head_dim: i64,
    token_dim: i64,
}

impl Parameterization {
    /// `gen` is the generator's variable path (`<prompt>_gen`).
    pub fn new(
        gen: &nn::Path,
        backbone: &Backbone,
        expert: &PrefixExpert,
        layers: &[usize],
        length: i64,
        num_tasks: usize,
        seed: u64,
        tag: u64,
    ) -> Result<Self> {
        expert.validate().map_err(LearnerError::Invalid)?;
        if expert.param == PromptParam::Adaptive {
            return Err(LearnerError::Invalid(
                "prompt.param = \"adaptive\" (VAPT) makes prompt tokens, not prefixes: the HiDe engine's task prompts (hide-prompt) take it".into(),
            ));
        }
        let d = backbone.token_dim();
        let owners = match (expert.param, expert.generator) {
            (PromptParam::Direct | PromptParam::FrozenProjection, _) => 0,
            (_, Generator::Shared) => 1,
            (_, Generator::PerTask) => num_tasks,
        };
        let makers = (0..owners)
            .map(|t| {
                let p = if expert.generator == Generator::PerTask { gen / t } else { gen.clone() };
                let tags = |i: u64| [tag, t as u64, i];
                match expert.param {
                    PromptParam::Nonlinear => {
                        let (e, h) = (expert.nonlinear_embed, expert.nonlinear_hidden);
                        let fc1 = linear(&(&p / "fc1"), e, h, seed, &tags(1000), LinearInit::Torch);
                        // `hyperfanin_init_weight(prompt, hidden, D)`: U(±1e-3·√(3 / (h·D))), zero bias.
                        let bound = 1e-3 * (3.0 / (h * d) as f64).sqrt();
                        let q = &p / "fc2";
                        let fc2 = nn::Linear {
                            ws: var_from(&q, "weight", seeded_uniform(seed, &tags(1001), &[length * d, h], -bound, bound)),
                            bs: Some(var_from(&q, "bias", Tensor::zeros([length * d], (Kind::Float, tch::Device::Cpu)))),
                        };
                        Maker::Hyper(fc1, fc2)
                    }
                    _ => Maker::Reparam(
                        (0..layers.len())
                            .map(|i| {
                                let q = &p / i;
                                let t = |j: u64| tags(2 * i as u64 + j);
                                if expert.param == PromptParam::ReparamMlp {
                                    let h = expert.reparam_hidden;
                                    (
                                        linear(&(&q / "fc1"), d, h, seed, &t(0), LinearInit::Torch),
                                        Some(linear(&(&q / "fc2"), h, 2 * d, seed, &t(1), LinearInit::Torch)),
                                    )
                                } else {
                                    (linear(&(&q / "fc1"), d, 2 * d, seed, &t(0), LinearInit::Torch), None)
                                }
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        let kv = match expert.param {
            PromptParam::FrozenProjection | PromptParam::Nonlinear => layers.iter().map(|&l| FrozenKv::of(backbone, l)).collect::<Result<_>>()?,
            _ => Vec::new(),
        };
        Ok(Self {
            param: expert.param,
            generator: expert.generator,
            makers,
            kv,
            length,
            heads: backbone.num_heads(),
            head_dim: backbone.head_dim(),
            token_dim: d,
        })
    }

    pub fn is_direct(&self) -> bool {
        self.param == PromptParam::Direct
    }

    pub fn has_generator(&self) -> bool {
        !self.makers.is_empty()
    }

    pub fn per_task(&self) -> bool {
        self.generator == Generator::PerTask && self.has_generator()
    }

    /// The shape of one task's parameters for a pool of `m` prompts over `layers` layers.
    pub fn param_dims(&self, m: i64, layers: i64) -> Vec<i64> {
        match self.param {
            PromptParam::Direct => vec![m, layers, 2, self.length, self.heads, self.head_dim],
            PromptParam::Nonlinear => vec![m, layers, self.makers_embed()],
            _ => vec![m, layers, self.length, self.token_dim],
        }
    }

    fn makers_embed(&self) -> i64 {
        match self.makers.first() {
            Some(Maker::Hyper(fc1, _)) => fc1.ws.size()[1],
            _ => 0,
        }
    }

    /// A task's initial parameters, drawn from the seeded stream `parts`: U(−1, 1) for
    /// `direct` (promptcl's prefix methods), the official VPT/ReparamPrefix
    /// U(±√(6 / (3·p² + D))) for embeddings and tokens (p the ViT's patch, 16 for text), and
    /// N(0, 1) for `nonlinear`'s layer embeddings (`nn.Embedding`).
    pub fn init(&self, backbone: &Backbone, seed: u64, parts: &[u64], dims: &[i64]) -> Tensor {
        match self.param {
            PromptParam::Direct => seeded_uniform(seed, parts, dims, -1.0, 1.0),
            PromptParam::Nonlinear => {
                let n: i64 = dims.iter().product();
                let mut rng = promptcl_stream::SplitMix64::derive(seed, parts);
                let v: Vec<f32> = (0..n).map(|_| gaussian(&mut rng) as f32).collect();
                Tensor::from_slice(&v).view(dims)
            }
            _ => {
                let patch = match &backbone.encoder {
                    Encoder::Vit(v) => v.config().patch_size,
                    Encoder::Bert(_) => 16,
                };
                let val = (6.0 / (3 * patch * patch + self.token_dim) as f64).sqrt();
                seeded_uniform(seed, parts, dims, -val, val)
            }
        }
    }

    /// Prefixes `[M, layers, 2, L, H, hd]` from task `task`'s parameters `p` (see [`Self::param_dims`]).
    pub fn prefixes(&self, p: &Tensor, task: usize) -> Tensor {
        let maker = self.makers.get(if self.per_task() { task } else { 0 });
        match (self.param, maker) {
            (PromptParam::Direct, _) => p.shallow_clone(),
            (PromptParam::FrozenProjection, _) => self.through_kv(p),
            (PromptParam::Nonlinear, Some(Maker::Hyper(fc1, fc2))) => {
                let s = p.size();
                let tokens = fc2.forward(&fc1.forward(p).relu()).view([s[0], s[1], self.length, self.token_dim]);
                self.through_kv(&tokens)
            }
            (_, Some(Maker::Reparam(layers))) => {
                let per_layer: Vec<Tensor> = layers
                    .iter()
                    .enumerate()
                    .map(|(i, (fc1, fc2))| {
                        let h = fc1.forward(&p.select(1, i as i64));
                        let out = match fc2 {
                            Some(fc2) => fc2.forward(&h.tanh()),
                            None => h.tanh(),
                        };
                        // [M, L, 2D] → [M, L, D, 2]: even columns the key, odd the value.
                        let s = out.size();
                        let kv = out.view([s[0], s[1], self.token_dim, 2]).permute([0, 3, 1, 2]);
                        kv.reshape([s[0], 2, s[1], self.heads, self.head_dim])
                    })
                    .collect();
                Tensor::stack(&per_layer, 1)
            }
            _ => unreachable!("a generated parameterisation has its generator"),
        }
    }

    fn through_kv(&self, tokens: &Tensor) -> Tensor {
        Tensor::stack(&self.kv.iter().enumerate().map(|(i, kv)| kv.project(&tokens.select(1, i as i64))).collect::<Vec<_>>(), 1)
    }

    /// The generator's tensors of `task` (all of the shared one), for training switches and copies.
    pub fn generator_of(&mut self, task: usize) -> Vec<&mut Tensor> {
        let i = if self.per_task() { task } else { 0 };
        self.makers.get_mut(i).map(Maker::tensors).unwrap_or_default()
    }

    /// Per-task generators: trains task `t`'s only, started as a copy of
    /// task t−1's when `copy_previous`. A shared generator trains in every task.
    pub fn begin_task(&mut self, t: usize, copy_previous: bool) {
        if !self.per_task() {
            return;
        }
        if copy_previous && t > 0 {
            let prev: Vec<Tensor> = self.generator_of(t - 1).into_iter().map(|v| v.detach().copy()).collect();
            tch::no_grad(|| {
                for (v, p) in self.generator_of(t).into_iter().zip(&prev) {
                    v.copy_(p);
                }
            });
        }
        for (i, maker) in self.makers.iter_mut().enumerate() {
            for v in maker.tensors() {
                if i != t {
                    v.zero_grad();
                }
                let _ = v.set_requires_grad(i == t);
            }
        }
    }
}
