//! Sequential fine-tuning (lower bounds): a linear head on the frozen
//! backbone's class token (`finetune-head`), or head and a trainable copy of
//! the backbone (`finetune-full`). No mechanism against forgetting.

use std::rc::Rc;

use promptcl_model::Prompts;
use serde::Deserialize;
use tch::{nn, nn::Module, Tensor};

use super::common::{ce_step, head, train_classes};
use crate::method::{Backbone, ContinualMethod, DataScope, MethodContext, Prediction, Step, TaskInfo};
use crate::{Encoder, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Score only the current task's classes while training (official
    /// `train_mask`); off by default, so the head also unlearns old classes.
    pub train_mask: bool,
    /// Learning-rate multiplier of the backbone (finetune-full only).
    pub backbone_lr_scale: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self { train_mask: false, backbone_lr_scale: 0.1 }
    }
}

pub struct Finetune {
    vs: nn::VarStore,
    head: nn::Linear,
    shared: Rc<Backbone>,
    own: Option<Encoder>,
    params: Params,
    scope: DataScope,
}

impl Finetune {
    pub fn new(ctx: &MethodContext, params: Params, train_backbone: bool, scope: DataScope) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let head = head(&root, ctx.feature_dim(), ctx.num_classes, ctx.seed);
        // Group 1 so the backbone can run at its own learning rate.
        let own = train_backbone.then(|| ctx.backbone.trainable_copy(root.set_group(1) / "backbone", &vs));
        Ok(Self { vs, head, shared: ctx.backbone.clone(), own, params, scope })
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        Ok(match &self.own {
            Some(own) => own.forward(images, &Prompts::none())?.feature,
            None => self.shared.query(images)?,
        })
    }
}

impl ContinualMethod for Finetune {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn train_step(&mut self, images: &Tensor, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let feats = self.features(images)?;
        let logits = self.head.forward(&feats);
        Ok(ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&feats))
    }

    fn predict(&self, images: &Tensor, seen: usize) -> Result<Prediction> {
        let feats = self.features(images)?;
        let logits = self.head.forward(&feats).narrow(1, 0, seen as i64);
        Ok(Prediction::new(logits, None).with_features(&feats))
    }

    fn data_scope(&self) -> DataScope {
        self.scope
    }

    fn lr_groups(&self) -> Vec<(usize, f64)> {
        if self.own.is_some() { vec![(1, self.params.backbone_lr_scale)] } else { Vec::new() }
    }
}
