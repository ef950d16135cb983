//! Small building blocks with timm / Hugging Face parameter names.

use tch::{nn, Kind, Tensor};

/// `nn.LayerNorm` that always normalises in fp32, so a bf16 backbone keeps
/// fp32-quality statistics (autocast does the same).
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: p.ones("weight", &[dim]), bias: p.zeros("bias", &[dim]), dim, eps }
    }

    pub(crate) fn set_eps(&mut self, eps: f64) {
        self.eps = eps;
    }

    /// The same normalisation with another weight and bias (`[dim]`).
    pub(crate) fn forward_with(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
        let kind = x.kind();
        x.to_kind(Kind::Float)
            .layer_norm([self.dim], Some(weight.to_kind(Kind::Float)), Some(bias.to_kind(Kind::Float)), self.eps, false)
            .to_kind(kind)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.to_kind(Kind::Float)
            .layer_norm([self.dim], Some(self.weight.to_kind(Kind::Float)), Some(self.bias.to_kind(Kind::Float)), self.eps, false)
            .to_kind(kind)
    }
}

/// `nn.Linear` (`weight` `[out, in]`, `bias` `[out]`).
pub(crate) fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    nn::linear(p, i, o, nn::LinearConfig { bias, ..Default::default() })
}
