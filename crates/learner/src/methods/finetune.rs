//! Sequential fine-tuning (lower bounds): a linear head on the frozen
//! backbone's class token (`finetune-head`), or head and a trainable copy of
//! the backbone (`finetune-full`). No mechanism against forgetting.

use std::rc::Rc;

use promptcl_model::Prompts;
use tch::{nn, nn::Module, Tensor};

use super::common::{ce_step, head, train_classes, LinearInit};
use crate::method::{Backbone, ContinualMethod, DataScope, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::{Encoder, OptimConfig, Result, Stage};

crate::method_params! {
    pub struct Params {
        /// Score only the current task's classes while training (official
        /// `train_mask`); off by default, so the head also unlearns old classes.
        pub train_mask: bool = false,
        /// Learning-rate multiplier of the backbone (finetune-full only).
        pub backbone_lr_scale: f64 = 0.1,
    }
}

/// What fine-tuning trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trains {
    /// A linear head on the frozen backbone.
    Head,
    /// The head and a trainable copy of the backbone.
    Backbone,
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
    pub fn new(ctx: &MethodContext, params: Params, trains: Trains, scope: DataScope) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let head = head(&root, ctx.feature_dim(), ctx.num_classes, ctx.seed, LinearInit::Torch);
        let own = (trains == Trains::Backbone).then(|| ctx.backbone.trainable_copy(&root / "backbone", &vs));
        Ok(Self { vs, head, shared: ctx.backbone.clone(), own, params, scope })
    }

    fn features(&self, x: &Inputs) -> Result<Tensor> {
        Ok(match &self.own {
            Some(own) => own.forward(x, &Prompts::none())?.feature,
            None => self.shared.query(x)?,
        })
    }
}

impl ContinualMethod for Finetune {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    fn stages(&self, _task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        let stage = Stage::from_run("train", optim);
        vec![if self.own.is_some() { stage.scale_lr("backbone", self.params.backbone_lr_scale) } else { stage }]
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let feats = self.features(x)?;
        let logits = self.head.forward(&feats);
        Ok(ce_step(&logits, labels, train_classes(task, self.params.train_mask)).with_features(&feats))
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let feats = self.features(x)?;
        let logits = self.head.forward(&feats).narrow(1, 0, seen as i64);
        Ok(Prediction::new(logits, None).with_features(&feats))
    }

    fn data_scope(&self) -> DataScope {
        self.scope
    }
}
