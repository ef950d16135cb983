//! The attention core shared by the ViT and BERT encoders, with prefixes and
//! the prefix score hook.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::prompt::{Prefix, PrefixScoreHook, ZeroInitGate};

/// Which attention kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionImpl {
    /// Fused SDPA on CUDA unless a score hook needs the logits; explicit on CPU.
    #[default]
    Auto,
    /// `softmax(q·kᵀ/√d)·v` spelled out, as the official research code does.
    Explicit,
    /// `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).
    /// Falls back to explicit when a score hook is present.
    Fused,
}

impl AttentionImpl {
    fn fused(self, on_cuda: bool, has_hook: bool) -> bool {
        !has_hook
            && match self {
                Self::Auto => on_cuda,
                Self::Explicit => false,
                Self::Fused => true,
            }
    }
}

/// Attention with optional prefixes.
///
/// Softmax and the score hook always run in fp32, whatever the compute dtype,
/// as PyTorch autocast does.
///
/// # Shapes
/// - `q`, `k`, `v`: `[B, H, N, d]`
/// - `prefix.key`, `prefix.value`: `[B or 1, H, L, d]`
/// - `mask`: additive, broadcastable to `[B, H, N, N]` (e.g. `[B, 1, 1, N]`); prefix columns are never masked
/// - returns `[B, H, N, d]`
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    prefix: Option<&Prefix>,
    hook: Option<&dyn PrefixScoreHook>,
    zero_gate: Option<&ZeroInitGate>,
    mask: Option<&Tensor>,
    imp: AttentionImpl,
) -> Tensor {
    let size = q.size();
    let (b, h, d) = (size[0], size[1], size[3]);
    let scale = 1.0 / (d as f64).sqrt();
    let kind = q.kind();
    let prefix = prefix.map(|p| {
        let l = p.key.size()[2];
        (p.key.to_kind(kind).expand([b, h, l, d], false), p.value.to_kind(kind).expand([b, h, l, d], false))
    });
    let full_mask = |prefix_len: i64| {
        mask.map(|m| {
            if prefix_len == 0 {
                return m.shallow_clone();
            }
            let ms = m.size();
            let zeros = Tensor::zeros([ms[0], ms[1], ms[2], prefix_len], (m.kind(), m.device()));
            Tensor::cat(&[&zeros, m], -1)
        })
    };
    let prefix_len = prefix.as_ref().map_or(0, |(pk, _)| pk.size()[2]);

    if let (Some(gate), Some((pk, pv))) = (zero_gate, &prefix) {
        // Two softmaxes: the tokens' (masked) as the frozen layer, the prefix's on its own.
        let tokens = attend(q, k, v, None, None, None, mask, imp);
        let ps = (q.matmul(&pk.transpose(-2, -1)).to_kind(Kind::Float) * scale).softmax(-1, Kind::Float);
        return tokens + (ps * gate.factor(q)).to_kind(kind).matmul(pv);
    }

    if imp.fused(q.device().is_cuda(), hook.is_some()) {
        let (k_all, v_all) = match &prefix {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k.shallow_clone(), v.shallow_clone()),
        };
        let m = full_mask(prefix_len).map(|m| m.to_kind(kind));
        return Tensor::scaled_dot_product_attention(q, &k_all, &v_all, m, 0.0, false, scale, false);
    }

    let mut scores = q.matmul(&k.transpose(-2, -1)).to_kind(Kind::Float) * scale;
    let v_all = match &prefix {
        Some((pk, pv)) => {
            let ps = q.matmul(&pk.transpose(-2, -1)).to_kind(Kind::Float) * scale;
            let ps = match hook {
                Some(hook) => hook.apply(&ps),
                None => ps,
            };
            scores = Tensor::cat(&[&ps, &scores], -1);
            Tensor::cat(&[pv, v], 2)
        }
        None => v.shallow_clone(),
    };
    if let Some(m) = full_mask(prefix_len) {
        scores = scores + m.to_kind(Kind::Float);
    }
    scores.softmax(-1, Kind::Float).to_kind(kind).matmul(&v_all)
}
