//! VPT-NSP's null space (Lu et al., "Visual prompt tuning in null space for
//! continual learning", NeurIPS 2024; official `zugexiaodui/VPTinNSforCL`
//! `train_eval.py`): per layer, two matrices summarise how the layer's image
//! tokens met its prompts on the tasks so far; the singular vectors past the
//! elbow of each spectrum span an approximate null space, and a prompt's
//! later updates are projected towards it (`P₂ · Δ · P₁`, applied by the
//! optimizer: [`crate::UpdateProjection`]).
//!
//! The prompts join a layer's attention as extra tokens whose own outputs
//! are dropped (the official `Block.forward`), which is prefix attention with
//! the prefix's keys and values made by the layer's frozen `norm1` and `qkv`:
//! [`FrozenAttention::prefix`].

use tch::{Kind, Tensor};

use crate::{Backbone, Encoder, LearnerError, Result};

/// One ViT block's frozen `norm1` and `qkv`, in f32.
pub struct FrozenAttention {
    norm_weight: Tensor,
    norm_bias: Tensor,
    eps: f64,
    /// `[3D, D]`, `[3D]`: query, key, value rows (timm's layout).
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    heads: i64,
}

impl FrozenAttention {
    pub fn of(backbone: &Backbone, layer: usize) -> Result<Self> {
        let Encoder::Vit(vit) = &backbone.encoder else {
            return Err(LearnerError::Invalid("VPT-NSP's prompts need a ViT backbone".into()));
        };
        let cfg = vit.config();
        let get = |name: &str| backbone.frozen_f32(&format!("blocks.{layer}.{name}"));
        let qkv_weight = get("attn.qkv.weight")?;
        let qkv_bias = get("attn.qkv.bias").unwrap_or_else(|_| Tensor::zeros([3 * cfg.embed_dim], (Kind::Float, qkv_weight.device())));
        Ok(Self {
            norm_weight: get("norm1.weight")?,
            norm_bias: get("norm1.bias")?,
            eps: cfg.layer_norm_eps,
            qkv_weight,
            qkv_bias,
            heads: cfg.num_heads,
        })
    }

    fn dim(&self) -> i64 {
        self.qkv_weight.size()[1]
    }

    fn norm(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim()], Some(&self.norm_weight), Some(&self.norm_bias), self.eps, false)
    }

    /// Query (0), key (1) or value (2) of normalised tokens `[.., N, D]`, per head: `[.., H, N, d]`.
    fn project(&self, h: &Tensor, which: i64) -> Tensor {
        let d = self.dim();
        let out = h.linear(&self.qkv_weight.narrow(0, which * d, d), Some(&self.qkv_bias.narrow(0, which * d, d)));
        let mut shape = out.size();
        let n = shape.len();
        shape.splice(n - 1.., [self.heads, d / self.heads]);
        out.view(shape.as_slice()).transpose(-3, -2)
    }

    /// Prefix key and value `[1, H, L, d]` of prompt tokens `[L, D]`: what
    /// the official block makes of prompts appended to its tokens.
    pub fn prefix(&self, prompts: &Tensor) -> (Tensor, Tensor) {
        let h = self.norm(&prompts.to_kind(Kind::Float));
        (self.project(&h, 1).unsqueeze(0), self.project(&h, 2).unsqueeze(0))
    }

    /// The official `interm_reader_1` and `_2` matrices of one batch: the
    /// block's input `x [B, N, D]` (class and patch tokens) with prompts
    /// `[L, D]` gives `M₁ = XᵀX / rows` of the image queries times each
    /// head's key weights, `[D, D]`, and `M₂` of the image queries'
    /// attention to the prompts (after the softmax over all keys), `[L, L]`.
    pub fn feature_matrices(&self, x: &Tensor, prompts: &Tensor) -> (Tensor, Tensor) {
        let d = self.dim();
        let h = self.norm(&x.to_kind(Kind::Float));
        let (q, k) = (self.project(&h, 0), self.project(&h, 1));
        let head_dim = d / self.heads;
        // The query is read before the 1/√d scaling; W_k per head is `[d, D]`.
        let w_k = self.qkv_weight.narrow(0, d, d).view([self.heads, head_dim, d]);
        let x1 = q.matmul(&w_k).reshape([-1, d]);
        let m1 = x1.tr().matmul(&x1) / x1.size()[0] as f64;
        let (pk, _) = self.prefix(prompts);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = Tensor::cat(&[q.matmul(&k.transpose(-2, -1)), q.matmul(&pk.transpose(-2, -1))], -1) * scale;
        let n = k.size()[2];
        let l = pk.size()[2];
        let x2 = scores.softmax(-1, Kind::Float).narrow(-1, n, l).reshape([-1, l]);
        let m2 = x2.tr().matmul(&x2) / x2.size()[0] as f64;
        (m1, m2)
    }
}

/// `scipy.ndimage.gaussian_filter1d(s, sigma)` with its defaults (`mode =
/// "reflect"`, `truncate = 4`).
pub fn gaussian_filter1d(s: &[f64], sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let w: Vec<f64> = (-radius..=radius).map(|i| (-0.5 * (i * i) as f64 / (sigma * sigma)).exp()).collect();
    let total: f64 = w.iter().sum();
    let n = s.len() as i64;
    // "reflect": d c b a | a b c d | d c b a, i.e. period 2n.
    let at = |i: i64| {
        let m = i.rem_euclid(2 * n);
        s[(if m < n { m } else { 2 * n - 1 - m }) as usize]
    };
    (0..n).map(|i| (-radius..=radius).zip(&w).map(|(j, wj)| wj * at(i + j)).sum::<f64>() / total).collect()
}

/// The official `adaptive_threshold` (offset 0): the index where the null
/// space starts, for singular values `s` in descending order. The elbow is
/// the largest second difference of the spectrum (Gaussian-smoothed, its
/// 1.5 % ends dropped, when it has at least 128 values); the null space is
/// every index from the last value at least as large as the elbow's.
pub fn adaptive_threshold(s: &[f64]) -> usize {
    let n = s.len();
    assert!(n >= 3, "a spectrum of {n} values has no second difference");
    let smooth = if n >= 128 { gaussian_filter1d(s, 10.0) } else { s.to_vec() };
    let d1: Vec<f64> = smooth.windows(2).map(|w| w[0] - w[1]).collect();
    let d2: Vec<f64> = d1.windows(2).map(|w| w[0] - w[1]).collect();
    let drop = if n >= 128 { n * 3 / 200 } else { 0 };
    let valid = &d2[drop..d2.len() - drop];
    // numpy's argmax: the first maximum.
    let arg = valid.iter().enumerate().fold(0, |best, (i, &v)| if v > valid[best] { i } else { best });
    let thres = s[arg + (n - valid.len()) / 2];
    (0..n).filter(|&i| s[i] >= thres).max().unwrap_or(0)
}

/// `P = η·B + (1 − η)·I` for `m [n, n]`, with `B = U₀ᵀU₀ / ‖U₀ᵀU₀‖_F` from the
/// right singular vectors past the threshold (the official normalisation:
/// `‖B‖_F = √k` for a k-dimensional null space). In f64 (the official SVD is f32).
pub fn null_projection(m: &Tensor, eta: f64) -> Tensor {
    let m = m.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    let (_, s, v) = m.svd(true, true);
    let vh = v.tr();
    let sv: Vec<f64> = Vec::try_from(&s).expect("singular values");
    let start = adaptive_threshold(&sv) as i64;
    let u0 = vh.narrow(0, start, sv.len() as i64 - start);
    let b = u0.tr().matmul(&u0);
    let b = &b / b.norm();
    let n = sv.len() as i64;
    b * eta + Tensor::eye(n, (Kind::Double, tch::Device::Cpu)) * (1.0 - eta)
}
