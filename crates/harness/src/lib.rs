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

/// Splits run folders into finished ones and those whose `state.json` says
/// they are not (still running, or cut off): a comparison of the first with
/// the second would average a 10-task run with a 1-task one. A folder without
/// a readable state counts as finished.
pub fn finished_runs(dirs: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    dirs.into_iter().partition(|d| results::read_json::<results::State>(&d.join(results::STATE)).map_or(true, |s| s.finished))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_leaves_out_runs_whose_state_is_unfinished() {
        let root = std::env::temp_dir().join(format!("promptcl-finished-{}", std::process::id()));
        let state =
            |finished: bool| results::State { run_id: "r".into(), seed: 1, completed_tasks: 1, num_tasks: 2, finished, epoch_checkpoint: None };
        let dirs: Vec<PathBuf> = ["done", "running", "no-state"].iter().map(|n| root.join(n)).collect();
        for (d, s) in dirs.iter().zip([Some(state(true)), Some(state(false)), None]) {
            std::fs::create_dir_all(d).unwrap();
            if let Some(s) = s {
                std::fs::write(d.join(results::STATE), serde_json::to_string(&s).unwrap()).unwrap();
            }
        }
        let (finished, unfinished) = finished_runs(dirs.clone());
        assert_eq!(finished, [dirs[0].clone(), dirs[2].clone()]);
        assert_eq!(unfinished, [dirs[1].clone()]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
