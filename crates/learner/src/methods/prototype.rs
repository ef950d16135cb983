//! SimpleCIL (Zhou et al., "Revisiting class-incremental learning with
//! pre-trained models", 2023; LAMDA-PILOT `models/simplecil.py`): no
//! training; after each task, each new class's prototype is the mean of its
//! frozen class-token features over its training images under the test
//! transform; prediction is the cosine to the prototypes. The registry calls
//! it `simplecil`, with `prototype` as its older name.

use std::rc::Rc;

use tch::{nn, Kind, Tensor};

use crate::method::{Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::prototypes::Prototypes;
use crate::{OptimConfig, Result, Stage};

crate::method_params! {
    /// No parameters.
    pub struct Params {}
}

pub struct Prototype {
    vs: nn::VarStore,
    protos: Prototypes,
    backbone: Rc<Backbone>,
}

impl Prototype {
    pub fn new(ctx: &MethodContext, _params: Params) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let protos = Prototypes::new(&vs.root(), ctx.num_classes, ctx.feature_dim());
        Ok(Self { vs, protos, backbone: ctx.backbone.clone() })
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
        let (protos, backbone) = (&mut self.protos, &self.backbone);
        data.for_each(&mut |x, labels| {
            protos.add(&backbone.query(x)?, labels);
            Ok(())
        })
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        Ok(Prediction::new(self.protos.cosine(&self.backbone.query(x)?, seen), None))
    }
}
