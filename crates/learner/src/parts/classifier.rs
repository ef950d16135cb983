//! Class scorers over features: a linear head (HiDe-Prompt's, NoRGa's) or a
//! ReLU MLP, as the WAVE-CRE group's code scores relations with for both its
//! task predictor and its relation classifier (CRE-Prompt `methods/model.py`
//! `Classifier`: Linear D → 768, ReLU, Linear 768 → 768, ReLU, Linear 768 → C).

use tch::{nn, nn::Module, Tensor};

use crate::methods::common::{head, linear, LinearInit};

#[derive(Debug)]
pub struct Classifier {
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
}

impl Classifier {
    /// `hidden` widths under `p/head/mlp/<i>` (ReLU after each), the output
    /// layer at `p/head`, so a linear classifier keeps the plain head's names.
    pub(crate) fn new(p: &nn::Path, dim: i64, hidden: &[i64], classes: usize, seed: u64, init: LinearInit) -> Self {
        let mut widths = vec![dim];
        widths.extend_from_slice(hidden);
        let hidden = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(&(p / "head" / "mlp" / i), w[0], w[1], seed, &[0x4EAD, 0x31, i as u64], init))
            .collect();
        Self { hidden, out: head(p, *widths.last().expect("the input width"), classes, seed, init) }
    }
}

impl Module for Classifier {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.hidden.iter().fold(x.shallow_clone(), |h, l| l.forward(&h).relu());
        self.out.forward(&h)
    }
}
