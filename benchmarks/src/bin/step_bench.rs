//! `step_bench [--device cuda] [--batch 64,128] [--precision bf16,f32] [--experts norga,zero-init,reparam-mlp,lora] [--tiny]`
//! One JSON line per (expert, precision, batch), in the fields `torch_step_reference.py` prints.

use anyhow::Result;
use clap::Parser;
use promptcl_benchmarks::step::{run, Expert, StepConfig};
use promptcl_model::{Precision, ViTConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    batch: Vec<i64>,
    #[arg(long, value_delimiter = ',', default_value = "bf16,f32")]
    precision: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "norga")]
    experts: Vec<Expert>,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// A tiny ViT at 32 px (for CPU smoke runs).
    #[arg(long)]
    tiny: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = promptcl_benchmarks::device(&a.device);
    let vit = if a.tiny {
        ViTConfig { img_size: 32, patch_size: 8, embed_dim: 64, depth: 6, num_heads: 4, ..ViTConfig::vit_tiny_patch16_224() }
    } else {
        ViTConfig::vit_base_patch16_224()
    };
    for &expert in &a.experts {
        for p in &a.precision {
            let precision = match p.as_str() {
                "bf16" => Precision::Bf16,
                _ => Precision::F32,
            };
            for &batch in &a.batch {
                let cfg = StepConfig {
                    vit: vit.clone(),
                    batch,
                    prompt_length: 5,
                    layers: vec![0, 1, 2, 3, 4],
                    expert,
                    classes: 100,
                    precision,
                    device,
                    warmup: a.warmup,
                    iters: a.iters,
                };
                println!("{}", serde_json::to_string(&run(&cfg)?)?);
            }
        }
    }
    Ok(())
}
