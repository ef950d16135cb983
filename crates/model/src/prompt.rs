//! Prompt hooks: what a continual-learning method may inject into a frozen
//! transformer, layer by layer, on each call.
//!
//! - prompt tokens (VPT / L2P): extra tokens inserted after the class token at
//!   the input of a block; a later layer's tokens replace earlier ones (VPT-deep);
//! - prefixes (prefix-tuning, DualPrompt / HiDe-Prompt / NoRGa): key and value
//!   rows concatenated in front of the layer's own keys and values;
//! - a score hook on the prefix columns of the attention logits, before the
//!   softmax (NoRGa's non-linear residual gate is one);
//! - a parallel adapter beside a block's MLP (AdaptFormer);
//! - SSF scale-and-shift after the ops of a block, the patch embedding and
//!   the final norm;
//! - trainable replacements for BERT's embedding layer ([`EmbeddingTuning`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::lora::LayerLora;

/// Key/value prefixes of one layer.
///
/// # Shapes
/// - `key`, `value`: `[B or 1, heads, length, head_dim]`
#[derive(Debug)]
pub struct Prefix {
    pub key: Tensor,
    pub value: Tensor,
}

/// Transforms the prefix part of the attention logits of one layer.
///
/// # Shapes
/// - `scores`: `[B, heads, queries, prefix_length]`, already scaled by 1/√d;
///   the result must have the same shape.
pub trait PrefixScoreHook {
    fn apply(&self, scores: &Tensor) -> Tensor;
}

/// The σ of NoRGa's gate; names follow the official `--gate_act` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GateActivation {
    Identity,
    Sigmoid,
    #[default]
    Tanh,
    Relu,
    Gelu,
    Softplus,
    Elu,
}

impl GateActivation {
    pub const ALL: [GateActivation; 7] = [Self::Identity, Self::Sigmoid, Self::Tanh, Self::Relu, Self::Gelu, Self::Softplus, Self::Elu];

    /// Matches `torch.nn` defaults: exact (erf) GELU, softplus β=1, ELU α=1.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Identity => x.shallow_clone(),
            Self::Sigmoid => x.sigmoid(),
            Self::Tanh => x.tanh(),
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu("none"),
            Self::Softplus => x.softplus(),
            Self::Elu => x.elu(),
        }
    }
}

/// NoRGa's non-linear residual gate (Le et al., 2024, eq. 9; official
/// `NoRGa_Attention`): `s_p ← s_p + α·σ(τ·s_p)` on the prefix logits only.
///
/// `alpha` and `tau` are scalar tensors owned by the method (one pair per
/// prompted layer, shared across tasks), so gradients reach them.
#[derive(Debug)]
pub struct NoRGaGate {
    pub alpha: Tensor,
    pub tau: Tensor,
    pub activation: GateActivation,
}

impl PrefixScoreHook for NoRGaGate {
    fn apply(&self, scores: &Tensor) -> Tensor {
        let kind = scores.kind();
        let tau = self.tau.to_kind(kind);
        let alpha = self.alpha.to_kind(kind);
        scores + self.activation.apply(&(scores * tau)) * alpha
    }
}

/// A branch added beside a block's MLP: reads the residual stream after the
/// attention (before `norm2`) and returns what is added to it with the MLP's
/// output. It computes in the dtype of its input.
///
/// # Shapes
/// - `x`: `[B, S, D]` → `[B, S, D]`
pub trait ParallelAdapter {
    fn apply(&self, x: &Tensor) -> Tensor;
}

/// Prompt tokens computed from what enters a layer (VAPT's adaptive prompts:
/// the previous block's patch tokens through the method's own modules). The
/// tokens replace the prompt tokens the sequence carried in, as deep prompts do.
///
/// # Shapes
/// - `x`: `[B, 1 + N, D]` in fp32, the layer's input without prompt tokens
///   (class token first, then the N patches in row-major grid order)
/// - `grid`: the patch grid `(rows, cols)`, `rows · cols = N`
/// - returns `[B or 1, P, D]`, or an error naming what does not fit (a grid
///   the generator was not made for)
pub trait TokenGenerator {
    fn tokens(&self, x: &Tensor, grid: (i64, i64)) -> Result<Tensor>;
}

/// AdaptFormer's adapter as LAMDA-PILOT's ViT uses it (`vit_adapter.py`
/// `Adapter`, `ffn_option = "parallel"`, no LayerNorm, `add_residual=False`):
/// `scale · up(dropout(ReLU(down(x))))`. The tensors belong to the method.
///
/// # Shapes
/// - `down_weight`: `[r, D]`, `down_bias`: `[r]`, `up_weight`: `[D, r]`, `up_bias`: `[D]`
#[derive(Debug)]
pub struct AdaptFormer {
    pub down_weight: Tensor,
    pub down_bias: Tensor,
    pub up_weight: Tensor,
    pub up_bias: Tensor,
    pub scale: f64,
    /// Dropout after the ReLU (PILOT: 0.1), applied only when `train`.
    pub dropout: f64,
    pub train: bool,
}

impl ParallelAdapter for AdaptFormer {
    fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.linear(&self.down_weight.to_kind(kind), Some(self.down_bias.to_kind(kind))).relu();
        let h = if self.train && self.dropout > 0.0 { h.dropout(self.dropout, true) } else { h };
        h.linear(&self.up_weight.to_kind(kind), Some(self.up_bias.to_kind(kind))) * self.scale
    }
}

/// SSF's scale and shift of one op's output, over its last dimension:
/// `x·scale + shift` (Lian et al., 2022; PILOT `vit_ssf.py` `ssf_ada`).
///
/// # Shapes
/// - `scale`, `shift`: `[C]`, C the op's output width
#[derive(Debug)]
pub struct Ssf {
    pub scale: Tensor,
    pub shift: Tensor,
}

impl Ssf {
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x * self.scale.to_kind(kind) + self.shift.to_kind(kind)
    }

    fn check(&self, width: i64, where_: &str) -> Result<()> {
        for (name, t) in [("scale", &self.scale), ("shift", &self.shift)] {
            if t.size() != [width] {
                return Err(ModelError::Input(format!("{where_}: SSF {name} must be [{width}], got {:?}", t.size())));
            }
        }
        Ok(())
    }
}

/// SSF inside one block, at PILOT's places: after `norm1`, the attention's
/// `qkv` and `proj`, after `norm2`, the MLP's `fc1` (before GELU) and `fc2`.
#[derive(Debug)]
pub struct SsfBlock {
    pub norm1: Ssf,
    pub qkv: Ssf,
    pub proj: Ssf,
    pub norm2: Ssf,
    pub fc1: Ssf,
    pub fc2: Ssf,
}

impl SsfBlock {
    /// `embed_dim` and the MLP's hidden width.
    pub(crate) fn check(&self, layer: usize, d: i64, hidden: i64) -> Result<()> {
        let at = |op: &str| format!("layer {layer} {op}");
        self.norm1.check(d, &at("norm1"))?;
        self.qkv.check(3 * d, &at("qkv"))?;
        self.proj.check(d, &at("proj"))?;
        self.norm2.check(d, &at("norm2"))?;
        self.fc1.check(hidden, &at("fc1"))?;
        self.fc2.check(d, &at("fc2"))
    }
}

/// The zero-initialised gate of LLaMA-Adapter and of Diep et al. (ICML 2025,
/// official `llama-adaptor-nonlinear` `llama/model.py`): the prefix gets its
/// own softmax, scaled by `tanh(g)`, and is added to the token attention,
/// `softmax(q·k_tokᵀ/√d)·v_tok + tanh(g)·softmax(q·k_preᵀ/√d)·v_pre`, so a
/// gate at 0 leaves the layer exactly as it was.
///
/// # Shapes
/// - `PerHead`: `[heads]` (the official `typ_gate = "random"`), or `[B or 1, heads]`
///   when samples carry different gates (task-specific prompts routed per sample)
/// - `PerQuery`: `[heads, head_dim]`, `g = q_h · w_h` for every query (`typ_gate = "adapt"`),
///   or `[B or 1, heads, head_dim]`
#[derive(Debug)]
pub enum ZeroInitGate {
    PerHead(Tensor),
    PerQuery(Tensor),
}

impl ZeroInitGate {
    /// `tanh(g)` broadcastable to `[B, H, N, 1]`, for queries `q [B, H, N, d]` (fp32).
    pub(crate) fn factor(&self, q: &Tensor) -> Tensor {
        match self {
            Self::PerHead(g) => {
                let heads = *g.size().last().unwrap_or(&1);
                g.to_kind(Kind::Float).view([-1, heads, 1, 1]).tanh()
            }
            Self::PerQuery(w) => q.to_kind(Kind::Float).matmul(&w.to_kind(Kind::Float).unsqueeze(-1)).tanh(),
        }
    }
}

/// What one layer receives.
#[derive(Default)]
pub struct LayerPrompt<'a> {
    /// `[B or 1, length, embed_dim]`
    pub tokens: Option<Tensor>,
    pub prefix: Option<Prefix>,
    pub score_hook: Option<&'a dyn PrefixScoreHook>,
    /// The prefix as a gated, separately normalised branch (instead of one joint softmax).
    pub zero_gate: Option<&'a ZeroInitGate>,
    pub adapter: Option<&'a dyn ParallelAdapter>,
    pub ssf: Option<&'a SsfBlock>,
    /// Low-rank updates of the layer's attention projections.
    pub lora: Option<&'a LayerLora>,
    /// Prompt tokens made from the layer's input (ViT only; instead of `tokens`).
    pub token_generator: Option<&'a dyn TokenGenerator>,
}

/// Replacements for BERT's embedding layer: the word-embedding rows added
/// beyond the loaded weights (the entity markers, [`crate::BertModel::new_rows`]),
/// the position and token-type embeddings and the embedding LayerNorm. The
/// WAVE-CRE group's code trains exactly these on its first task.
///
/// # Shapes
/// - `new_rows`: `[new_rows, D]`; `position`: `[max_position_embeddings, D]`;
///   `token_type`: `[type_vocab_size, D]`; `norm_weight`, `norm_bias`: `[D]`
#[derive(Debug)]
pub struct EmbeddingTuning {
    pub new_rows: Tensor,
    pub position: Tensor,
    pub token_type: Tensor,
    pub norm_weight: Tensor,
    pub norm_bias: Tensor,
}

impl EmbeddingTuning {
    /// Checks the shapes against the model's (`[rows, dim]` each, `[dim]` for the norm).
    pub(crate) fn check(&self, new_rows: i64, dim: i64, positions: i64, types: i64) -> Result<()> {
        for (name, t, rows) in
            [("new_rows", &self.new_rows, new_rows), ("position", &self.position, positions), ("token_type", &self.token_type, types)]
        {
            if t.size() != [rows, dim] {
                return Err(ModelError::Input(format!("embedding tuning: `{name}` must be [{rows}, {dim}], got {:?}", t.size())));
            }
        }
        for (name, t) in [("norm_weight", &self.norm_weight), ("norm_bias", &self.norm_bias)] {
            if t.size() != [dim] {
                return Err(ModelError::Input(format!("embedding tuning: `{name}` must be [{dim}], got {:?}", t.size())));
            }
        }
        Ok(())
    }
}

/// Per-layer prompts for one forward call. Layers without an entry run as the
/// frozen model does.
#[derive(Default)]
pub struct Prompts<'a> {
    layers: BTreeMap<usize, LayerPrompt<'a>>,
    /// SSF after the patch embedding (ViT; `[D]`).
    pub(crate) ssf_embed: Option<&'a Ssf>,
    /// SSF after the final norm, on every token (ViT; `[D]`).
    pub(crate) ssf_final: Option<&'a Ssf>,
    /// BERT's embedding layer replaced.
    pub(crate) embeddings: Option<&'a EmbeddingTuning>,
}

impl<'a> Prompts<'a> {
    pub fn none() -> Self {
        Self::default()
    }

    /// Prompt tokens inserted after the class token at the input of `layer`.
    pub fn with_tokens(mut self, layer: usize, tokens: &Tensor) -> Self {
        self.layers.entry(layer).or_default().tokens = Some(tokens.shallow_clone());
        self
    }

    /// Prompt tokens at the input of `layer` computed from that input by `generator`
    /// (replacing the tokens inserted before; ViT only).
    pub fn with_token_generator(mut self, layer: usize, generator: &'a dyn TokenGenerator) -> Self {
        self.layers.entry(layer).or_default().token_generator = Some(generator);
        self
    }

    /// Key/value prefixes for `layer`.
    pub fn with_prefix(mut self, layer: usize, key: &Tensor, value: &Tensor) -> Self {
        self.layers.entry(layer).or_default().prefix = Some(Prefix { key: key.shallow_clone(), value: value.shallow_clone() });
        self
    }

    /// A hook on the prefix logits of `layer` (requires a prefix there).
    pub fn with_score_hook(mut self, layer: usize, hook: &'a dyn PrefixScoreHook) -> Self {
        self.layers.entry(layer).or_default().score_hook = Some(hook);
        self
    }

    /// The prefix of `layer` as a zero-initialised gated branch ([`ZeroInitGate`]).
    pub fn with_zero_gate(mut self, layer: usize, gate: &'a ZeroInitGate) -> Self {
        self.layers.entry(layer).or_default().zero_gate = Some(gate);
        self
    }

    /// Low-rank updates of `layer`'s attention projections ([`LayerLora`]).
    pub fn with_lora(mut self, layer: usize, lora: &'a LayerLora) -> Self {
        self.layers.entry(layer).or_default().lora = Some(lora);
        self
    }

    /// An adapter beside the MLP of `layer`.
    pub fn with_adapter(mut self, layer: usize, adapter: &'a dyn ParallelAdapter) -> Self {
        self.layers.entry(layer).or_default().adapter = Some(adapter);
        self
    }

    /// SSF inside `layer`.
    pub fn with_ssf(mut self, layer: usize, ssf: &'a SsfBlock) -> Self {
        self.layers.entry(layer).or_default().ssf = Some(ssf);
        self
    }

    /// SSF after the patch embedding and after the final norm (the ViT's; BERT has none).
    pub fn with_ssf_ends(mut self, embed: &'a Ssf, fin: &'a Ssf) -> Self {
        self.ssf_embed = Some(embed);
        self.ssf_final = Some(fin);
        self
    }

    /// BERT's embedding layer with these tensors in place of its own.
    pub fn with_embeddings(mut self, tuning: &'a EmbeddingTuning) -> Self {
        self.embeddings = Some(tuning);
        self
    }

    pub fn has_embeddings(&self) -> bool {
        self.embeddings.is_some()
    }

    pub fn layer(&self, layer: usize) -> Option<&LayerPrompt<'a>> {
        self.layers.get(&layer)
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn has_score_hooks(&self) -> bool {
        self.layers.values().any(|l| l.score_hook.is_some())
    }

    /// Whether any SSF is set (the BERT encoder takes none yet).
    pub fn has_ssf(&self) -> bool {
        self.ssf_embed.is_some() || self.ssf_final.is_some() || self.layers.values().any(|l| l.ssf.is_some())
    }

    /// SSF widths against the ViT's geometry.
    pub(crate) fn validate_ssf(&self, embed_dim: i64, mlp_hidden: i64) -> Result<()> {
        for (name, s) in [("patch embedding", self.ssf_embed), ("final norm", self.ssf_final)] {
            if let Some(s) = s {
                s.check(embed_dim, name)?;
            }
        }
        for (&layer, p) in &self.layers {
            if let Some(s) = p.ssf {
                s.check(layer, embed_dim, mlp_hidden)?;
            }
        }
        Ok(())
    }

    /// Checks every hook against the model's geometry so that a wrong prompt
    /// shape is an `Err` naming the layer, not a libtorch panic deep inside.
    pub fn validate(&self, depth: usize, batch: i64, embed_dim: i64, heads: i64) -> Result<()> {
        let head_dim = embed_dim / heads;
        let bad = |m: String| Err(ModelError::Input(m));
        for (&layer, p) in &self.layers {
            if layer >= depth {
                return bad(format!("prompt for layer {layer}, but the model has {depth} layers"));
            }
            if let Some(t) = &p.tokens {
                let s = t.size();
                if s.len() != 3 || (s[0] != 1 && s[0] != batch) || s[2] != embed_dim {
                    return bad(format!("layer {layer}: prompt tokens must be [{batch} or 1, length, {embed_dim}], got {s:?}"));
                }
                check_float(t, layer, "prompt tokens")?;
            }
            if p.tokens.is_some() && p.token_generator.is_some() {
                return bad(format!("layer {layer}: both prompt tokens and a token generator; a layer takes one"));
            }
            if let Some(pre) = &p.prefix {
                for (name, t) in [("key", &pre.key), ("value", &pre.value)] {
                    let s = t.size();
                    if s.len() != 4 || (s[0] != 1 && s[0] != batch) || s[1] != heads || s[3] != head_dim {
                        return bad(format!("layer {layer}: prefix {name} must be [{batch} or 1, {heads}, length, {head_dim}], got {s:?}"));
                    }
                    check_float(t, layer, name)?;
                }
                if pre.key.size()[2] != pre.value.size()[2] {
                    return bad(format!("layer {layer}: prefix key length {} differs from value length {}", pre.key.size()[2], pre.value.size()[2]));
                }
            } else if p.score_hook.is_some() || p.zero_gate.is_some() {
                return bad(format!("layer {layer}: a score hook or a zero-init gate needs a prefix on the same layer"));
            }
            if let Some(lora) = p.lora {
                lora.check(layer, batch, embed_dim)?;
            }
            if let Some(g) = p.zero_gate {
                if p.score_hook.is_some() {
                    return bad(format!("layer {layer}: a zero-init gate and a score hook are two gates; give one"));
                }
                let (t, want) = match g {
                    ZeroInitGate::PerHead(t) => (t, vec![heads]),
                    ZeroInitGate::PerQuery(t) => (t, vec![heads, head_dim]),
                };
                let s = t.size();
                let per_sample = s.len() == want.len() + 1 && (s[0] == 1 || s[0] == batch) && s[1..] == want[..];
                if s != want && !per_sample {
                    let dims = want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                    return bad(format!("layer {layer}: zero-init gate must be [{dims}] or [{batch} or 1, {dims}], got {s:?}"));
                }
                check_float(t, layer, "zero-init gate")?;
            }
        }
        Ok(())
    }
}

/// Prompt-token insertion shared by the ViT and BERT: tokens go right after the
/// class token, and a later layer's tokens replace those an earlier layer put
/// there (VPT-deep), so `inserted` is how many sit there now.
///
/// # Shapes
/// - `x`: `[B, 1 + inserted + N, …]`; `tokens`: `[B, P, …]` (same trailing dims)
/// - returns `[B, 1 + P + N, …]`
pub(crate) fn splice_prompt_tokens(x: &Tensor, tokens: &Tensor, inserted: i64) -> Tensor {
    let rest = x.size()[1] - 1 - inserted;
    Tensor::cat(&[x.narrow(1, 0, 1), tokens.shallow_clone(), x.narrow(1, 1 + inserted, rest)], 1)
}

/// `layer`'s generated prompt tokens for `x` (the layer's input with `inserted`
/// prompt tokens), checked against `[B or 1, P, D]`.
pub(crate) fn generated_tokens(generator: &dyn TokenGenerator, x: &Tensor, inserted: i64, grid: (i64, i64), layer: usize) -> Result<Tensor> {
    let (clean, _) = split_prompt_tokens(&x.to_kind(Kind::Float), inserted);
    let t = generator.tokens(&clean, grid)?;
    let (s, b, d) = (t.size(), x.size()[0], x.size()[2]);
    if s.len() != 3 || (s[0] != 1 && s[0] != b) || s[2] != d || s[1] < 1 {
        return Err(ModelError::Input(format!("layer {layer}: the token generator gave {s:?}, expected [{b} or 1, length >= 1, {d}]")));
    }
    Ok(t)
}

/// The sequence of a prompted call without its `inserted` prompt tokens, and
/// those tokens (`None` when there were none).
pub(crate) fn split_prompt_tokens(x: &Tensor, inserted: i64) -> (Tensor, Option<Tensor>) {
    if inserted == 0 {
        return (x.shallow_clone(), None);
    }
    let rest = x.size()[1] - 1 - inserted;
    (Tensor::cat(&[x.narrow(1, 0, 1), x.narrow(1, 1 + inserted, rest)], 1), Some(x.narrow(1, 1, inserted)))
}

pub(crate) fn check_float(t: &Tensor, layer: usize, what: &str) -> Result<()> {
    if matches!(t.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        Ok(())
    } else {
        Err(ModelError::Input(format!("layer {layer}: {what} must be a float tensor, got {:?}", t.kind())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// s + α·σ(τ·s) with s = ±0.5, τ = 2, α = 0.3, σ values computed by hand
    /// (σ(±1) from their closed forms).
    #[test]
    fn each_gate_activation_matches_hand_computed_values() {
        let cases = [
            (GateActivation::Identity, 1.0, -1.0),
            (GateActivation::Sigmoid, 0.731_058_578_6, 0.268_941_421_4),
            (GateActivation::Tanh, 0.761_594_156_0, -0.761_594_156_0),
            (GateActivation::Relu, 1.0, 0.0),
            (GateActivation::Gelu, 0.841_344_746_1, -0.158_655_253_9),
            (GateActivation::Softplus, 1.313_261_687_5, 0.313_261_687_5),
            (GateActivation::Elu, 1.0, -0.632_120_558_8),
        ];
        for (activation, pos, neg) in cases {
            let gate = NoRGaGate { alpha: Tensor::from(0.3f32), tau: Tensor::from(2.0f32), activation };
            let s = Tensor::from_slice(&[0.5f32, -0.5]);
            let out: Vec<f32> = gate.apply(&s).try_into().unwrap();
            let want = [0.5 + 0.3 * pos, -0.5 + 0.3 * neg];
            for (o, w) in out.iter().zip(want) {
                assert!((*o as f64 - w).abs() < 1e-6, "{activation:?}: {o} vs {w}");
            }
        }
    }

    #[test]
    fn gate_names_follow_the_official_flags() {
        let a: GateActivation = serde_json::from_str("\"softplus\"").unwrap();
        assert_eq!(a, GateActivation::Softplus);
        assert!(serde_json::from_str::<GateActivation>("\"swish\"").is_err());
    }
}
