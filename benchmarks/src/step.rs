//! The training and evaluation step that dominates HiDe-Prompt / NoRGa /
//! DualPrompt, timed in promptcl: a no-grad frozen query forward, a prompted
//! forward (prefixes in `layers` through the [`Expert`]'s gate), cross-entropy
//! on a linear head, backward to prompts, gate and head, and an Adam step; the eval step
//! is the query forward plus the prompted forward. `benchmarks/torch_step_reference.py`
//! times the same step in PyTorch; `benchmarks/run_step_bench.sh` prints the ratios.

use std::time::Instant;

use anyhow::Result;
use promptcl_model::{
    frozen_vit, GateActivation, LayerLora, LoraTarget, LoraUpdate, NoRGaGate, Precision, PrefixScoreHook, Prompts, ViTConfig, ZeroInitGate,
};
use serde::Serialize;
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

/// Which prefix expert the step trains (issue #18's rows beside NoRGa's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expert {
    /// Direct prefixes, NoRGa's gate on the prefix logits.
    Norga,
    /// Direct prefixes, zero-initialised gated attention (`tanh(g)` per head).
    ZeroInit,
    /// Prefixes generated every step by ReparamPrefix's per-layer MLP, NoRGa's gate.
    ReparamMlp,
    /// No prefixes: LoRA (rank 5, scale 1/5) on k and v of `layers`, as HiDe-LoRA trains one task's.
    Lora,
}

impl std::str::FromStr for Expert {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "norga" => Ok(Self::Norga),
            "zero-init" => Ok(Self::ZeroInit),
            "reparam-mlp" => Ok(Self::ReparamMlp),
            "lora" => Ok(Self::Lora),
            _ => Err(format!("unknown expert `{s}`: norga, zero-init, reparam-mlp or lora")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepConfig {
    pub vit: ViTConfig,
    pub batch: i64,
    pub prompt_length: i64,
    pub layers: Vec<usize>,
    pub expert: Expert,
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
    pub expert: Expert,
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
    let n = cfg.layers.len() as i64;
    let act_scale = root.ones("act_scale", &[n, 2]);
    let zero = root.var("zero_gate", &[n, h], nn::Init::Const(0.1));
    // reparam-mlp: embeddings and the per-layer Linear(D, 48) → Tanh → Linear(48, 2D).
    let emb = root.uniform("emb", &[n, cfg.prompt_length, d], -0.0625, 0.0625);
    let gen: Vec<(nn::Linear, nn::Linear)> = (0..n)
        .map(|i| {
            (nn::linear(&root / "gen" / i / "fc1", d, 48, Default::default()), nn::linear(&root / "gen" / i / "fc2", 48, 2 * d, Default::default()))
        })
        .collect();
    // lora: A [5, D] uniform, B [D, 5] zeros per projection (PEFT's layout).
    let loras: Vec<LayerLora> = (0..n)
        .map(|i| {
            let p = &root / "lora" / i;
            let mut l = LayerLora::default();
            for t in [LoraTarget::K, LoraTarget::V] {
                let a = p.uniform(&format!("{}_a", t.name()), &[5, d], -0.2, 0.2);
                let b = p.zeros(&format!("{}_b", t.name()), &[d, 5]);
                l.set(t, LoraUpdate { a, b, scale: 0.2 });
            }
            l
        })
        .collect();
    let head = nn::linear(&root / "head", d, cfg.classes, Default::default());
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    let images = Tensor::rand([cfg.batch, 3, cfg.vit.img_size, cfg.vit.img_size], (Kind::Float, cfg.device));
    let labels = Tensor::randint(cfg.classes, [cfg.batch], (Kind::Int64, cfg.device));

    let prompted = |x: &Tensor| -> Result<Tensor> {
        let gates: Vec<NoRGaGate> =
            (0..n).map(|i| NoRGaGate { tau: act_scale.get(i).get(0), alpha: act_scale.get(i).get(1), activation: GateActivation::Sigmoid }).collect();
        let zero_gates: Vec<ZeroInitGate> = (0..n).map(|i| ZeroInitGate::PerHead(zero.get(i))).collect();
        let generated: Vec<(Tensor, Tensor)> = match cfg.expert {
            Expert::ReparamMlp => gen
                .iter()
                .enumerate()
                .map(|(i, (fc1, fc2))| {
                    // [L, 2D] → [L, D, 2]: even columns the key, odd the value.
                    let kv = fc2.forward(&fc1.forward(&emb.get(i as i64)).tanh()).view([cfg.prompt_length, d, 2]);
                    let one = |j: i64| kv.select(2, j).view([1, cfg.prompt_length, h, hd]).transpose(1, 2);
                    (one(0), one(1))
                })
                .collect(),
            _ => Vec::new(),
        };
        let prefixes = if generated.is_empty() { &prefixes } else { &generated };
        let mut prompts = Prompts::none();
        if cfg.expert == Expert::Lora {
            for (i, &l) in cfg.layers.iter().enumerate() {
                prompts = prompts.with_lora(l, &loras[i]);
            }
            return Ok(head.forward(&vit.forward(x, &prompts)?.cls));
        }
        for (i, &l) in cfg.layers.iter().enumerate() {
            prompts = prompts.with_prefix(l, &prefixes[i].0, &prefixes[i].1);
            prompts = match cfg.expert {
                Expert::ZeroInit => prompts.with_zero_gate(l, &zero_gates[i]),
                _ => prompts.with_score_hook(l, &gates[i] as &dyn PrefixScoreHook),
            };
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
        expert: cfg.expert,
        batch: cfg.batch,
        image_size: cfg.vit.img_size,
        train_images_per_s: train_ips,
        eval_images_per_s: eval_ips,
        device: format!("{:?}", cfg.device),
    })
}
