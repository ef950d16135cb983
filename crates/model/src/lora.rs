//! Low-rank updates of the attention projections, LoRA as PEFT computes it
//! (`peft.tuners.lora.layer.Linear.forward`): `y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ`
//! with `A` `[r, in]`, `B` `[out, r]` (zero-initialised, so a new update
//! starts as a no-op) and `scale = alpha / r`. Dropout on the update's input
//! is the caller's (PEFT's `lora_dropout`, 0 in the continual-learning codes).
//!
//! The ViT's fused `qkv` takes `q`, `k` and `v` updates on its three slices,
//! as PEFT on separate `q` / `k` / `v` projections would; BERT's are its
//! `query`, `key`, `value`; `out` is the attention's output projection
//! (`attn.proj`, `attention.output.dense`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::prompt::check_float;

/// Which projection an update applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    Out,
}

impl LoraTarget {
    pub const ALL: [Self; 4] = [Self::Q, Self::K, Self::V, Self::Out];

    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::Out => "out",
        }
    }
}

/// One projection's low-rank update.
///
/// # Shapes
/// - `a`: `[r, in]`, or `[B or 1, r, in]` when samples carry different updates
///   (task-specific updates routed per sample)
/// - `b`: `[out, r]`, or `[B or 1, out, r]`
#[derive(Debug)]
pub struct LoraUpdate {
    pub a: Tensor,
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
}

impl LoraUpdate {
    /// `scale·(x·Aᵀ)·Bᵀ` for `x` `[B, N, in]` → `[B, N, out]`, in `x`'s dtype.
    pub(crate) fn delta(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let (a, b) = (self.a.to_kind(kind), self.b.to_kind(kind));
        let (a, b) = if a.dim() == 3 { (a, b) } else { (a.unsqueeze(0), b.unsqueeze(0)) };
        x.matmul(&a.transpose(-2, -1)).matmul(&b.transpose(-2, -1)) * self.scale
    }

    /// `scale·B·A` `[out, in]`, what merging adds to the weight (PEFT's
    /// `get_delta_weight`); only for an update shared by the whole batch.
    pub fn delta_weight(&self) -> Result<Tensor> {
        if self.a.dim() != 2 || self.b.dim() != 2 {
            return Err(ModelError::Input("only an update shared by the batch ([r, in], [out, r]) can be merged into a weight".into()));
        }
        Ok(self.b.to_kind(Kind::Float).matmul(&self.a.to_kind(Kind::Float)) * self.scale)
    }

    fn check(&self, layer: usize, target: LoraTarget, batch: i64, dim: i64) -> Result<()> {
        let (sa, sb) = (self.a.size(), self.b.size());
        let bad = || {
            Err(ModelError::Input(format!(
                "layer {layer}: LoRA `{}` must be a [r, {dim}] and b [{dim}, r] (or [{batch} or 1, …] per sample), got a {sa:?}, b {sb:?}",
                target.name()
            )))
        };
        let per_sample = sa.len() == 3 && sb.len() == 3;
        if !(sa.len() == 2 && sb.len() == 2 || per_sample) {
            return bad();
        }
        let (ra, rb) = (&sa[sa.len() - 2..], &sb[sb.len() - 2..]);
        if ra[1] != dim || rb[0] != dim || ra[0] != rb[1] || ra[0] < 1 {
            return bad();
        }
        if per_sample && ((sa[0] != 1 && sa[0] != batch) || (sb[0] != 1 && sb[0] != batch)) {
            return bad();
        }
        for (name, t) in [("a", &self.a), ("b", &self.b)] {
            check_float(t, layer, &format!("LoRA `{}` {name}", target.name()))?;
        }
        Ok(())
    }
}

/// One layer's updates, any of the four projections.
#[derive(Debug, Default)]
pub struct LayerLora {
    pub q: Option<LoraUpdate>,
    pub k: Option<LoraUpdate>,
    pub v: Option<LoraUpdate>,
    pub out: Option<LoraUpdate>,
}

impl LayerLora {
    pub fn get(&self, target: LoraTarget) -> Option<&LoraUpdate> {
        match target {
            LoraTarget::Q => self.q.as_ref(),
            LoraTarget::K => self.k.as_ref(),
            LoraTarget::V => self.v.as_ref(),
            LoraTarget::Out => self.out.as_ref(),
        }
    }

    pub fn set(&mut self, target: LoraTarget, update: LoraUpdate) {
        let slot = match target {
            LoraTarget::Q => &mut self.q,
            LoraTarget::K => &mut self.k,
            LoraTarget::V => &mut self.v,
            LoraTarget::Out => &mut self.out,
        };
        *slot = Some(update);
    }

    /// `y` plus the update of `target` on input `x` (nothing without one).
    pub(crate) fn add(&self, target: LoraTarget, x: &Tensor, y: Tensor) -> Tensor {
        match self.get(target) {
            Some(u) => y + u.delta(x),
            None => y,
        }
    }

    /// [`Self::add`] for a layer that may have no updates at all.
    pub(crate) fn add_if(lora: Option<&Self>, target: LoraTarget, x: &Tensor, y: Tensor) -> Tensor {
        match lora {
            Some(l) => l.add(target, x, y),
            None => y,
        }
    }

    /// The fused `[q | k | v]` output of the ViT's `qkv` with the q, k, v updates on its slices.
    pub(crate) fn add_fused_qkv(&self, x: &Tensor, qkv: Tensor) -> Tensor {
        if self.q.is_none() && self.k.is_none() && self.v.is_none() {
            return qkv;
        }
        let parts = qkv.chunk(3, -1);
        let parts: Vec<Tensor> = [LoraTarget::Q, LoraTarget::K, LoraTarget::V].iter().zip(parts).map(|(&t, y)| self.add(t, x, y)).collect();
        Tensor::cat(&parts, -1)
    }

    pub(crate) fn check(&self, layer: usize, batch: i64, dim: i64) -> Result<()> {
        for t in LoraTarget::ALL {
            if let Some(u) = self.get(t) {
                u.check(layer, t, batch, dim)?;
            }
        }
        Ok(())
    }
}

/// A layer's frozen q, k, v weights: one fused `[3·D, D]` (ViT) or three `[D, D]` (BERT).
pub(crate) enum QkvWeights<'a> {
    Fused(&'a mut Tensor),
    Split([&'a mut Tensor; 3]),
}

/// Adds (`sign` 1) or removes (`sign` −1) `lora`'s delta weights on a
/// layer's frozen projections in place (PEFT's merge / unmerge).
pub(crate) fn merge_layer(lora: &LayerLora, layer: usize, dim: i64, qkv: QkvWeights, out: &mut Tensor, sign: f64) -> Result<()> {
    for t in LoraTarget::ALL {
        if let Some(u) = lora.get(t) {
            if u.a.dim() != 2 || u.b.dim() != 2 {
                return Err(ModelError::Input(format!(
                    "layer {layer}: LoRA `{}` is given per sample; only an update shared by the batch ([r, in], [out, r]) can be merged into a weight",
                    t.name()
                )));
            }
        }
    }
    lora.check(layer, 1, dim)?;
    let targets = [LoraTarget::Q, LoraTarget::K, LoraTarget::V];
    match qkv {
        QkvWeights::Fused(w) => {
            for (i, t) in targets.into_iter().enumerate() {
                if let Some(u) = lora.get(t) {
                    merge_rows(w, i as i64 * dim, u, sign)?;
                }
            }
        }
        QkvWeights::Split(ws) => {
            for (t, w) in targets.into_iter().zip(ws) {
                if let Some(u) = lora.get(t) {
                    merge_rows(w, 0, u, sign)?;
                }
            }
        }
    }
    if let Some(u) = lora.get(LoraTarget::Out) {
        merge_rows(out, 0, u, sign)?;
    }
    Ok(())
}

/// `weight[start .. start + out] += sign · scale·B·A`, with no gradient recorded.
fn merge_rows(weight: &mut Tensor, start: i64, update: &LoraUpdate, sign: f64) -> Result<()> {
    let delta = update.delta_weight()?;
    let s = weight.size();
    if delta.size()[1] != s[1] || start + delta.size()[0] > s[0] {
        return Err(ModelError::Input(format!("LoRA delta {:?} does not fit rows {start}.. of a {s:?} weight", delta.size())));
    }
    tch::no_grad(|| {
        let mut slice = weight.narrow(0, start, delta.size()[0]);
        let _ = slice.g_add_(&(delta * sign).to_kind(slice.kind()));
    });
    Ok(())
}
