//! Joint training (upper bound): at every task, train on all data seen so far.
//! Same model as fine-tuning (`train_backbone = true` for the full upper bound).

use super::finetune::{Finetune, Params as FinetuneParams, Trains};
use crate::method::{DataScope, MethodContext};
use crate::Result;

crate::method_params! {
    pub struct Params {
        /// Train a copy of the backbone too (the full upper bound), not only the head.
        pub train_backbone: bool = false,
        /// Learning-rate multiplier of the backbone (with `train_backbone`).
        pub backbone_lr_scale: f64 = 0.1,
    }
}

pub fn new(ctx: &MethodContext, params: Params) -> Result<Finetune> {
    let ft = FinetuneParams { backbone_lr_scale: params.backbone_lr_scale, ..FinetuneParams::default() };
    Finetune::new(ctx, ft, if params.train_backbone { Trains::Backbone } else { Trains::Head }, DataScope::AllSeen)
}
