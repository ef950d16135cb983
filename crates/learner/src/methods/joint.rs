//! Joint training (upper bound): at every task, train on all data seen so far.
//! Same model as fine-tuning (`train_backbone = true` for the full upper bound).

use serde::Deserialize;

use super::finetune::{Finetune, Params as FinetuneParams};
use crate::method::{DataScope, MethodContext};
use crate::Result;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub train_backbone: bool,
    pub backbone_lr_scale: Option<f64>,
}

pub fn new(ctx: &MethodContext, params: Params) -> Result<Finetune> {
    let mut ft = FinetuneParams::default();
    if let Some(s) = params.backbone_lr_scale {
        ft.backbone_lr_scale = s;
    }
    Finetune::new(ctx, ft, params.train_backbone, DataScope::AllSeen)
}
