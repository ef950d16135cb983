//! Class-mean prototypes with a cosine classifier, as SimpleCIL and APER
//! compute them (LAMDA-PILOT `replace_fc` + `CosineLinear` with σ = 1): each
//! class's prototype is the mean of its raw training features (test
//! transform); a logit is the cosine of the feature and the prototype.
//! Sums and counts live in the method's store, so a resumed run has them.

use tch::{nn, Kind, Tensor};

use crate::methods::common::l2_normalize;

pub struct Prototypes {
    sums: Tensor,
    counts: Tensor,
}

impl Prototypes {
    /// `[classes, dim]` under `p` (`proto_sums`, `proto_counts`).
    pub fn new(p: &nn::Path, classes: usize, dim: i64) -> Self {
        Self { sums: p.zeros_no_train("proto_sums", &[classes as i64, dim]), counts: p.zeros_no_train("proto_counts", &[classes as i64]) }
    }

    /// Adds features `[B, dim]` of classes `labels` `[B]`.
    pub fn add(&mut self, features: &Tensor, labels: &Tensor) {
        tch::no_grad(|| {
            let _ = self.sums.index_add_(0, labels, features);
            let _ = self.counts.index_add_(0, labels, &Tensor::ones([labels.size()[0]], (Kind::Float, features.device())));
        });
    }

    /// The prototypes of classes `0..seen`: `[seen, dim]`.
    pub fn means(&self, seen: usize) -> Tensor {
        let n = seen as i64;
        self.sums.narrow(0, 0, n) / self.counts.narrow(0, 0, n).clamp_min(1.0).unsqueeze(1)
    }

    /// Cosine logits `[B, seen]` of features `[B, dim]`.
    pub fn cosine(&self, features: &Tensor, seen: usize) -> Tensor {
        l2_normalize(features, 1).matmul(&l2_normalize(&self.means(seen), 1).tr())
    }
}
