//! The local backend: a queue over this machine's GPUs (N runs per GPU,
//! each with its own `CUDA_VISIBLE_DEVICES`) or over CPU slots. It runs in
//! the foreground; started again, it runs only what is unfinished.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Manifest, RunStatus};
use crate::preempt;

pub const QUEUE_LOG: &str = "queue.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSection {
    /// GPU ids to use (default: every visible GPU, or the CPU when there is none;
    /// `[]`: the CPU).
    pub gpus: Option<Vec<String>>,
    /// Runs at a time per GPU.
    pub per_gpu: usize,
    /// Runs at a time on the CPU (when no GPU is used); each gets an even share
    /// of the cores through `OMP_NUM_THREADS` unless that is set.
    pub cpu_slots: usize,
}

impl Default for LocalSection {
    fn default() -> Self {
        Self { gpus: None, per_gpu: 1, cpu_slots: 1 }
    }
}

impl LocalSection {
    pub fn validate(&self) -> Result<()> {
        if self.per_gpu == 0 || self.cpu_slots == 0 {
            bail!("per_gpu and cpu_slots must be at least 1");
        }
        Ok(())
    }

    /// One entry per slot: the `CUDA_VISIBLE_DEVICES` its runs get (empty: the CPU).
    fn slots(&self) -> Vec<String> {
        let gpus = match &self.gpus {
            Some(g) => g.clone(),
            None => match std::env::var("CUDA_VISIBLE_DEVICES") {
                // Keep the ids the user's own restriction names.
                Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
                _ => (0..tch::Cuda::device_count()).map(|i| i.to_string()).collect(),
            },
        };
        if gpus.is_empty() {
            return vec![String::new(); self.cpu_slots];
        }
        gpus.iter().flat_map(|g| std::iter::repeat_n(g.clone(), self.per_gpu)).collect()
    }
}

fn log_event(root: &Path, event: serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(root.join(QUEUE_LOG))?;
    writeln!(f, "{event}")?;
    Ok(())
}

struct Active {
    index: usize,
    slot: usize,
    child: Child,
}

/// Runs every unfinished run of the sweep, `slots` at a time. Returns the
/// number of runs that failed. A signal to the queue stops its runs (they
/// checkpoint) and then the queue.
pub fn run_queue(root: &Path, manifest: &Manifest, section: &LocalSection, exe: &Path) -> Result<usize> {
    preempt::install().context("installing signal handlers")?;
    let slots = section.slots();
    let statuses = super::statuses(manifest, &Default::default());
    let mut pending: VecDeque<usize> =
        manifest.runs.iter().zip(&statuses).filter(|(_, s)| **s != RunStatus::Finished).map(|(r, _)| r.index).collect();
    let done = manifest.runs.len() - pending.len();
    let what = if slots[0].is_empty() { format!("{} CPU slot(s)", slots.len()) } else { format!("GPU slots {slots:?}") };
    eprintln!("sweep {}: {} runs, {done} finished, {} to run on {what}", manifest.name, manifest.runs.len(), pending.len());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(slots.len()).max(1);
    let mut active: Vec<Active> = Vec::new();
    let mut failed = 0;
    let mut stopping = false;
    let started = Instant::now();
    loop {
        if !stopping && preempt::requested().is_some() {
            stopping = true;
            eprintln!("sweep {}: stopping; the running runs checkpoint and stop", manifest.name);
            for a in &active {
                // The runs see their parent gone as well; this is quicker.
                let _ = Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status();
            }
        }
        // Fill the free slots; a run still locked (a previous queue's run on
        // its way out) waits for its turn.
        let mut deferred = 0;
        while !stopping && active.len() < slots.len() && deferred < pending.len() {
            let index = pending.pop_front().expect("non-empty");
            let run = &manifest.runs[index];
            if let Some(holder) = crate::results::lock_holder(&run.dir) {
                tracing::debug!("{} is held by {holder}", run.name);
                pending.push_back(index);
                deferred += 1;
                continue;
            }
            let slot = (0..slots.len()).find(|s| !active.iter().any(|a| a.slot == *s)).expect("a free slot");
            let child = spawn(root, run, exe, &slots[slot], threads)?;
            log_event(root, serde_json::json!({"event": "start", "run": run.name, "index": index, "slot": slot, "pid": child.id()}))?;
            eprintln!("[{:>6.0}s] start  {} (slot {slot})", started.elapsed().as_secs_f64(), run.name);
            active.push(Active { index, slot, child });
        }
        if active.is_empty() && (pending.is_empty() || stopping) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut a in active.drain(..) {
            match a.child.try_wait()? {
                None => still.push(a),
                Some(status) => {
                    let run = &manifest.runs[a.index];
                    let code = status.code();
                    log_event(root, serde_json::json!({"event": "exit", "run": run.name, "index": a.index, "code": code}))?;
                    let finished = crate::results::read_json::<crate::results::State>(&run.dir.join(crate::results::STATE)).is_ok_and(|s| s.finished);
                    let word = if finished {
                        "done"
                    } else if code == Some(preempt::EXIT_REQUEUE as i32) && !stopping {
                        pending.push_back(a.index);
                        "requeued"
                    } else if stopping {
                        "stopped"
                    } else {
                        failed += 1;
                        "FAILED"
                    };
                    eprintln!("[{:>6.0}s] {word:<6} {} (exit {code:?})", started.elapsed().as_secs_f64(), run.name);
                }
            }
        }
        active = still;
    }
    if let Some(sig) = preempt::requested() {
        return Err(preempt::Preempted { signal: sig, task: 0 }.into());
    }
    Ok(failed)
}

fn spawn(root: &Path, run: &super::RunEntry, exe: &Path, cuda: &str, threads: usize) -> Result<Child> {
    let log_path: PathBuf = root.join("logs").join(format!("{}.log", run.name));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--quiet").arg("run").arg("--dir").arg(&run.dir);
    cmd.env(preempt::QUEUE_PID_ENV, std::process::id().to_string());
    cmd.env("CUDA_VISIBLE_DEVICES", cuda);
    if cuda.is_empty() && std::env::var_os("OMP_NUM_THREADS").is_none() {
        cmd.env("OMP_NUM_THREADS", threads.to_string());
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    cmd.spawn().with_context(|| format!("starting {}", exe.display()))
}
