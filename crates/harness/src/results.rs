//! A run's folder: `results/<run-id>/` with the resolved config, environment,
//! metrics (JSON + CSV), a JSON-lines log and per-task checkpoints. Every
//! file but the append-only log is written atomically (temp + fsync + rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use promptcl_learner::metrics::{AccuracyMatrix, Summary};
use serde::{Deserialize, Serialize};

pub const CONFIG: &str = "config.toml";
pub const STATE: &str = "state.json";
pub const METRICS: &str = "metrics.json";
pub const MATRIX_CSV: &str = "matrix.csv";
pub const ENV: &str = "env.json";
pub const LOG: &str = "log.jsonl";
const LOCK: &str = "run.lock";

/// Where a run stands; rewritten after every finished task (and epoch, with
/// per-epoch checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub run_id: String,
    pub seed: u64,
    pub completed_tasks: usize,
    pub num_tasks: usize,
    pub finished: bool,
    /// The last epoch checkpoint inside the unfinished task, if any.
    #[serde(default)]
    pub epoch_checkpoint: Option<EpochMark>,
}

/// Where an epoch checkpoint was taken: after `epochs_done` epochs of stage
/// `stage` (index in the task's stage list, named `stage_name`) of `task`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochMark {
    pub task: usize,
    #[serde(default)]
    pub stage: usize,
    #[serde(default)]
    pub stage_name: String,
    pub epochs_done: usize,
}

pub const EPOCH_CHECKPOINT: &str = "checkpoints/epoch.safetensors";

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub name: String,
    pub method: String,
    pub dataset: String,
    pub seed: u64,
    pub matrix: AccuracyMatrix,
    /// Written for readers of the file; on load it is recomputed from the
    /// matrix, so files written before a metric existed still compare.
    #[serde(skip_deserializing)]
    pub summary: Option<Summary>,
    /// The run config's `tags` (a sweep's axis values).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

pub struct RunDir {
    pub path: PathBuf,
    locked: bool,
}

/// The one atomic writer, shared with the stream crate's caches.
pub use promptcl_stream::{atomic_write, atomic_write_with};

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(atomic_write(path, serde_json::to_string_pretty(value)?.as_bytes())?)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid promptcl file", path.display()))
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl RunDir {
    /// A new, uniquely named run folder (never an existing one: concurrent
    /// runs cannot clobber each other).
    pub fn create(results: &Path, name: &str, method: &str, seed: u64) -> Result<Self> {
        std::fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
        let base = format!("{name}-{method}-seed{seed}-{}", utc_stamp());
        for attempt in 0..1000 {
            let id = if attempt == 0 { base.clone() } else { format!("{base}-{attempt}") };
            let path = results.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let mut dir = Self { path, locked: false };
                    dir.lock()?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not find a free run folder name under {}", results.display())
    }

    /// `path` (created if missing) for a new run: a sweep's run folder, which
    /// may already hold the run's config but no started run.
    pub fn create_at(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let mut dir = Self { path: path.to_path_buf(), locked: false };
        dir.lock()?;
        if dir.file(STATE).is_file() {
            bail!("{} already holds a run (resume it instead)", path.display());
        }
        Ok(dir)
    }

    /// An existing run folder, locked against a second process resuming it.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join(STATE).is_file() {
            bail!("{} is not a promptcl run folder (no {STATE})", path.display());
        }
        let mut dir = Self { path: path.to_path_buf(), locked: false };
        dir.lock()?;
        Ok(dir)
    }

    fn lock(&mut self) -> Result<()> {
        let lock = self.path.join(LOCK);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(mut f) => {
                writeln!(f, "{}", Holder::me().line())?;
                self.locked = true;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(holder) = lock_holder(&self.path) {
                    bail!("{} is in use by {holder} (remove {} if that is wrong)", self.path.display(), lock.display());
                }
                // A stale lock from a killed process: take it over.
                std::fs::remove_file(&lock).ok();
                self.lock()
            }
            Err(e) => Err(e).with_context(|| format!("locking {}", self.path.display())),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoint(&self, task: usize) -> PathBuf {
        self.path.join("checkpoints").join(format!("task-{task:03}.safetensors"))
    }

    pub fn append_log(&self, entry: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.file(LOG))?;
        writeln!(f, "{entry}")?;
        Ok(())
    }

    pub fn write_matrix_csv(&self, m: &AccuracyMatrix) -> Result<()> {
        Ok(atomic_write(&self.file(MATRIX_CSV), &matrix_csv(m)?)?)
    }
}

/// `after_task,task_0,…,seen_accuracy`; a task not yet seen is an empty cell.
pub fn matrix_csv(m: &AccuracyMatrix) -> Result<Vec<u8>> {
    let t = m.num_tasks();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(std::iter::once("after_task".to_string()).chain((0..t).map(|j| format!("task_{j}"))).chain(["seen_accuracy".to_string()]))?;
    for (i, row) in m.rows.iter().enumerate() {
        let cells = (0..t).map(|j| row.get(j).map_or_else(String::new, |v| format!("{v:.4}")));
        w.write_record(std::iter::once(i.to_string()).chain(cells).chain([format!("{:.4}", m.seen_accuracy[i])]))?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
}

/// Who holds a run folder's lock: `pid host [slurm-job]` on one line (a
/// lock of older versions holds the pid alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// `<job>_<array task>` or `<job>` when the holder ran under Slurm.
    pub slurm_job: Option<String>,
}

impl Holder {
    pub fn me() -> Self {
        Self { pid: std::process::id(), host: hostname(), slurm_job: slurm_job() }
    }

    fn line(&self) -> String {
        let mut s = format!("{} {}", self.pid, self.host);
        if let Some(j) = &self.slurm_job {
            s.push(' ');
            s.push_str(j);
        }
        s
    }

    fn parse(text: &str) -> Option<Self> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok()?;
        Some(Self { pid, host: it.next().map_or_else(hostname, String::from), slurm_job: it.next().map(String::from) })
    }

    /// Whether the holder may still be running. On this host /proc knows. A
    /// Slurm job that holds the lock is dead when we are that same job (a
    /// requeued array task runs again only after its first run ended).
    /// Elsewhere we cannot tell, so it counts as alive.
    fn alive(&self) -> bool {
        let me = Self::me();
        if self.slurm_job.is_some() && self.slurm_job == me.slurm_job && self.pid != me.pid {
            return false;
        }
        if self.host == me.host {
            return Path::new("/proc").join(self.pid.to_string()).exists();
        }
        true
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {}", self.pid, self.host)?;
        if let Some(j) = &self.slurm_job {
            write!(f, " (Slurm job {j})")?;
        }
        Ok(())
    }
}

/// The live holder of a run folder's lock, if any.
pub fn lock_holder(dir: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(dir.join(LOCK)).ok()?;
    Holder::parse(&text).filter(Holder::alive)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

fn slurm_job() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(job), Some(task)) => Some(format!("{job}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.locked {
            std::fs::remove_file(self.path.join(LOCK)).ok();
        }
    }
}

/// Loads `metrics.json` of a run folder (for plot / compare).
pub fn load_metrics(dir: &Path) -> Result<Metrics> {
    let mut m: Metrics = read_json(&dir.join(METRICS))?;
    m.summary = m.matrix.summary();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row i holds tasks 0..=i; the cells of tasks not yet seen are empty.
    #[test]
    fn matrix_csv_reads_back_with_empty_cells_for_unseen_tasks() {
        let m = AccuracyMatrix { rows: vec![vec![90.0], vec![80.0, 70.5]], seen_accuracy: vec![90.0, 75.25], task_id_accuracy: vec![None, None] };
        let bytes = matrix_csv(&m).unwrap();
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), ["after_task", "task_0", "task_1", "seen_accuracy"]);
        let rows: Vec<Vec<String>> = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
        assert_eq!(rows, [["0", "90.0000", "", "90.0000"], ["1", "80.0000", "70.5000", "75.2500"]]);
    }
}
