//! `cargo run --release -p promptcl-benchmarks --bin pipeline_bench -- [--config …] [--device cuda]`
//! A whole run of a CIFAR-100 paper config (default: NoRGa, Sup-21K schedule)
//! on random-init weights and a synthetic CIFAR-100 of the real size
//! (50,000 / 10,000 images, official binary format, written once). Prints one
//! JSON line: wall time, per-task training and other seconds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use promptcl_benchmarks::{pipeline, Env};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "benchmarks/configs/cifar100_norga.toml")]
    config: PathBuf,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The synthetic CIFAR-100 (written if absent).
    #[arg(long, default_value = "target/bench-data/cifar100-synthetic")]
    data: PathBuf,
    /// Images per class (500 / 100 = the real CIFAR-100).
    #[arg(long, default_value_t = 500)]
    train_per_class: usize,
    #[arg(long, default_value_t = 100)]
    test_per_class: usize,
    #[arg(long, default_value = "target/bench-results")]
    results: PathBuf,
    /// A small ViT at 32 px and one epoch per stage (for CPU smoke runs).
    #[arg(long)]
    tiny: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = promptcl_benchmarks::device(&a.device);
    let env = Env::capture(device);
    if !a.data.join("cifar-100-binary/test.bin").is_file() {
        pipeline::write_synthetic_cifar100(&a.data, a.train_per_class, a.test_per_class, a.seed)?;
    }
    let r = pipeline::run_pipeline(&a.config, &a.data, &a.device, a.seed, &a.results, a.tiny)?;
    println!("{}", serde_json::json!({ "bench": "pipeline", "env": env, "result": r }));
    Ok(())
}
