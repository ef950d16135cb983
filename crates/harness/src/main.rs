//! `promptcl`: run, inspect and compare prompt-based continual-learning experiments.

mod doctor;

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use promptcl_model::{
    frozen_vit, ForwardOptions, GateActivation, NoRGaGate, Precision, Prompts, ViTConfig,
};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser)]
#[command(name = "promptcl", version, about)]
struct Cli {
    /// Only warnings and errors.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report libtorch, CUDA, device, bf16 and fused-attention support.
    Doctor {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A tiny offline end-to-end check: a random-init ViT with prefixes and
    /// NoRGa gates, forward and backward to the prompts.
    Demo {
        /// Run on this device (`cpu`, `cuda`); default: CUDA if available.
        #[arg(long)]
        device: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = if cli.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Doctor { json } => {
            let report = doctor::Report::collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print();
            }
        }
        Command::Demo { device } => demo(parse_device(device.as_deref())?)?,
    }
    Ok(())
}

fn parse_device(name: Option<&str>) -> Result<Device> {
    match name {
        None => Ok(Device::cuda_if_available()),
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        Some("cuda") => anyhow::bail!("--device cuda: no CUDA device is available (see `promptcl doctor`)"),
        Some(other) => anyhow::bail!("--device {other}: expected `cpu` or `cuda`"),
    }
}

fn demo(device: Device) -> Result<()> {
    tch::manual_seed(0);
    // ViT-Ti/16 geometry at 224px, random weights: shapes and code paths as the
    // real backbone, no download needed.
    let cfg = ViTConfig::vit_tiny_patch16_224();
    let precision = if device.is_cuda() { Precision::Bf16 } else { Precision::F32 };
    let (_backbone, vit) = frozen_vit(&cfg, None, device, precision).context("building the ViT")?;
    let prompts_vs = nn::VarStore::new(device);
    let root = prompts_vs.root();
    let (heads, hd) = (cfg.num_heads, cfg.head_dim());
    let layers = 0..5;
    let prefixes: Vec<_> = layers
        .clone()
        .map(|l| {
            let p = &root / "e_prompt" / l;
            (p.randn("key", &[1, heads, 5, hd], 0.0, 0.02), p.randn("value", &[1, heads, 5, hd], 0.0, 0.02))
        })
        .collect();
    let gates: Vec<_> = layers
        .clone()
        .map(|l| {
            let p = &root / "gate" / l;
            NoRGaGate { alpha: p.ones("alpha", &[]), tau: p.ones("tau", &[]), activation: GateActivation::Tanh }
        })
        .collect();
    let mut prompts = Prompts::none();
    for (l, ((k, v), g)) in layers.zip(prefixes.iter().zip(&gates)) {
        prompts = prompts.with_prefix(l, k, v).with_score_hook(l, g);
    }
    let images = Tensor::randn([8, 3, 224, 224], (Kind::Float, device));
    let t = Instant::now();
    let query = vit.query(&images)?;
    let out = vit.forward_with(&images, &prompts, &ForwardOptions::default())?;
    let loss = (&out.cls - &query).square().mean(Kind::Float);
    loss.backward();
    let grads_ok = prefixes.iter().all(|(k, _)| k.grad().defined())
        && gates.iter().all(|g| g.alpha.grad().defined() && g.tau.grad().defined());
    println!(
        "demo: ViT-Ti/16 (random init) on {device:?} [{precision:?}]: query {:?}, prompted cls {:?}, \
         loss {:.4}, gradients reach prompts and gates: {grads_ok}, {:.2}s",
        query.size(),
        out.cls.size(),
        loss.double_value(&[]),
        t.elapsed().as_secs_f64()
    );
    anyhow::ensure!(grads_ok, "prompt gradients missing");
    Ok(())
}
