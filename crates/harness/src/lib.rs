//! The promptcl harness: configs, the run loop, results, plots, comparisons.
//! The binary (`main.rs`) is a thin CLI over this.

pub mod compare;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod env;
pub mod plot;
pub mod preempt;
pub mod results;
pub mod run;
pub mod sweep;

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Prints a finished (or partial) run's matrix and summary, and writes its plots.
pub fn report(dir: &Path, quiet: bool) -> Result<results::Metrics> {
    let m = results::load_metrics(dir)?;
    plot::write_svg_png(&plot::forgetting_svg(&m), &dir.join("forgetting"))?;
    if !quiet {
        println!("{}  ({})", dir.display(), m.method);
        print!("{}", compare::matrix_table(&m));
        if let Some(s) = &m.summary {
            println!(
                "faa {:.2}  caa {:.2}  ffm {:.2}  bwt {:.2}  (sample-weighted: final accuracy {:.2}  average accuracy {:.2})",
                s.faa, s.caa, s.ffm, s.backward_transfer, s.final_accuracy, s.average_accuracy
            );
        }
        println!("plot: {}", dir.join("forgetting.png").display());
    }
    Ok(m)
}

/// Expands arguments that are results folders holding runs, or sweep
/// folders, into run folders.
pub fn run_dirs(args: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in args {
        if a.join(sweep::MANIFEST).is_file() {
            out.extend(run_dirs(&[a.join("runs")]));
        } else if a.join(results::METRICS).is_file() {
            out.push(a.clone());
        } else if let Ok(entries) = std::fs::read_dir(a) {
            let mut v: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join(results::METRICS).is_file()).collect();
            v.sort();
            out.extend(v);
        }
    }
    out
}
