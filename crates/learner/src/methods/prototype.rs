//! Prototype classifier on frozen features (SimpleCIL, Zhou et al. 2023):
//! no training; after each task, each new class's prototype is the mean of
//! its frozen class-token features; prediction is cosine similarity.

use std::rc::Rc;

use tch::{nn, Kind, Tensor};

use super::common::l2_normalize;
use crate::method::{Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::{OptimConfig, Result, Stage};

crate::method_params! {
    /// No parameters.
    pub struct Params {}
}

pub struct Prototype {
    vs: nn::VarStore,
    sums: Tensor,
    counts: Tensor,
    backbone: Rc<Backbone>,
}

impl Prototype {
    pub fn new(ctx: &MethodContext, _params: Params) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let p = vs.root();
        let c = ctx.num_classes as i64;
        let sums = p.zeros_no_train("proto_sums", &[c, ctx.feature_dim()]);
        let counts = p.zeros_no_train("proto_counts", &[c]);
        Ok(Self { vs, sums, counts, backbone: ctx.backbone.clone() })
    }
}

impl ContinualMethod for Prototype {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// No training: prototypes only.
    fn stages(&self, _task: &TaskInfo, _optim: &OptimConfig) -> Vec<Stage> {
        Vec::new()
    }

    fn train_step(&mut self, x: &Inputs, _labels: &Tensor, _task: &TaskInfo) -> Result<Step> {
        // Never called without stages; a zero loss keeps the contract if it is.
        Ok(Tensor::zeros([], (Kind::Float, x.device())).into())
    }

    fn end_task(&mut self, _task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (sums, counts, vit) = (&mut self.sums, &mut self.counts, &self.backbone);
        data.for_each(&mut |x, labels| {
            let f = vit.query(x)?;
            tch::no_grad(|| {
                let _ = sums.index_add_(0, labels, &f);
                let _ = counts.index_add_(0, labels, &Tensor::ones([labels.size()[0]], (Kind::Float, f.device())));
            });
            Ok(())
        })
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let f = l2_normalize(&self.backbone.query(x)?, 1);
        let n = seen as i64;
        let protos = self.sums.narrow(0, 0, n) / self.counts.narrow(0, 0, n).clamp_min(1.0).unsqueeze(1);
        let logits = f.matmul(&l2_normalize(&protos, 1).tr());
        Ok(Prediction::new(logits, None))
    }
}
