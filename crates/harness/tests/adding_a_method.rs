//! A two-stage method written only against promptcl's public API, exactly as
//! the README's "Adding a method" shows it, run through the harness on the
//! fixture stream.

mod common;

use std::rc::Rc;

use promptcl_learner::parts::alignment;
use promptcl_learner::stats::{ClassStats, StatsKind};
use promptcl_learner::{
    ce_step, Backbone, BatchSource, ContinualMethod, Inputs, MethodContext, OptimConfig, Prediction, Result, Stage, Step, TaskInfo,
};
use promptcl_model::Prompts;
use tch::{nn, nn::Module, Tensor};

// --- README: Adding a method (begin) ---
promptcl_learner::method_params! {
    /// A prompt token before the class token, and a head realigned on Gaussian pseudo-features.
    pub struct Params {
        /// Prompt tokens.
        pub length: i64 = 2,
        /// Epochs of the alignment stage.
        pub align_epochs: usize = 3,
        /// Its SGD learning rate.
        pub align_lr: f64 = 0.01,
    }
}

pub struct MyMethod {
    vs: nn::VarStore,
    prompt: Tensor,
    head: nn::Linear,
    stats: ClassStats,
    backbone: Rc<Backbone>,
    params: Params,
    batch: i64,
}

impl MyMethod {
    pub fn new(ctx: &MethodContext, params: Params) -> Result<Self> {
        let vs = nn::VarStore::new(ctx.device);
        let root = vs.root();
        let prompt = root.randn("prompt", &[1, params.length, ctx.token_dim()], 0.0, 0.02);
        let head = nn::linear(&root / "head", ctx.feature_dim(), ctx.num_classes as i64, Default::default());
        let stats = ClassStats::new(&(&root / "stats"), StatsKind::Variance, ctx.num_classes, ctx.feature_dim(), 1);
        Ok(Self { vs, prompt, head, stats, backbone: ctx.backbone.clone(), params, batch: ctx.optim.batch_size as i64 })
    }

    fn features(&self, x: &Inputs) -> Result<Tensor> {
        Ok(self.backbone.forward(x, &Prompts::none().with_tokens(0, &self.prompt))?.feature)
    }
}

impl ContinualMethod for MyMethod {
    fn vars(&self) -> &nn::VarStore {
        &self.vs
    }

    /// `prompt` (the run's `[optim]`, everything trainable), then from the
    /// second task `align`: SGD on pseudo-features, the head only.
    fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        let mut stages = vec![Stage::from_run("prompt", optim)];
        if task.task > 0 {
            stages.push(alignment::stage("align", self.params.align_epochs, self.params.align_lr, "head"));
        }
        stages
    }

    fn generate(&mut self, task: &TaskInfo) -> Result<Vec<(Tensor, Tensor)>> {
        Ok(alignment::pseudo_batches(&self.stats, 0..task.seen.end, self.batch, task.classes.start))
    }

    fn train_step(&mut self, x: &Inputs, y: &Tensor, task: &TaskInfo) -> Result<Step> {
        match x {
            Inputs::Features(f) => Ok(ce_step(&self.head.forward(f), y, 0..task.seen.end)),
            _ => {
                let f = self.features(x)?;
                Ok(ce_step(&self.head.forward(&f), y, task.classes.clone()).with_features(&f))
            }
        }
    }

    /// After `prompt`: statistics of the task's classes (test transform).
    fn end_stage(&mut self, task: &TaskInfo, data: &mut dyn BatchSource) -> Result<()> {
        if task.stage != "prompt" {
            return Ok(());
        }
        let (mut fs, mut ys) = (Vec::new(), Vec::new());
        data.for_each(&mut |x, y| {
            fs.push(tch::no_grad(|| self.features(x))?);
            ys.push(y.shallow_clone());
            Ok(())
        })?;
        alignment::fit_classes(&mut self.stats, task.classes.clone(), &Tensor::cat(&fs, 0), &Tensor::cat(&ys, 0), |c| c as u64)
    }

    fn predict(&self, x: &Inputs, seen: usize) -> Result<Prediction> {
        let f = self.features(x)?;
        Ok(Prediction::new(self.head.forward(&f).narrow(1, 0, seen as i64), None).with_features(&f))
    }
}
// --- README: Adding a method (end) ---

#[test]
fn a_method_from_the_public_api_runs_its_stages_through_the_harness() {
    use promptcl_harness::{config::RunConfig, results, run};
    let out = std::env::temp_dir().join(format!("promptcl-public-api-{}", std::process::id()));
    let text = common::fixture_config("public-api", "my-method", "", 1, 16, 0.05, &out, "checkpoint_every_epoch = true");
    let cfg: RunConfig = toml::from_str(&text).unwrap();
    let dir = run::run_with(&cfg, 7, &|ctx| Ok(Box::new(MyMethod::new(ctx, Params::default())?))).unwrap();
    let m = results::load_metrics(&dir).unwrap();
    assert_eq!(m.matrix.num_tasks(), 5);
    let log = std::fs::read_to_string(dir.join(results::LOG)).unwrap();
    let stages: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("epoch").is_some())
        .map(|v| format!("{}:{}", v["task"], v["stage"].as_str().unwrap()))
        .collect();
    let mut want = vec!["0:prompt".to_string()];
    for t in 1..5 {
        want.push(format!("{t}:prompt"));
        want.extend(std::iter::repeat_n(format!("{t}:align"), 3));
    }
    assert_eq!(stages, want, "one log line per epoch of every stage, in order");
    // The stage names only the head: the prompt stays as the prompt stage left it.
    let align = alignment::stage("align", 3, 0.01, "head");
    assert_eq!((align.lr_scale("head.weight"), align.lr_scale("prompt")), (Some(1.0), None));
    std::fs::remove_dir_all(out).ok();
}
