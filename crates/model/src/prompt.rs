//! Prompt hooks: what a continual-learning method may inject into a frozen
//! transformer, layer by layer, on each call.
//!
//! - prompt tokens (VPT / L2P): extra tokens inserted after the class token at
//!   the input of a block; a later layer's tokens replace earlier ones (VPT-deep);
//! - prefixes (prefix-tuning, DualPrompt / HiDe-Prompt / NoRGa): key and value
//!   rows concatenated in front of the layer's own keys and values;
//! - a score hook on the prefix columns of the attention logits, before the
//!   softmax (NoRGa's non-linear residual gate is one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

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

/// What one layer receives.
#[derive(Default)]
pub struct LayerPrompt<'a> {
    /// `[B or 1, length, embed_dim]`
    pub tokens: Option<Tensor>,
    pub prefix: Option<Prefix>,
    pub score_hook: Option<&'a dyn PrefixScoreHook>,
}

/// Per-layer prompts for one forward call. Layers without an entry run as the
/// frozen model does.
#[derive(Default)]
pub struct Prompts<'a> {
    layers: BTreeMap<usize, LayerPrompt<'a>>,
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

    pub fn layer(&self, layer: usize) -> Option<&LayerPrompt<'a>> {
        self.layers.get(&layer)
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn has_score_hooks(&self) -> bool {
        self.layers.values().any(|l| l.score_hook.is_some())
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
            } else if p.score_hook.is_some() {
                return bad(format!("layer {layer}: a score hook needs a prefix on the same layer"));
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

/// The sequence of a prompted call without its `inserted` prompt tokens, and
/// those tokens (`None` when there were none).
pub(crate) fn split_prompt_tokens(x: &Tensor, inserted: i64) -> (Tensor, Option<Tensor>) {
    if inserted == 0 {
        return (x.shallow_clone(), None);
    }
    let rest = x.size()[1] - 1 - inserted;
    (Tensor::cat(&[x.narrow(1, 0, 1), x.narrow(1, 1 + inserted, rest)], 1), Some(x.narrow(1, 1, inserted)))
}

fn check_float(t: &Tensor, layer: usize, what: &str) -> Result<()> {
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
