//! `promptcl sweep` against the real binary: expansion and its errors, the
//! local queue killed and restarted, signals, and (where it can be started)
//! a real single-node Slurm cluster with a requeued array task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use promptcl_harness::results::{self, Metrics, State};

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("promptcl-sweep-{}-{tag}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture base config (L2P, 5 tasks) and a sweep file over it.
fn write_sweep(dir: &Path, name: &str, epochs: usize, body: &str) -> PathBuf {
    std::fs::write(dir.join("base.toml"), common::fixture_config("fx", "l2p", "", epochs, 8, 0.02, &dir.join("unused"), "")).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\nbase = \"base.toml\"\nout = \"{}\"\n{body}", dir.join("sweeps").display())).unwrap();
    path
}

fn promptcl(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_promptcl"));
    c.current_dir(dir).arg("--quiet").stdin(Stdio::null()).env_remove("PROMPTCL_FAULT");
    c
}

fn output(c: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = c.output().unwrap();
    (status.success(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

fn state(dir: &Path) -> Option<State> {
    results::read_json(&dir.join(results::STATE)).ok()
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The highest `(restart N)` an array task's log shows.
fn restarts(log: &str) -> u32 {
    log.split("(restart ").skip(1).filter_map(|s| s.split(')').next()?.parse().ok()).max().unwrap_or(0)
}

/// The `start` events of the queue log, in order.
fn starts(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("queue.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "start")
        .map(|e| e["run"].as_str().unwrap().to_string())
        .collect()
}

const TWO_BY_TWO: &str = r#"
[[axis]]
key = "method.name"
values = ["l2p", "finetune-head"]
[[axis]]
key = "seeds"
values = [1, 2]
"#;

/// Each mistake is named before anything is written, and an unreachable
/// sbatch is named before anything is submitted.
#[test]
fn sweep_mistakes_are_clear_errors_before_anything_runs() {
    let dir = workdir("errors");
    let cases = [
        ("unknown-key", "[[axis]]\nkey = \"optim.epoch\"\nvalues = [1, 2]\n", "unknown field `epoch`"),
        ("unknown-param", "[[axis]]\nkey = \"method.params.lenght\"\nvalues = [1, 2]\n", "lenght"),
        ("unknown-section", "[[axis]]\nkey = \"stream.transform.size.x\"\nvalues = [1]\n", "`stream.transform.size` is a value"),
        ("empty-axis", "[[axis]]\nkey = \"method.name\"\nvalues = []\n", "values is empty"),
        ("same-names", "[[axis]]\nkey = \"optim.lr\"\nvalues = [0.1, 0.2]\nlabels = [\"x\", \"x\"]\n", "two runs are named `lrx_seed7`"),
        (
            "same-axis",
            "[[axis]]\nkey = \"optim.lr\"\nvalues = [0.1]\n[[axis]]\nkey = \"optim.lr\"\nvalues = [0.2]\n",
            "a second axis on the same key",
        ),
        ("bad-seed", "[[axis]]\nkey = \"seeds\"\nvalues = [-1]\n", "non-negative integer"),
        ("bad-method", "[[axis]]\nkey = \"method.name\"\nvalues = [\"l2p\", \"l3p\"]\n", "run `l3p_seed7` (method.name = \"l3p\", seeds = 7)"),
        ("table-axis", "[table]\nrows = [\"method.name\"]\n", "`method.name` is neither `method`, `dataset`, `backbone` nor an axis"),
    ];
    for (name, body, want) in cases {
        let sweep = write_sweep(&dir, name, 1, body);
        let (ok, _, err) = output(promptcl(&dir).arg("sweep").arg(&sweep));
        assert!(!ok && err.contains(want), "{name}: want `{want}` in:\n{err}");
        assert!(err.contains(&format!("{name}.toml")), "{name}: the error names the sweep file:\n{err}");
        assert!(!dir.join("sweeps").join(name).exists(), "{name}: nothing may be written");
    }
    // No sbatch on the PATH: the runs are valid, but nothing is submitted.
    let sweep = write_sweep(&dir, "no-sbatch", 1, &format!("backend = \"slurm\"\n{TWO_BY_TWO}"));
    let (ok, _, err) = output(promptcl(&dir).arg("sweep").arg(&sweep).env("PATH", "/nonexistent"));
    assert!(!ok && err.contains("sbatch is not reachable"), "{err}");
    assert!(!dir.join("sweeps/no-sbatch/slurm/jobs.jsonl").exists());
}

/// `--dry-run` lists the grid (last axis fastest, stable names) and writes nothing.
#[test]
fn dry_run_lists_the_grid_and_writes_nothing() {
    let dir = workdir("dry");
    let sweep = write_sweep(&dir, "dry", 1, &format!("backend = \"slurm\"\n[slurm]\nthrottle = 2\npartition = \"gpu\"\n{TWO_BY_TWO}"));
    let (ok, out, err) = output(promptcl(&dir).arg("sweep").arg(&sweep).arg("--dry-run"));
    assert!(ok, "{err}");
    let names: Vec<&str> = out.lines().skip(1).take(4).map(|l| l.split_whitespace().nth(1).unwrap()).collect();
    assert_eq!(names, ["l2p_seed1", "l2p_seed2", "finetune-head_seed1", "finetune-head_seed2"], "{out}");
    assert!(out.contains("#SBATCH --array=0-3%2") && out.contains("#SBATCH --partition=gpu") && out.contains("#SBATCH --requeue"), "{out}");
    assert!(!dir.join("sweeps").exists());
}

/// Two CPU slots, four runs of unequal length; the queue is killed as soon
/// as the first run finishes. Its runs stop with it (they see their parent
/// gone); started again, the queue runs exactly the other three, and the
/// finished run is left untouched.
#[test]
fn a_killed_local_queue_restarts_only_the_unfinished_runs() {
    let dir = workdir("local");
    let body = "[local]\ngpus = []\ncpu_slots = 2\n[[axis]]\nkey = \"seeds\"\nvalues = [1, 2]\n[[axis]]\nkey = \"optim.epochs\"\nvalues = [1, 8]\n";
    let sweep = write_sweep(&dir, "local", 1, body);
    let root = dir.join("sweeps/local");
    let mut queue = promptcl(&dir).arg("sweep").arg(&sweep).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let first = root.join("runs/epochs1_seed1");
    wait_for("the first run to finish", Duration::from_secs(120), || state(&first).is_some_and(|s| s.finished));
    queue.kill().unwrap();
    queue.wait().unwrap();
    let before = starts(&root);
    let log_before = std::fs::read_to_string(first.join(results::LOG)).unwrap();
    // The orphaned runs stop by themselves and give their folders back.
    let runs: Vec<PathBuf> = ["epochs8_seed1", "epochs1_seed2", "epochs8_seed2"].iter().map(|n| root.join("runs").join(n)).collect();
    wait_for("the runs to stop", Duration::from_secs(60), || runs.iter().all(|r| results::lock_holder(r).is_none()));
    assert!(!runs[0].join(results::METRICS).is_file() || !state(&runs[0]).unwrap().finished, "the long run cannot have finished");

    let (ok, _, err) = output(promptcl(&dir).arg("sweep").arg(&sweep));
    assert!(ok, "{err}");
    let mut again: Vec<String> = starts(&root)[before.len()..].to_vec();
    again.sort();
    assert_eq!(again, ["epochs1_seed2", "epochs8_seed1", "epochs8_seed2"], "{err}");
    assert_eq!(std::fs::read_to_string(first.join(results::LOG)).unwrap(), log_before, "the finished run was not run again");
    let (ok, out, _) = output(promptcl(&dir).args(["sweep", "status"]).arg(&root));
    assert!(ok && out.contains("4 runs: 4 finished"), "{out}");
    // Interrupted or not, a run equals the same config run in one go.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(runs[0].join(results::CONFIG), fresh.join(results::CONFIG)).unwrap();
    let (ok, _, err) = output(promptcl(&dir).args(["run", "--dir"]).arg(&fresh));
    assert!(ok, "{err}");
    let m = |d: &Path| results::load_metrics(d).unwrap().matrix;
    assert_eq!(m(&runs[0]), m(&fresh));
}

/// SIGUSR1 (Slurm's time-limit warning) stops a run at its next step with
/// the requeue exit code; SIGTERM with 143. Both resume bit-identically.
#[test]
fn signals_stop_a_run_at_a_step_and_it_resumes_bit_identically() {
    let dir = workdir("signals");
    let cfg = common::fixture_config("sig", "l2p", "", 6, 8, 0.02, &dir.join("unused"), "checkpoint_every_epoch = true");
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    std::fs::write(reference.join(results::CONFIG), &cfg).unwrap();
    let (ok, _, err) = output(promptcl(&dir).args(["run", "--dir"]).arg(&reference));
    assert!(ok, "{err}");
    for (signal, code) in [("-USR1", 75), ("-TERM", 143)] {
        let run = dir.join(signal.trim_start_matches('-'));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join(results::CONFIG), &cfg).unwrap();
        let child = promptcl(&dir).args(["run", "--dir"]).arg(&run).stderr(Stdio::piped()).spawn().unwrap();
        // Inside task 2, after an epoch checkpoint.
        wait_for("an epoch of task 2", Duration::from_secs(60), || state(&run).is_some_and(|s| s.epoch_checkpoint.is_some_and(|m| m.task == 1)));
        assert!(Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap().success());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{signal}: {err}");
        assert!(err.contains("resume continues from the last checkpoint"), "{err}");
        assert!(!run.join(promptcl_harness::sweep::ERROR_FILE).exists(), "a stop is not a failure");
        let s = state(&run).unwrap();
        assert!(!s.finished && results::lock_holder(&run).is_none());
        let (ok, _, err) = output(promptcl(&dir).args(["run", "--dir"]).arg(&run));
        assert!(ok, "{err}");
        assert_eq!(results::load_metrics(&run).unwrap().matrix, results::load_metrics(&reference).unwrap().matrix, "{signal}");
    }
    // A finished run folder is left as it is.
    let before = std::fs::read_to_string(reference.join(results::LOG)).unwrap();
    let (ok, _, err) = output(promptcl(&dir).args(["run", "--dir"]).arg(&reference));
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(reference.join(results::LOG)).unwrap(), before);
}

fn matrices(root: &Path) -> BTreeMap<String, Metrics> {
    std::fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), results::load_metrics(&p).unwrap()))
        .collect()
}

/// A private single-node Slurm cluster (scripts/test_slurm.sh), stopped on drop.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    /// `Err`: why this machine cannot run one (the test then skips and says so).
    fn start(dir: &Path) -> Result<Self, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root (a private slurmctld/slurmd needs SlurmUser=root)".into());
        }
        let script = common::repo().join("scripts/test_slurm.sh");
        let out = Command::new(&script).arg("start").arg(dir).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let conf = text.lines().find_map(|l| l.strip_prefix("export SLURM_CONF=")).map(str::to_string);
        match (out.status.success(), conf) {
            (true, Some(conf)) => Ok(Self { dir: dir.to_path_buf(), conf }),
            _ => Err(format!("{} start failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim())),
        }
    }

    /// Slurm's time-limit warning (USR1 to the batch shell) for one array
    /// task. A loaded controller can hold a job in a transitional state for
    /// a while ("Job can not be altered now, try again later"), beyond
    /// scancel's own retries, so this tries again for up to two minutes.
    fn warn_batch(&self, task: &str) {
        let t0 = Instant::now();
        loop {
            let out = self.command("scancel").args(["--batch", "--signal=USR1", task]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() && err.trim().is_empty() {
                return;
            }
            let transient = err.contains("try again later");
            assert!(transient && t0.elapsed() < Duration::from_secs(120), "scancel --batch {task}: {err}\n{}", self.show_jobs());
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// What the controller says of every job, for a failure message.
    fn show_jobs(&self) -> String {
        let out = self.command("scontrol").args(["show", "job"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        out.unwrap_or_else(|e| format!("scontrol show job: {e}"))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(common::repo().join("scripts/test_slurm.sh")).arg("stop").arg(&self.dir).output();
    }
}

/// The full Slurm path on a real cluster: a 2 methods × 2 seeds sweep as
/// one array; one array task is requeued while it runs (`scontrol requeue`,
/// as preemption does), another gets the time-limit warning (USR1 to the
/// batch script, which requeues it on the run's exit code 75). Every run
/// finishes, each matrix equals the same run done by the local queue bit
/// for bit, and so does the paper table.
#[test]
fn a_slurm_sweep_survives_requeues_and_matches_local_runs() {
    let dir = workdir("slurm");
    if !Path::new("/usr/sbin/slurmctld").exists() && Command::new("slurmctld").arg("-V").output().is_err() {
        eprintln!("SKIPPED: Slurm is not installed here (`make test` installs it when run as root: scripts/ensure_slurm.sh)");
        return;
    }
    let cluster = match Cluster::start(&dir.join("cluster")) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: no test Slurm cluster: {why}");
            return;
        }
    };
    let body = format!("backend = \"slurm\"\n[slurm]\nthrottle = 2\nsignal_seconds = 30\n[local]\ngpus = []\ncpu_slots = 2\n{TWO_BY_TWO}");
    let sweep = write_sweep(&dir, "onslurm", 10, &body);
    let root = dir.join("sweeps/onslurm");
    let (ok, out, err) = output(promptcl(&dir).arg("sweep").arg(&sweep).env("SLURM_CONF", &cluster.conf));
    assert!(ok, "{err}");
    let job = out.split("job array ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| panic!("{out}")).to_string();

    // Both interruptions land inside a task after the first.
    let run = |name: &str| root.join("runs").join(name);
    let mid_run = |name: &str| state(&run(name)).is_some_and(|s| s.completed_tasks >= 1 && !s.finished);
    wait_for("l2p_seed1 to be inside its run", Duration::from_secs(180), || mid_run("l2p_seed1"));
    let requeue = cluster.command("scontrol").args(["requeue", &format!("{job}_0")]).output().unwrap();
    assert!(requeue.status.success(), "{}", String::from_utf8_lossy(&requeue.stderr));
    wait_for("l2p_seed2 to be inside its run", Duration::from_secs(180), || mid_run("l2p_seed2"));
    cluster.warn_batch(&format!("{job}_1"));

    let status = || output(promptcl(&dir).args(["sweep", "status"]).arg(&root).env("SLURM_CONF", &cluster.conf)).1;
    wait_for("every run to finish", Duration::from_secs(600), || status().contains("4 runs: 4 finished"));
    let log = |i: usize| std::fs::read_to_string(root.join(format!("logs/slurm-{job}_{i}.out"))).unwrap_or_default();
    assert!(restarts(&log(0)) >= 1, "array task 0 ran again after the requeue:\n{}", log(0));
    assert!(log(1).contains("requeueing") && restarts(&log(1)) >= 1, "array task 1 requeued itself:\n{}", log(1));
    let (ok, out, _) = output(promptcl(&dir).args(["sweep", "resubmit"]).arg(&root).env("SLURM_CONF", &cluster.conf));
    assert!(ok && out.contains("nothing to submit"), "{out}");

    // The same grid on the local queue.
    let local_sweep = write_sweep(&dir, "onlocal", 10, &body.replace("backend = \"slurm\"", "backend = \"local\""));
    let (ok, _, err) = output(promptcl(&dir).arg("sweep").arg(&local_sweep));
    assert!(ok, "{err}");
    let (a, b) = (matrices(&root), matrices(&dir.join("sweeps/onlocal")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, m) in &a {
        assert_eq!(m.matrix, b[name].matrix, "{name}: Slurm and local runs differ");
    }
    let table = |sweep: &str| {
        let out = dir.join(format!("compare-{sweep}"));
        let (ok, _, err) = output(promptcl(&dir).arg("compare").arg(dir.join("sweeps").join(sweep)).arg("--out").arg(&out));
        assert!(ok, "{err}");
        std::fs::read_to_string(out.join(format!("{sweep}-table.md"))).unwrap()
    };
    let (slurm_table, local_table) = (table("onslurm"), table("onlocal"));
    assert_eq!(slurm_table, local_table);
    assert!(slurm_table.contains("| method | cifar100 FAA |") && slurm_table.contains("over 2 seeds"), "{slurm_table}");
}

/// The shipped sweep files load, and so do all their base configs (their
/// data and weights live on users' machines, so runs are not validated here).
#[test]
fn shipped_sweep_files_and_their_bases_parse() {
    let dir = common::repo().join("benchmarks/sweeps");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = promptcl_harness::sweep::SweepFile::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let bases = match &file.base {
            promptcl_harness::sweep::Bases::One(p) => vec![p.clone()],
            promptcl_harness::sweep::Bases::Many(v) => v.clone(),
        };
        for b in bases {
            promptcl_harness::config::RunConfig::parse(&dir.join(&b)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        n += 1;
    }
    assert!(n >= 2);
}
