//! `cargo run --release -p promptcl-benchmarks --bin ot_bench -- [--device cuda]`
//! The hierarchical-OT regulariser's per-task OT step for 100 and 200 classes
//! (JSON lines). `benchmarks/ot_reference.py` times POT's `ot.emd2` on the
//! same problem size for the ratio.

use anyhow::Result;
use clap::Parser;
use promptcl_benchmarks::{ot, Env};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "auto")]
    device: String,
    /// Samples per class (HierC: batch 24 × 5 per centroid).
    #[arg(long, default_value_t = 120)]
    samples: i64,
    #[arg(long, default_value_t = 768)]
    dim: i64,
    #[arg(long, default_value_t = 10)]
    exact_pairs: usize,
    #[arg(long, value_delimiter = ',', default_value = "100,200")]
    classes: Vec<i64>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let device = promptcl_benchmarks::device(&a.device);
    let env = Env::capture(device);
    for c in a.classes {
        let r = ot::run(c, a.samples, a.dim, a.exact_pairs, device)?;
        println!("{}", serde_json::json!({ "bench": "ot", "env": env, "result": r }));
    }
    Ok(())
}
