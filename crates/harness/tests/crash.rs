//! Faults against the real binary: SIGKILL at task and epoch boundaries,
//! injected NaN and out-of-memory, concurrent runs. Nothing already written
//! may be lost, and a resumed run must equal an uninterrupted one bit for bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use promptcl_harness::results::{self, Metrics, State};

fn workdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("promptcl-crash-{}-{tag}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A DualPrompt run on the CIFAR fixture: 5 tasks, `epochs` epochs each.
fn write_config(dir: &Path, epochs: usize, extra_run: &str) -> PathBuf {
    write_method_config(dir, "dualprompt", "g_layers = [0], e_layers = [1, 2], e_length = 3", epochs, extra_run)
}

fn write_method_config(dir: &Path, method: &str, params: &str, epochs: usize, extra_run: &str) -> PathBuf {
    let text = common::fixture_config("crash", method, params, epochs, 8, 0.02, &dir.join("results"), extra_run);
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn promptcl(args: &[&str], fault: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_promptcl"));
    c.arg("--quiet").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match fault {
        Some(f) => c.env("PROMPTCL_FAULT", f),
        None => c.env_remove("PROMPTCL_FAULT"),
    };
    c
}

fn run_dir(results: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(results).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs to completion in a fresh folder and returns the final metrics.
fn reference(tag: &str, epochs: usize, extra: &str) -> Metrics {
    let dir = workdir(tag);
    reference_at(&dir, write_config(&dir, epochs, extra))
}

fn reference_at(dir: &Path, cfg: PathBuf) -> Metrics {
    let (ok, err) = finish(promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap());
    assert!(ok, "{err}");
    results::load_metrics(&run_dir(&dir.join("results"))).unwrap()
}

/// Polls until `ready(run folder)` holds, then SIGKILLs the child (which must still be running).
fn kill_when(child: &mut Child, results: &Path, ready: impl Fn(&Path) -> bool) -> PathBuf {
    let start = Instant::now();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the kill point");
        assert!(start.elapsed() < Duration::from_secs(120), "kill point never reached");
        if let Some(dir) = std::fs::read_dir(results).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path()) {
            if ready(&dir) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                return dir;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn state(dir: &Path) -> Option<State> {
    results::read_json(&dir.join(results::STATE)).ok()
}

fn resume(dir: &Path) -> Metrics {
    let (ok, err) = finish(promptcl(&["run", "--resume", dir.to_str().unwrap()], None).spawn().unwrap());
    assert!(ok, "{err}");
    results::load_metrics(dir).unwrap()
}

#[test]
fn sigkill_between_tasks_then_resume_equals_uninterrupted() {
    let want = reference("ref-task", 2, "");
    assert_eq!(want.matrix, reference("ref-task-again", 2, "").matrix, "same config and seed: bit-identical on CPU");
    let dir = workdir("kill-task");
    let cfg = write_config(&dir, 2, "");
    let mut child = promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap();
    let run = kill_when(&mut child, &dir.join("results"), |d| state(d).is_some_and(|s| s.completed_tasks >= 2));
    // What was written is intact and consistent.
    let s = state(&run).unwrap();
    let m = results::load_metrics(&run).unwrap();
    assert_eq!(m.matrix.num_tasks(), s.completed_tasks);
    assert!(run.join(format!("checkpoints/task-{:03}.safetensors", s.completed_tasks - 1)).is_file());
    assert!(s.completed_tasks < 5);
    assert_eq!(resume(&run).matrix, want.matrix);
}

/// A run of `method` with `params` (`epochs` epochs, a checkpoint every
/// epoch): once to completion for the reference metrics, then again,
/// SIGKILLed once task 2's stage `stage` has checkpointed an epoch in
/// `epochs_done`; returns the reference and the killed run's folder.
fn kill_inside_stage(tag: &str, method: &str, params: &str, epochs: usize, stage: &str, epochs_done: std::ops::Range<usize>) -> (Metrics, PathBuf) {
    let extra = "checkpoint_every_epoch = true";
    let dir = workdir(&format!("ref-{tag}"));
    let want = reference_at(&dir, write_method_config(&dir, method, params, epochs, extra));
    let dir = workdir(&format!("kill-{tag}"));
    let cfg = write_method_config(&dir, method, params, epochs, extra);
    let mut child = promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap();
    let run = kill_when(&mut child, &dir.join("results"), |d| {
        state(d).is_some_and(|s| s.epoch_checkpoint.is_some_and(|m| m.task == 1 && m.stage_name == stage && epochs_done.contains(&m.epochs_done)))
    });
    (want, run)
}

/// The methods whose state is all outside training (APER's and RanPAC's
/// first-task modules, prototypes, Gram matrix; FeCAM's covariances, and
/// PILOT's FeCAM with its first-task adapters) and
/// EASE's and VPT-NSP's per-task subspaces and statistics: SIGKILLed right
/// after task 2 is written (their later tasks are too quick to catch from
/// outside), each resumes to the uninterrupted run's matrix.
#[test]
fn sigkill_after_a_task_resumes_every_statistics_method_bit_identically() {
    for (method, params) in [
        ("aper", "ffn_num = 8"),
        ("ranpac", "ffn_num = 8, projection = 64"),
        ("fecam", ""),
        ("fecam-pilot", "ffn_num = 8"),
        ("ease", "ffn_num = 8"),
        ("vpt-nsp", "length = 3"),
    ] {
        let dir = workdir(&format!("ref-after-{method}"));
        let want = reference_at(&dir, write_method_config(&dir, method, params, 1, ""));
        let dir = workdir(&format!("kill-after-{method}"));
        let cfg = write_method_config(&dir, method, params, 1, "");
        let out = promptcl(&["run", cfg.to_str().unwrap()], Some("kill-after-task@2")).output().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{method}: killed");
        let run = run_dir(&dir.join("results"));
        assert_eq!(state(&run).unwrap().completed_tasks, 2, "{method}");
        assert_eq!(resume(&run).matrix, want.matrix, "{method}: resumed after a SIGKILL");
    }
}

/// A kill inside task 2's training: EASE's second subspace half-trained,
/// VPT-NSP's prompts moving under the projections built after task 1 (the
/// resumed optimizer must project again).
#[test]
fn sigkill_inside_ease_and_vpt_nsp_training_resumes_bit_identically() {
    for (method, params) in [("ease", "ffn_num = 8"), ("vpt-nsp", "length = 3")] {
        let (want, run) = kill_inside_stage(method, method, params, 10, "train", 2..8);
        let mark = state(&run).unwrap().epoch_checkpoint.unwrap();
        assert_eq!((mark.task, mark.stage_name.as_str()), (1, "train"), "{method}: killed inside task 2");
        assert_eq!(resume(&run).matrix, want.matrix, "{method}");
    }
}

/// HiDe-Prompt's `align` stage trains on pseudo-features it samples from
/// libtorch's generator: a kill inside it resumes bit-identically, because the
/// harness seeds the generator per (task, stage, epoch) and the statistics and
/// optimizer state are in the epoch checkpoint. The prompts are generated
/// (`reparam-mlp`, momentum-mixed and sealed at the end of the prompt stage):
/// the sealed prefixes and their flags come back too, so the resumed run
/// reads the mix rather than regenerating.
#[test]
fn sigkill_inside_a_generated_alignment_stage_resumes_bit_identically() {
    let params = "layers = [0, 1], length = 2, tii_epochs = 1, tii_align_epochs = 2, align_epochs = 150, statistics = \"variance\", \
                  prompt = { param = \"reparam-mlp\" }";
    let (want, run) = kill_inside_stage("align", "hide-prompt", params, 1, "align", 5..140);
    let mark = state(&run).unwrap().epoch_checkpoint.unwrap();
    assert_eq!((mark.task, mark.stage_name.as_str()), (1, "align"), "killed inside task 2's alignment stage");
    let log = std::fs::read_to_string(run.join(results::LOG)).unwrap();
    assert!(log.contains("\"stage\":\"tii-align\"") && log.contains("\"stage\":\"align\""), "log.jsonl names the stages");
    assert_eq!(resume(&run).matrix, want.matrix);
}

/// HierC's regulariser writes its frozen-model statistics and W in
/// `prepare_task`, before the stages: a kill inside task 2's prompt stage
/// (where Γ and the pseudo-features act) resumes bit-identically, the hook
/// rerunning from its seed before the checkpoint is restored.
#[test]
fn sigkill_inside_a_hierc_task_resumes_bit_identically() {
    let params = "layers = [0, 1], length = 2, tii_epochs = 1, tii_align_epochs = 1, align_epochs = 1, statistics = \"variance\", \
                  regularizers = [{ kind = \"hierarchical-ot\", statistics = \"variance\", ot_samples = 4, old_samples = 8, mahalanobis_eval = true }]";
    let (want, run) = kill_inside_stage("hierc", "hide-prompt", params, 10, "prompt", 2..8);
    let mark = state(&run).unwrap().epoch_checkpoint.unwrap();
    assert_eq!((mark.task, mark.stage_name.as_str()), (1, "prompt"), "killed inside task 2's prompt stage");
    assert_eq!(resume(&run).matrix, want.matrix);
}

/// SLCA keeps state beside its heads (the class statistics, the heads'
/// pre-alignment backup that the next task recalls): a kill inside task 2's
/// alignment stage resumes bit-identically.
#[test]
fn sigkill_inside_slca_alignment_resumes_bit_identically() {
    let (want, run) = kill_inside_stage("slca", "slca", "ca_epochs = 40, samples_per_class = 8", 1, "align", 3..36);
    let mark = state(&run).unwrap().epoch_checkpoint.unwrap();
    assert_eq!((mark.task, mark.stage_name.as_str()), (1, "align"), "killed inside task 2's alignment stage");
    assert_eq!(resume(&run).matrix, want.matrix);
}

#[test]
fn sigkill_inside_a_task_resumes_from_the_last_epoch() {
    let extra = "checkpoint_every_epoch = true";
    let want = reference("ref-epoch", 4, extra);
    let dir = workdir("kill-epoch");
    let cfg = write_config(&dir, 4, extra);
    let mut child = promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap();
    let run = kill_when(&mut child, &dir.join("results"), |d| {
        state(d).is_some_and(|s| s.epoch_checkpoint.is_some_and(|m| m.task == 1 && m.epochs_done >= 2))
    });
    let s = state(&run).unwrap();
    assert_eq!(s.completed_tasks, 1, "killed inside task 2");
    assert!(run.join(results::EPOCH_CHECKPOINT).is_file());
    assert_eq!(resume(&run).matrix, want.matrix);
}

#[test]
fn a_nan_loss_stops_clearly_and_keeps_everything_finished() {
    let want = reference("ref-nan", 1, "");
    let dir = workdir("nan");
    let cfg = write_config(&dir, 1, "");
    // 40 samples per task in batches of 8: step 7 is in task 2.
    let (ok, err) = finish(promptcl(&["run", cfg.to_str().unwrap()], Some("nan@7")).spawn().unwrap());
    assert!(!ok);
    assert!(err.contains("not finite") && err.contains("task 2"), "{err}");
    let run = run_dir(&dir.join("results"));
    assert_eq!(state(&run).unwrap().completed_tasks, 1);
    assert!(run.join("checkpoints/task-000.safetensors").is_file());
    assert_eq!(results::load_metrics(&run).unwrap().matrix.num_tasks(), 1);
    // Nothing was updated by the bad batch: resuming reproduces the clean run.
    assert_eq!(resume(&run).matrix, want.matrix);
}

#[test]
fn skip_batch_policy_carries_on_and_logs_it() {
    let dir = workdir("skip");
    let cfg = write_config(&dir, 1, "on_nonfinite_loss = \"skip-batch\"");
    let (ok, err) = finish(promptcl(&["run", cfg.to_str().unwrap()], Some("nan@3")).spawn().unwrap());
    assert!(ok, "{err}");
    let run = run_dir(&dir.join("results"));
    assert!(state(&run).unwrap().finished);
    let log = std::fs::read_to_string(run.join(results::LOG)).unwrap();
    assert!(log.contains("\"skipped_batches\":1"), "{log}");
}

#[test]
fn out_of_memory_is_explained_without_a_stack_trace() {
    let dir = workdir("oom");
    let cfg = write_config(&dir, 1, "");
    let (ok, err) = finish(promptcl(&["run", cfg.to_str().unwrap()], Some("oom@6")).spawn().unwrap());
    assert!(!ok);
    assert!(err.contains("out of GPU memory at batch size 8") && err.contains("optim.batch_size"), "{err}");
    assert!(!err.contains("panicked at"), "{err}");
    let run = run_dir(&dir.join("results"));
    assert_eq!(state(&run).unwrap().completed_tasks, 1, "task 1 is kept");
}

#[test]
fn concurrent_runs_never_share_a_folder_and_a_busy_run_cannot_be_resumed() {
    let dir = workdir("concurrent");
    let cfg = write_config(&dir, 1, "");
    let a = promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap();
    let b = promptcl(&["run", cfg.to_str().unwrap()], None).spawn().unwrap();
    let ((ok_a, ea), (ok_b, eb)) = (finish(a), finish(b));
    assert!(ok_a && ok_b, "{ea}\n{eb}");
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("results")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(results::load_metrics(&runs[0]).unwrap().matrix, results::load_metrics(&runs[1]).unwrap().matrix);
    // A live process holds the lock: resuming is refused.
    std::fs::write(runs[0].join("run.lock"), format!("{}\n", std::process::id())).unwrap();
    let (ok, err) = finish(promptcl(&["run", "--resume", runs[0].to_str().unwrap()], None).spawn().unwrap());
    assert!(!ok && err.contains("in use by process"), "{err}");
}

#[test]
fn config_mistakes_are_named_before_any_work() {
    let dir = workdir("config");
    let cfg = write_config(&dir, 1, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cases = [
        (text.replace("num_tasks = 5", "num_tasks = 5\nnum_taks = 3"), "did you mean `num_tasks`?"),
        (text.replace("num_tasks = 5", "num_tasks = 3"), "remainder"),
        (text.replace("e_layers = [1, 2]", "e_layers = [1, 7]"), "method.params.e_layers: layer 7 does not exist"),
        (text.replace("epochs = 1", "epochs = \"one\""), "invalid type"),
        (text.replace("e_length = 3", "e_lenght = 3"), "did you mean `e_length`?"),
        (text.replace("crates/stream/tests/fixtures", "no/such/data"), "stream.dataset.root"),
    ];
    for (i, (bad, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, bad).unwrap();
        let (ok, err) = finish(promptcl(&["run", path.to_str().unwrap()], None).spawn().unwrap());
        assert!(!ok, "case {i} was accepted");
        assert!(err.contains(want), "case {i}: expected `{want}` in:\n{err}");
        assert!(
            err.contains(&format!("bad{i}.toml")) || *want == "method.params.e_layers: layer 7 does not exist" || err.contains("stream"),
            "case {i} does not name the file:\n{err}"
        );
        assert!(!dir.join("results").exists(), "case {i} started work");
    }
}
