//! `promptcl`: run, inspect and compare prompt-based continual-learning experiments.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use promptcl_harness::config::{DeviceChoice, RunConfig};
use promptcl_harness::{compare, demo, doctor, plot, report, results, run, run_dirs};

#[derive(Parser)]
#[command(name = "promptcl", version, about)]
struct Cli {
    /// Only warnings, errors and final results (no progress bars).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a method over a class-incremental stream; one run per seed.
    Run {
        /// A TOML or JSON config (see benchmarks/configs/).
        config: Option<PathBuf>,
        /// Continue an interrupted run folder after its last finished task.
        #[arg(long, conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// Run only this seed (default: every seed of the config).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Forgetting curves (per run) and accuracy curves (across runs) as PNG and SVG.
    Plot {
        /// Run folders, or results folders holding them.
        runs: Vec<PathBuf>,
        /// Where the cross-run plot goes.
        #[arg(long, default_value = "results/plots")]
        out: PathBuf,
    },
    /// A methods × metrics table (mean ± std over seeds), in the terminal and as Markdown/CSV.
    Compare {
        runs: Vec<PathBuf>,
        #[arg(long, default_value = "results/compare")]
        out: PathBuf,
    },
    /// List the registered methods, or one method's parameters with their defaults.
    Methods {
        /// Print every parameter of this method, its default and its meaning.
        #[arg(long, value_name = "NAME")]
        params: Option<String>,
    },
    /// Write promptcl's deterministic train/test split file for an image folder.
    SplitFolder {
        root: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 0.8)]
        fraction: f64,
    },
    /// Report libtorch, CUDA, device, bf16 and fused-attention support.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// The offline demo: pretrain a small ViT on procedural images, then continual learning.
    Demo {
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
    },
}

/// A failure prints as the CLI's own message — the error and its causes, no
/// stack backtrace even under `RUST_BACKTRACE=1` — as ripgrep and cargo do.
fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let level = if cli.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let quiet = cli.quiet;
    // Out-of-memory panics from libtorch are caught and explained by the run
    // loop; keep their stack trace out of the user's terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
        if !msg.to_lowercase().contains("out of memory") {
            default_hook(info);
        }
    }));
    match cli.command {
        Command::Run { config, resume, seed } => {
            let opts = run::RunOptions { quiet, ..Default::default() };
            if let Some(dir) = resume {
                let cfg = RunConfig::load(&dir.join(results::CONFIG))?;
                let state: results::State = results::read_json(&dir.join(results::STATE))?;
                let out = run::run(&cfg, state.seed, Some(&dir), opts)?;
                report(&out, false)?;
                return Ok(());
            }
            let Some(path) = config else { bail!("give a config file, or --resume <run folder>") };
            let cfg = RunConfig::load(&path)?;
            let seeds = match seed {
                Some(s) => vec![s],
                None => cfg.seeds.clone(),
            };
            for s in seeds {
                let out = run::run(&cfg, s, None, opts).with_context(|| format!("run with seed {s}"))?;
                report(&out, false)?;
            }
        }
        Command::Plot { runs, out } => {
            let dirs = run_dirs(&runs);
            if dirs.is_empty() {
                bail!("no run folders (with {}) among {runs:?}", results::METRICS);
            }
            let mut all = Vec::new();
            for d in &dirs {
                let m = results::load_metrics(d)?;
                plot::write_svg_png(&plot::forgetting_svg(&m), &d.join("forgetting"))?;
                println!("{}", d.join("forgetting.png").display());
                all.push((format!("{} s{}", m.method, m.seed), m));
            }
            std::fs::create_dir_all(&out)?;
            plot::write_svg_png(&plot::accuracy_svg(&all), &out.join("accuracy"))?;
            println!("{}", out.join("accuracy.png").display());
        }
        Command::Compare { runs, out } => {
            let dirs = run_dirs(&runs);
            if dirs.is_empty() {
                bail!("no run folders (with {}) among {runs:?}", results::METRICS);
            }
            let metrics = dirs.iter().map(|d| results::load_metrics(d)).collect::<Result<Vec<_>>>()?;
            let rows = compare::rows(&metrics);
            print!("{}", compare::terminal(&rows));
            std::fs::create_dir_all(&out)?;
            results::atomic_write(&out.join("compare.md"), compare::markdown(&rows).as_bytes())?;
            results::atomic_write(&out.join("compare.csv"), &compare::csv(&rows)?)?;
            println!("wrote {} and {}", out.join("compare.md").display(), out.join("compare.csv").display());
        }
        Command::Methods { params: None } => {
            for e in promptcl_learner::registry::METHODS {
                println!("{:<16} {}", e.name, e.about);
            }
        }
        Command::Methods { params: Some(name) } => {
            let e = promptcl_learner::registry::entry(&name)?;
            println!(
                "{}: {}
",
                e.name, e.about
            );
            print!("{}", (e.describe)());
        }
        Command::SplitFolder { root, seed, fraction } => {
            let classes = promptcl_stream::scan_image_folder(&root)?;
            let split = promptcl_stream::seeded_split(&classes, seed, fraction);
            let path = promptcl_stream::split_file_path(&root, seed);
            split.write(&path)?;
            println!("{}: {} classes, {} train / {} test", path.display(), classes.len(), split.train.len(), split.test.len());
        }
        Command::Doctor { json } => {
            let r = doctor::Report::collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                r.print();
            }
        }
        Command::Demo { device } => demo::run(device, quiet)?,
    }
    Ok(())
}
