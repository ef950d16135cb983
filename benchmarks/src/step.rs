//! The training and evaluation step that dominates HiDe-Prompt / NoRGa /
//! DualPrompt, timed in promptcl: a no-grad frozen query forward, a prompted
//! forward (prefixes in `layers`, NoRGa gate on), cross-entropy on a linear
//! head, backward to prompts, gate and head, and an Adam step; the eval step
//! is the query forward plus the prompted forward. `benchmarks/torch_step_reference.py`
//! times the same step in PyTorch; `benchmarks/run_step_bench.sh` prints the ratios.

use std::time::Instant;

use anyhow::Result;
use promptcl_model::{frozen_vit, GateActivation, NoRGaGate, Precision, PrefixScoreHook, Prompts, ViTConfig};
use serde::Serialize;
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct StepConfig {
    pub vit: ViTConfig,
    pub batch: i64,
    pub prompt_length: i64,
    pub layers: Vec<usize>,
    pub gate: bool,
    pub classes: i64,
    pub precision: Precision,
    pub device: Device,
    pub warmup: usize,
    pub iters: usize,
}

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub impl_name: &'static str,
    pub mode: String,
    pub batch: i64,
    pub image_size: i64,
    pub train_images_per_s: f64,
    pub eval_images_per_s: f64,
    pub device: String,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Images per second of `step` after `cfg.warmup` untimed calls, synchronising the GPU around the timed ones.
fn timed(cfg: &StepConfig, step: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..cfg.warmup {
        step()?;
    }
    sync(cfg.device);
    let t = Instant::now();
    for _ in 0..cfg.iters {
        step()?;
    }
    sync(cfg.device);
    Ok((cfg.iters as i64 * cfg.batch) as f64 / t.elapsed().as_secs_f64())
}

pub fn run(cfg: &StepConfig) -> Result<StepResult> {
    tch::manual_seed(0);
    let (_backbone, vit) = frozen_vit(&cfg.vit, None, cfg.device, cfg.precision)?;
    let vs = nn::VarStore::new(cfg.device);
    let root = vs.root();
    let (h, hd, d) = (cfg.vit.num_heads, cfg.vit.head_dim(), cfg.vit.embed_dim);
    let prefixes: Vec<(Tensor, Tensor)> = cfg
        .layers
        .iter()
        .map(|l| {
            let p = &root / "prompt" / *l;
            (p.uniform("key", &[1, h, cfg.prompt_length, hd], -1.0, 1.0), p.uniform("value", &[1, h, cfg.prompt_length, hd], -1.0, 1.0))
        })
        .collect();
    let act_scale = root.ones("act_scale", &[cfg.layers.len() as i64, 2]);
    let head = nn::linear(&root / "head", d, cfg.classes, Default::default());
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    let images = Tensor::rand([cfg.batch, 3, cfg.vit.img_size, cfg.vit.img_size], (Kind::Float, cfg.device));
    let labels = Tensor::randint(cfg.classes, [cfg.batch], (Kind::Int64, cfg.device));

    let prompted = |x: &Tensor| -> Result<Tensor> {
        let gates: Vec<NoRGaGate> = (0..cfg.layers.len() as i64)
            .map(|i| NoRGaGate { tau: act_scale.get(i).get(0), alpha: act_scale.get(i).get(1), activation: GateActivation::Sigmoid })
            .collect();
        let mut prompts = Prompts::none();
        for (i, &l) in cfg.layers.iter().enumerate() {
            prompts = prompts.with_prefix(l, &prefixes[i].0, &prefixes[i].1);
            if cfg.gate {
                prompts = prompts.with_score_hook(l, &gates[i] as &dyn PrefixScoreHook);
            }
        }
        Ok(head.forward(&vit.forward(x, &prompts)?.cls))
    };

    let mut train = || -> Result<()> {
        let _query = vit.query(&images)?;
        let loss = prompted(&images)?.cross_entropy_for_logits(&labels);
        opt.backward_step(&loss);
        Ok(())
    };
    let train_ips = timed(cfg, &mut train)?;

    let mut eval = || -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let _query = vit.query(&images)?;
            let _ = prompted(&images)?;
            Ok(())
        })
    };
    let eval_ips = timed(cfg, &mut eval)?;
    Ok(StepResult {
        impl_name: "promptcl",
        mode: format!("{:?}", cfg.precision).to_lowercase(),
        batch: cfg.batch,
        image_size: cfg.vit.img_size,
        train_images_per_s: train_ips,
        eval_images_per_s: eval_ips,
        device: format!("{:?}", cfg.device),
    })
}
