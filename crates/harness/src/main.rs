//! `promptcl`: run, inspect and compare prompt-based continual-learning experiments.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use promptcl_harness::config::{DeviceChoice, RunConfig};
use promptcl_harness::sweep::{self, BackendKind};
use promptcl_harness::{compare, demo, doctor, finished_runs, plot, preempt, report, results, run, run_dirs};

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
        /// Start, resume or (when finished) leave the run whose one-seed config
        /// is `<DIR>/config.toml`, in that folder: what a sweep's runs do.
        #[arg(long, conflicts_with_all = ["config", "resume", "seed"])]
        dir: Option<PathBuf>,
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
        /// Two methods (`a,b`) to compare seed by seed: per-seed differences of the final
        /// average accuracy and a paired t-test, written to `paired-a-b.md`.
        #[arg(long, value_name = "A,B")]
        paired: Option<String>,
    },
    /// A grid of runs from a sweep file (base config + axes), on a local queue or Slurm.
    Sweep(SweepArgs),
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

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SweepArgs {
    #[command(subcommand)]
    action: Option<SweepAction>,
    /// The sweep file: expands it, validates every run, then runs or submits what is unfinished.
    file: Option<PathBuf>,
    /// List the runs (and, for Slurm, the array script) without writing or submitting anything.
    #[arg(long)]
    dry_run: bool,
    /// Overrides the sweep file's `backend`.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
}

#[derive(Subcommand)]
enum SweepAction {
    /// Per run: not started, queued, running, stopped, failed (with its error's first line) or finished.
    Status {
        /// The sweep folder or its sweep file.
        sweep: PathBuf,
    },
    /// Runs or submits again only the failed, stopped and never-started runs.
    Resubmit {
        sweep: PathBuf,
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
}

/// A failure prints as the CLI's own message — the error and its causes, no
/// stack backtrace even under `RUST_BACKTRACE=1` — as ripgrep and cargo do.
fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(p) = e.downcast_ref::<preempt::Preempted>() {
                eprintln!("{p}");
                return ExitCode::from(p.exit_code());
            }
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
        Command::Run { config, resume, seed, dir } => {
            preempt::install().context("installing signal handlers")?;
            let opts = run::RunOptions { quiet, ..Default::default() };
            if let Some(dir) = dir {
                let outcome = run::run_in(&dir, opts);
                sweep::record_outcome(&dir, &outcome)?;
                report(&outcome?, quiet)?;
                return Ok(());
            }
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
        Command::Sweep(args) => sweep_command(args)?,
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
            let metrics: Vec<_> = all.into_iter().map(|(_, m)| m).collect();
            let mut groups: Vec<(String, Vec<&results::Metrics>)> = Vec::new();
            for m in &metrics {
                let key = if m.name == m.method { m.name.clone() } else { format!("{} / {}", m.name, m.method) };
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(m),
                    None => groups.push((key, vec![m])),
                }
            }
            plot::write_svg_png(&plot::accuracy_bands_svg(&groups), &out.join("accuracy_bands"))?;
            println!("{}", out.join("accuracy_bands.png").display());
        }
        Command::Compare { runs, out, paired } => {
            let (dirs, unfinished) = finished_runs(run_dirs(&runs));
            if !unfinished.is_empty() {
                let names: Vec<String> = unfinished.iter().map(|d| d.display().to_string()).collect();
                eprintln!("compare: {} unfinished run(s) left out: {}", unfinished.len(), names.join(", "));
            }
            if dirs.is_empty() {
                bail!("no finished run folders (with {}) among {runs:?}", results::METRICS);
            }
            let metrics = dirs.iter().map(|d| results::load_metrics(d)).collect::<Result<Vec<_>>>()?;
            let rows = compare::rows(&metrics);
            print!("{}", compare::terminal(&rows));
            std::fs::create_dir_all(&out)?;
            results::atomic_write(&out.join("compare.md"), compare::markdown(&rows).as_bytes())?;
            results::atomic_write(&out.join("compare.csv"), &compare::csv(&rows)?)?;
            println!("wrote {} and {}", out.join("compare.md").display(), out.join("compare.csv").display());
            if let Some(pair) = paired {
                let Some((a, b)) = pair.split_once(',') else { bail!("--paired {pair}: expected two method (or run/method) names, `a,b`") };
                let p = compare::paired(&metrics, a.trim(), b.trim())?;
                print!("\n{}", p.markdown());
                let path = out.join(format!("paired-{}-{}.md", p.a, p.b).replace('/', "_"));
                results::atomic_write(&path, p.markdown().as_bytes())?;
                println!("wrote {}", path.display());
            }
            for root in runs.iter().filter(|r| r.join(sweep::MANIFEST).is_file()) {
                let (_, manifest) = sweep::open(root)?;
                let table = sweep::paper_table(&manifest)?;
                print!("\n{}", table.markdown());
                let stem = out.join(format!("{}-table", manifest.name));
                results::atomic_write(&stem.with_extension("md"), table.markdown().as_bytes())?;
                results::atomic_write(&stem.with_extension("csv"), &table.csv()?)?;
                results::atomic_write(&stem.with_extension("tex"), table.latex().as_bytes())?;
                println!("wrote {}.{{md,csv,tex}}", stem.display());
            }
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

fn sweep_command(args: SweepArgs) -> Result<()> {
    match args.action {
        Some(SweepAction::Status { sweep: arg }) => {
            let (root, manifest) = sweep::open(&arg)?;
            let states = sweep::statuses(&manifest, &sweep::slurm::scheduler_states(&root));
            print!("{}", sweep::status_table(&manifest, &states));
            Ok(())
        }
        Some(SweepAction::Resubmit { sweep: arg, backend }) => {
            let (root, manifest) = sweep::open(&arg)?;
            let file = sweep::SweepFile::load(&manifest.sweep_file)?;
            sweep::launch(&root, &manifest, &file, backend.unwrap_or(manifest.backend))
        }
        None => {
            let Some(path) = args.file else { bail!("give a sweep file (see benchmarks/sweeps/), or `status` / `resubmit` <sweep>") };
            let e = sweep::expand(&path)?;
            let backend = args.backend.unwrap_or(e.file.backend);
            if args.dry_run {
                print!("{}", sweep::dry_run(&e, backend)?);
                return Ok(());
            }
            e.write()?;
            sweep::launch(&e.root, &e.manifest, &e.file, backend)
        }
    }
}
