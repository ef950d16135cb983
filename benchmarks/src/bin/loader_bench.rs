//! `cargo run --release -p promptcl-benchmarks --bin loader_bench -- [--device cuda]`
//! Prints one JSON line per dataset (images/s as ready 224×224 batches).

use anyhow::Result;
use clap::Parser;
use promptcl_benchmarks::{loader, Env};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 10_000)]
    cifar_images: usize,
    #[arg(long, default_value_t = 2_000)]
    folder_images: usize,
    #[arg(long, default_value_t = 2)]
    epochs: u64,
    /// Where to write the synthetic JPEG folder (reused if present).
    #[arg(long, default_value = "target/bench-data/imagenet-r-like")]
    folder: std::path::PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = promptcl_benchmarks::device(&a.device);
    let env = Env::capture(device);
    let r = loader::cifar_like(a.cifar_images, a.batch_size, a.epochs, device)?;
    println!("{}", serde_json::json!({ "bench": "loader", "env": env, "result": r }));
    if !a.folder.exists() {
        loader::write_imagenet_r_like(&a.folder, a.folder_images, 200)?;
    }
    let r = loader::imagenet_r_like(&a.folder, a.batch_size, a.epochs, device)?;
    println!("{}", serde_json::json!({ "bench": "loader", "env": env, "result": r }));
    Ok(())
}
