//! The Slurm backend: the runs as one job array, each array task running
//! `promptcl run --dir` on its run folder. The array is submitted with
//! `--requeue` and `--signal=B:USR1@<signal_seconds>`: on that warning the
//! script passes USR1 to the run, which stops at its next step and exits 75,
//! and the script requeues the array task; on preemption Slurm requeues it
//! itself after the SIGTERM. Either way the rerun resumes from the last epoch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Manifest, RunStatus};
use crate::preempt::EXIT_REQUEUE;

pub const JOBS: &str = "slurm/jobs.jsonl";

/// Resources and options of the array; every field maps to one `#SBATCH` line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSection {
    pub job_name: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--time`, e.g. `"04:00:00"`.
    pub time: Option<String>,
    /// GPUs per run (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `"32G"`.
    pub mem: Option<String>,
    /// At most this many array tasks at once (`--array=…%N`).
    pub throttle: Option<usize>,
    /// Seconds before the time limit at which the run is told to stop and requeue.
    pub signal_seconds: u32,
    /// More `#SBATCH` lines, with or without the `#SBATCH` prefix (`"--constraint=a100"`).
    pub extra: Vec<String>,
    /// Shell lines run before the run (`"module load cuda"`).
    pub setup: Vec<String>,
    /// The promptcl binary the array runs (default: the one submitting).
    pub promptcl: Option<PathBuf>,
}

impl Default for SlurmSection {
    fn default() -> Self {
        Self {
            job_name: None,
            partition: None,
            account: None,
            qos: None,
            time: None,
            gpus: None,
            cpus_per_task: None,
            mem: None,
            throttle: None,
            signal_seconds: 300,
            extra: Vec::new(),
            setup: Vec::new(),
            promptcl: None,
        }
    }
}

impl SlurmSection {
    pub fn validate(&self) -> Result<()> {
        if self.throttle == Some(0) {
            bail!("throttle must be at least 1");
        }
        for (key, v) in [
            ("job_name", &self.job_name),
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("time", &self.time),
            ("mem", &self.mem),
        ] {
            if v.as_deref().is_some_and(|v| v.is_empty() || v.chars().any(char::is_whitespace)) {
                bail!("{key}: {:?} is empty or holds spaces", v.as_deref().unwrap_or(""));
            }
        }
        Ok(())
    }
}

/// `0-3,5,7-9`: the array indices as Slurm's range list.
pub fn ranges(indices: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        out.push(if i == j { indices[i].to_string() } else { format!("{}-{}", indices[i], indices[j]) });
        i = j + 1;
    }
    out.join(",")
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The array script for `indices` of the manifest.
pub fn script(root: &Path, manifest: &Manifest, s: &SlurmSection, indices: &[usize], exe: &Path) -> String {
    let mut o = String::from("#!/bin/bash\n");
    let mut line = |l: String| {
        let _ = writeln!(o, "#SBATCH {l}");
    };
    line(format!("--job-name={}", s.job_name.clone().unwrap_or_else(|| format!("promptcl-{}", manifest.name))));
    let throttle = s.throttle.map(|t| format!("%{t}")).unwrap_or_default();
    line(format!("--array={}{throttle}", ranges(indices)));
    line(format!("--output={}/logs/slurm-%A_%a.out", root.display()));
    line("--open-mode=append".into());
    line("--requeue".into());
    line(format!("--signal=B:USR1@{}", s.signal_seconds));
    for (flag, v) in [("partition", &s.partition), ("account", &s.account), ("qos", &s.qos), ("time", &s.time), ("mem", &s.mem)] {
        if let Some(v) = v {
            line(format!("--{flag}={v}"));
        }
    }
    if let Some(g) = s.gpus {
        line(format!("--gres=gpu:{g}"));
    }
    if let Some(c) = s.cpus_per_task {
        line(format!("--cpus-per-task={c}"));
    }
    for e in &s.extra {
        line(e.trim().trim_start_matches("#SBATCH").trim().to_string());
    }
    o.push_str("\n# Written by `promptcl sweep`: one run folder per array index.\nset -u\n");
    for l in &s.setup {
        let _ = writeln!(o, "{l}");
    }
    o.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
    for &i in indices {
        let _ = writeln!(o, "  {i}) RUN={} ;;", quote(&manifest.runs[i].dir));
    }
    o.push_str("  *) echo \"no run for array index $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n");
    let _ = write!(
        o,
        r#"echo "[$(date -u +%FT%TZ)] $RUN on $(hostname) (restart ${{SLURM_RESTART_COUNT:-0}})"
# In the background so this shell can pass Slurm's time-limit warning on.
{exe} --quiet run --dir "$RUN" &
pid=$!
trap 'kill -USR1 $pid' USR1
wait $pid
rc=$?
# A trapped signal interrupts `wait`; wait for the run itself.
while [ $rc -gt 128 ] && kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
if [ $rc -eq {EXIT_REQUEUE} ]; then
  echo "[$(date -u +%FT%TZ)] stopped before the time limit; requeueing"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit $rc
"#,
        exe = quote(exe),
    );
    o
}

fn tool(name: &str) -> Command {
    let mut c = Command::new(name);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c
}

/// Runs a Slurm client with a deadline: with a hung controller or munge
/// daemon they block for minutes, and a sweep should say so instead.
fn within(mut cmd: Command, secs: u64) -> std::io::Result<std::process::Output> {
    use std::io::Read as _;
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{name} gave no answer in {secs} s: is the Slurm controller reachable?"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr)?;
    }
    Ok(std::process::Output { status, stdout, stderr })
}

/// `sbatch` is there and the controller answers (`sbatch --test-only` of the
/// script): checked before anything is submitted.
fn preflight(script: &Path) -> Result<()> {
    let mut version = tool("sbatch");
    version.arg("--version");
    let out = within(version, 10);
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => bail!("`sbatch --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => bail!("sbatch is not reachable ({e}): run this on a Slurm login node, or use backend = \"local\""),
    }
    let mut test = tool("sbatch");
    test.arg("--test-only").arg(script);
    let o = within(test, 60).context("running sbatch --test-only")?;
    if !o.status.success() {
        bail!(
            "Slurm refused the array (`sbatch --test-only {}`): {}; nothing was submitted",
            script.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub job: String,
    pub indices: Vec<usize>,
    pub script: PathBuf,
}

pub fn submissions(root: &Path) -> Vec<Submission> {
    std::fs::read_to_string(root.join(JOBS)).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Submits `indices` as one array; returns the job id.
pub fn submit(root: &Path, manifest: &Manifest, s: &SlurmSection, indices: &[usize]) -> Result<String> {
    if indices.is_empty() {
        bail!("nothing to submit");
    }
    let exe = match &s.promptcl {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the promptcl binary")?,
    };
    let n = submissions(root).len();
    let path = root.join("slurm").join(format!("array-{n}.sh"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    crate::results::atomic_write(&path, script(root, manifest, s, indices, &exe).as_bytes())?;
    preflight(&path)?;
    let mut sbatch = tool("sbatch");
    sbatch.arg("--parsable").arg(&path);
    let o = within(sbatch, 60).context("running sbatch")?;
    if !o.status.success() {
        bail!("sbatch {} failed: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim());
    }
    // `--parsable` prints `<job>` or `<job>;<cluster>`.
    let job = String::from_utf8_lossy(&o.stdout).trim().split(';').next().unwrap_or("").to_string();
    if job.is_empty() {
        bail!("sbatch printed no job id");
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(root.join(JOBS))?;
    writeln!(f, "{}", serde_json::to_string(&Submission { job: job.clone(), indices: indices.to_vec(), script: path })?)?;
    Ok(job)
}

/// Queued and running array tasks of the sweep's submissions, by run index
/// (`squeue`; empty when Slurm is not reachable, so local status still works).
pub fn scheduler_states(root: &Path) -> BTreeMap<usize, RunStatus> {
    let subs = submissions(root);
    let mut out = BTreeMap::new();
    if subs.is_empty() {
        return out;
    }
    // One query per array: an id Slurm has forgotten must not hide the others.
    for sub in &subs {
        let mut squeue = tool("squeue");
        squeue.args(["-h", "-r", "-o", "%i %T", "-j", &sub.job]);
        let o = match within(squeue, 30) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("squeue: {e}; queued and running array tasks are not shown");
                return out;
            }
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(id), Some(state)) = (it.next(), it.next()) else { continue };
            let Some((_, task)) = id.split_once('_') else { continue };
            let Ok(index) = task.parse::<usize>() else { continue };
            let status = match state {
                "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "CONFIGURING" | "SUSPENDED" => RunStatus::Queued,
                "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => RunStatus::Running,
                _ => continue,
            };
            out.insert(index, status);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ranges_compress_runs_of_indices() {
        assert_eq!(ranges(&[0, 1, 2, 3, 5, 7, 8, 9]), "0-3,5,7-9");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(quote(Path::new("/a/it's")), r"'/a/it'\''s'");
    }
}
