//! APER (Zhou et al., "Revisiting class-incremental learning with pre-trained
//! models: generalizability and adaptivity are all you need", IJCV 2024;
//! LAMDA-PILOT `models/aper_adapter.py`, `aper_ssf.py`): adapt the backbone
//! with adapters or SSF on the first task only (a cosine head, SGD, cosine
//! schedule: the config's `optim`), then freeze it; every class's prototype
//! is the mean of the frozen and the adapted class tokens concatenated, and
//! prediction is the cosine to the prototypes (the trained head is dropped).
//!
//! Composed of [`FirstTaskAdaptation`] and [`Prototypes`]. The VPT variant
//! (`petl = "vpt-deep"` or `"vpt-shallow"`, PILOT `aper_vpt.py`) adapts
//! zero-initialised prompt tokens instead.

use std::rc::Rc;

use tch::{nn, Tensor};

use crate::method::{collect_features, Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, Prediction, Step, TaskInfo};
use crate::parts::petl::{FirstTaskAdaptation, PetlKind, PetlShape};
use crate::parts::prototypes::Prototypes;
use crate::{OptimConfig, Result, Stage};

crate::method_params! {
    pub struct Params {
        /// `adapter` (AdaptFormer, PILOT `aper_adapter`), `ssf` (`aper_ssf`, ViT only), `vpt-deep` or `vpt-shallow` (`aper_vpt`).
        pub petl: PetlKind = PetlKind::Adapter,
        /// Adapter bottleneck width (PILOT `ffn_num`).
        pub ffn_num: i64 = 64,
        /// Adapter output scale (PILOT `ffn_adapter_scalar`, fixed).
        pub adapter_scale: f64 = 0.1,
        /// Dropout after the adapter's ReLU while training (hard-coded 0.1 in PILOT).
        pub adapter_dropout: f64 = 0.1,
        /// VPT tokens per prompted block (PILOT `prompt_token_num`).
        pub prompt_tokens: i64 = 5,
    }
}

pub struct Aper {
    vs: nn::VarStore,
    adapt: FirstTaskAdaptation,
    protos: Prototypes,
    backbone: Rc<Backbone>,
}

impl Aper {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let shape =
            PetlShape { width: params.ffn_num, scale: params.adapter_scale, dropout: params.adapter_dropout, prompt_tokens: params.prompt_tokens };
        let adapt = FirstTaskAdaptation::new(&root, params.petl, shape, ctx)?;
        let protos = Prototypes::new(&root, ctx.num_classes, 2 * ctx.feature_dim());
        Ok(Self { vs, adapt, protos, backbone: ctx.backbone.clone() })
    }

    /// `[frozen; adapted]` class tokens, `[B, 2D]`.
    fn features(&self, x: &Inputs) -> Result<Tensor> {
        Ok(Tensor::cat(&[self.backbone.query(x)?, self.adapt.adapted(&self.backbone, x)?], 1))
    }
}

impl ContinualMethod for Aper {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The first task adapts; later tasks only add prototypes.
    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        self.adapt.stages(task, optim)
    }

    fn train_step(&mut self, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        self.adapt.train_step(&self.backbone, x, labels, task)
    }

    fn end_task(&mut self, _task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        let (f, y) = collect_features(data, &mut |x| self.features(x))?;
        self.protos.add(&f, &y);
        Ok(())
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        Ok(Prediction::new(self.protos.cosine(&self.features(x)?, seen), None))
    }
}
