//! The continual-learning loop. It knows methods only through the trait:
//! it drives the stream, runs each task's stages in order (a fresh optimizer
//! per stage, over the parameters the stage names), seeds libtorch's
//! generator before every epoch and hook, evaluates every seen task after
//! each task, and writes results and checkpoints as it goes.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use promptcl_learner::metrics::AccuracyMatrix;
use promptcl_learner::optim::{self, Optimizer};
use promptcl_learner::{registry, Backbone, BatchSource, ContinualMethod, DataScope, Encoder, Inputs, MethodContext, Stage, StageData, TaskInfo};
use promptcl_model::{frozen_bert, frozen_vit};
use promptcl_stream::{ClassOrder, Dataset, Loader, LoaderOptions, Split, SplitMix64, TaskStream, TransformConfig};
use tch::{nn, Device, Kind, Tensor};

use crate::config::{DeviceChoice, EncoderConfig, NonFinite, RunConfig};
use crate::results::{self, EpochMark, Metrics, RunDir, State};

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Stop after this many tasks (tests use it to simulate an interruption).
    pub stop_after_tasks: Option<usize>,
}

pub fn device_for(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Cuda => bail!("run.device = cuda but no CUDA device is available (see `promptcl doctor`)"),
        DeviceChoice::Auto => Device::cuda_if_available(),
    })
}

/// Seeds libtorch's (global) generator from the run's seed and where the run
/// is, so whatever a method draws in an epoch or hook is the same in a
/// resumed run as in an uninterrupted one.
fn seed_torch(seed: u64, at: &[u64]) {
    tch::manual_seed((SplitMix64::derive(seed, at).next_u64() >> 1) as i64);
}

/// `seed_torch` places: hooks after the last stage index.
const END_STAGE: u64 = 1 << 32;
const END_TASK: u64 = 1 << 33;
const PREPARE_TASK: u64 = 1 << 34;

/// Everything a run needs that is built once: data, stream, backbone.
pub struct Prepared {
    pub dataset: Dataset,
    pub stream: TaskStream,
    pub backbone: Rc<Backbone>,
    pub device: Device,
}

/// Whether what the method will hold fits on the device (RanPAC's Gram
/// matrix): before the data is read when the dataset's class count is known.
fn check_method_memory(cfg: &RunConfig, classes: usize, device: Device) -> Result<()> {
    // A method built outside the registry (`run_with`) states no need.
    if !registry::names().contains(&cfg.method.name.as_str()) {
        return Ok(());
    }
    let feature_dim = cfg.model.encoder(cfg.stream.dataset.tokenizer().is_some())?.feature_dim();
    let sizes = promptcl_learner::Sizes { feature_dim, num_classes: classes };
    if let Some(need) = registry::memory_need(&cfg.method.name, &cfg.method.params, &sizes).context("method")? {
        need.check(device).context("method.params")?;
    }
    Ok(())
}

pub fn prepare(cfg: &RunConfig, seed: u64) -> Result<Prepared> {
    let device = device_for(cfg.run.device)?;
    let known = cfg.stream.dataset.known_num_classes();
    if let Some(classes) = known {
        check_method_memory(cfg, classes, device)?;
    }
    let dataset = cfg.stream.dataset.load_for_seed(seed).context("loading the dataset")?;
    if known.is_none() {
        check_method_memory(cfg, dataset.num_classes(), device)?;
    }
    let stream = match &dataset.plan {
        // The protocol fixes the tasks (relation extraction); the seed picks their order.
        Some(plan) => {
            if cfg.stream.order != ClassOrder::Natural {
                tracing::warn!("stream.order is ignored: {} fixes its task order per seed", dataset.name);
            }
            let tasks = plan.tasks(dataset.num_classes(), cfg.stream.num_tasks, seed).context("stream")?;
            TaskStream::from_tasks(dataset.num_classes(), tasks).context("stream")?
        }
        None => {
            // A `{ seed = .. }` order without its own seed follows the run's seed.
            let order = match &cfg.stream.order {
                ClassOrder::Seeded { seed: 0 } => ClassOrder::Seeded { seed },
                ClassOrder::NumpyPermutation { numpy_seed: 0 } => ClassOrder::NumpyPermutation {
                    numpy_seed: u32::try_from(seed)
                        .map_err(|_| anyhow::anyhow!("stream.order: numpy seeds are 32-bit, the run seed {seed} is not"))?,
                },
                o => o.clone(),
            };
            TaskStream::new(dataset.num_classes(), &order, &cfg.stream.split()).context("stream")?
        }
    };
    if cfg.model.weights.is_none() {
        tracing::warn!("model.weights not set: the backbone is randomly initialised (accuracy is meaningless)");
    }
    tch::manual_seed(seed as i64);
    let weights = cfg.model.weights.as_deref();
    let backbone = match cfg.model.encoder(dataset.is_text())? {
        EncoderConfig::Vit(vit_cfg) => {
            let (vars, vit) = frozen_vit(&vit_cfg, weights, device, cfg.model.precision)?;
            Backbone::new(Encoder::Vit(vit), vars)
        }
        EncoderConfig::Bert(mut bert_cfg) => {
            if let Some(rows) = dataset.token_vocab {
                // Room for the entity markers the tokenizer added.
                bert_cfg.vocab_size = bert_cfg.vocab_size.max(rows as i64);
            }
            if cfg.model.precision != promptcl_model::Precision::F32 {
                tracing::warn!("model.precision: the BERT encoder runs in fp32");
            }
            let (vars, bert) = frozen_bert(&bert_cfg, weights, device)?;
            Backbone::new(Encoder::Bert(bert), vars)
        }
    };
    Ok(Prepared { dataset, stream, backbone: Rc::new(backbone), device })
}

/// Runs (or resumes) one seed. Returns the run folder.
pub fn run(cfg: &RunConfig, seed: u64, resume: Option<&Path>, opts: RunOptions) -> Result<PathBuf> {
    let prep = prepare(cfg, seed)?;
    run_prepared(cfg, seed, &prep, resume, opts)
}

pub fn run_prepared(cfg: &RunConfig, seed: u64, prep: &Prepared, resume: Option<&Path>, opts: RunOptions) -> Result<PathBuf> {
    run_registered(cfg, seed, prep, resume.map_or(Target::New, Target::Resume), opts)
}

/// The config's method, built from the registry.
fn run_registered(cfg: &RunConfig, seed: u64, prep: &Prepared, target: Target, opts: RunOptions) -> Result<PathBuf> {
    run_built(cfg, seed, prep, target, opts, &|ctx| Ok(registry::build(&cfg.method.name, ctx, &cfg.method.params)?))
}

/// Runs the one-seed config in `folder` (a sweep's run folder): starts it
/// there, or resumes it when the folder holds a started run. A finished run
/// is left as it is. Running it again after any stop is always safe.
pub fn run_in(folder: &Path, opts: RunOptions) -> Result<PathBuf> {
    let cfg = RunConfig::load(&folder.join(results::CONFIG))?;
    let [seed] = cfg.seeds[..] else {
        bail!("{}: a run folder's config has one seed, this one has {:?}", folder.join(results::CONFIG).display(), cfg.seeds);
    };
    let state = folder.join(results::STATE);
    let target = if state.is_file() {
        let state: State = results::read_json(&state)?;
        if state.finished {
            return Ok(folder.to_path_buf());
        }
        Target::Resume(folder)
    } else {
        Target::At(folder)
    };
    run_registered(&cfg, seed, &prepare(&cfg, seed)?, target, opts)
}

/// Where a run's results go.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// A new, uniquely named folder under `run.results_dir`.
    New,
    /// An interrupted run folder.
    Resume(&'a Path),
    /// This folder, which holds no run yet.
    At(&'a Path),
}

/// Builds the method of a run.
pub type Builder<'a> = dyn Fn(&MethodContext) -> Result<Box<dyn ContinualMethod>> + 'a;

/// Runs (or resumes) one seed with a method built by `build` instead of the
/// registry: for methods written outside promptcl (see the README's "Adding a method").
pub fn run_with(cfg: &RunConfig, seed: u64, build: &Builder) -> Result<PathBuf> {
    run_built(cfg, seed, &prepare(cfg, seed)?, Target::New, RunOptions { quiet: true, ..Default::default() }, build)
}

fn run_built(cfg: &RunConfig, seed: u64, prep: &Prepared, target: Target, opts: RunOptions, build: &Builder) -> Result<PathBuf> {
    let Prepared { dataset, stream, backbone, device } = prep;
    let device = *device;
    let task_sizes: Vec<usize> = stream.tasks().iter().map(|t| t.classes.len()).collect();
    let ctx = MethodContext {
        backbone: backbone.clone(),
        num_classes: dataset.num_classes(),
        num_tasks: stream.num_tasks(),
        task_sizes,
        optim: cfg.optim.clone(),
        device,
        seed,
        groups: dataset.hierarchy.as_ref().map(|tree| {
            let mut groups = vec![0; dataset.num_classes()];
            for (class, &parent) in tree.parent.iter().enumerate() {
                groups[stream.incremental_label(class)] = parent;
            }
            groups
        }),
    };
    let mut method = build(&ctx)?;

    let (dir, mut state, mut matrix) = match target {
        Target::Resume(path) => {
            let dir = RunDir::open(path)?;
            let state: State = results::read_json(&dir.file(results::STATE))?;
            let metrics = results::load_metrics(&dir.path).ok();
            let matrix = metrics.map(|m| m.matrix).unwrap_or_default();
            if state.completed_tasks > 0 {
                let ckpt = dir.checkpoint(state.completed_tasks - 1);
                promptcl_model::weights::load_strict(method.vars(), &ckpt, &[], &|_, t, _| Ok(t))
                    .with_context(|| format!("loading checkpoint {}", ckpt.display()))?;
            }
            if matrix.num_tasks() != state.completed_tasks {
                bail!("{}: metrics.json has {} tasks but state.json says {}", dir.path.display(), matrix.num_tasks(), state.completed_tasks);
            }
            tracing::info!("resuming {} after task {}", dir.path.display(), state.completed_tasks);
            (dir, state, matrix)
        }
        Target::New | Target::At(_) => {
            let dir = match target {
                Target::At(path) => RunDir::create_at(path)?,
                _ => RunDir::create(&cfg.run.results_dir, &cfg.name, &cfg.method.name, seed)?,
            };
            results::atomic_write(&dir.file(results::CONFIG), toml::to_string_pretty(cfg)?.as_bytes())?;
            results::write_json(&dir.file(results::ENV), &crate::env::capture(device, seed))?;
            let state = State {
                run_id: dir.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                seed,
                completed_tasks: 0,
                num_tasks: stream.num_tasks(),
                finished: false,
                epoch_checkpoint: None,
            };
            results::write_json(&dir.file(results::STATE), &state)?;
            (dir, state, AccuracyMatrix::default())
        }
    };

    let quiet = opts.quiet;
    let tf = &cfg.stream.transform;
    let mut seen_end = stream.tasks()[..state.completed_tasks].iter().map(|t| t.classes.len()).sum::<usize>();
    for t in state.completed_tasks..stream.num_tasks() {
        if opts.stop_after_tasks.is_some_and(|n| t >= n) {
            break;
        }
        stop_if_asked(t)?;
        let started = Instant::now();
        let classes = seen_end..seen_end + stream.tasks()[t].classes.len();
        seen_end = classes.end;
        let info = TaskInfo::new(t, stream.num_tasks(), classes.clone(), 0..seen_end);
        method.begin_task(&info)?;
        // The task's training data under the test transform, for `prepare_task`, `end_stage` and `end_task`.
        let text = dataset.is_text();
        let mut source = Batches {
            split: &dataset.train,
            indices: stream.indices(&dataset.train, t),
            stream,
            transform: tf,
            batch_size: cfg.run.eval_batch_size,
            device,
            text,
        };
        // Before a resume restores the checkpoint, which then overwrites what this hook wrote.
        seed_torch(seed, &[t as u64, PREPARE_TASK]);
        method.prepare_task(&info, &mut source)?;
        let stages = method.stages(&info, &cfg.optim);
        let trainable: Vec<String> = optim::trainable(method.vars()).into_iter().map(|(name, _)| name).collect();
        Stage::validate_all(&cfg.method.name, &stages, &trainable)?;
        let indices = match method.data_scope() {
            DataScope::CurrentTask => stream.indices(&dataset.train, t),
            DataScope::AllSeen => stream.indices_until(&dataset.train, t),
        };
        // Inside an interrupted task: restore the last epoch's method and optimizer state.
        let resume_from = match &state.epoch_checkpoint {
            Some(mark) if mark.task == t => {
                let path = dir.file(results::EPOCH_CHECKPOINT);
                match stages.get(mark.stage) {
                    Some(s) if mark.stage_name.is_empty() || s.name == mark.stage_name => {}
                    _ => bail!(
                        "{}: the checkpoint is from stage {} (`{}`) of task {}, which the method does not have now",
                        path.display(),
                        mark.stage,
                        mark.stage_name,
                        t + 1
                    ),
                }
                let saved = promptcl_model::weights::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
                restore_vars(method.vars(), &saved, &path)?;
                tracing::info!("resuming task {} in stage `{}` after epoch {}", t + 1, stages[mark.stage].name, mark.epochs_done);
                Some((mark.clone(), saved))
            }
            _ => None,
        };
        for (s, stage) in stages.iter().enumerate() {
            let resumed = match &resume_from {
                Some((mark, _)) if s < mark.stage => continue,
                Some((mark, saved)) if s == mark.stage => Some((mark.epochs_done, saved)),
                _ => None,
            };
            let mut at = info.in_stage(stage);
            let mut job = TrainJob {
                cfg,
                stream,
                split: &dataset.train,
                indices: &indices,
                seed,
                device,
                text,
                dir: &dir,
                quiet,
                state: &mut state,
                last_stage: s + 1 == stages.len(),
            };
            job.run(&mut *method, &mut at, s, stage, resumed)?;
            // `end_stage` sees the stage finished, also when a resume found it so.
            at.epoch = stage.epochs;
            seed_torch(seed, &[t as u64, s as u64, END_STAGE]);
            method.end_stage(&at, &mut source)?;
        }
        seed_torch(seed, &[t as u64, END_TASK]);
        method.end_task(&info, &mut source)?;

        let (row, seen_acc, tid) = evaluate(&*method, stream, &dataset.test, t, seen_end, tf, cfg.run.eval_batch_size, device, text, quiet)?;
        matrix.push(row.clone(), seen_acc, tid.clone());

        // Checkpoint first, then the state that points at it: a crash between
        // the two leaves the previous, consistent state.
        results::atomic_write_with(&dir.checkpoint(t), |tmp| method.vars().save(tmp))?;
        let metrics = Metrics {
            name: cfg.name.clone(),
            method: cfg.method.name.clone(),
            dataset: dataset.name.clone(),
            seed,
            summary: matrix.summary(),
            matrix: matrix.clone(),
            tags: cfg.tags.clone(),
        };
        results::write_json(&dir.file(results::METRICS), &metrics)?;
        dir.write_matrix_csv(&matrix)?;
        state.completed_tasks = t + 1;
        state.finished = state.completed_tasks == stream.num_tasks();
        state.epoch_checkpoint = None;
        results::write_json(&dir.file(results::STATE), &state)?;
        std::fs::remove_file(dir.file(results::EPOCH_CHECKPOINT)).ok();
        if t > 0 && !cfg.run.keep_all_checkpoints {
            std::fs::remove_file(dir.checkpoint(t - 1)).ok();
        }
        dir.append_log(&serde_json::json!({
            "task": t, "eval": row, "seen_accuracy": seen_acc, "task_id_accuracy": tid,
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
        if !quiet {
            eprintln!("task {}/{}: accuracy on seen classes {seen_acc:.2}%  per task {:?}", t + 1, stream.num_tasks(), fmt_row(&row));
        }
        if injected_fault().is_some_and(|(kind, after)| kind == "kill-after-task" && after == t + 1) {
            // Dies as a SIGKILL from outside would, at a point a test can name
            // (later tasks of first-task methods are too quick to catch).
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
        }
    }
    Ok(dir.path.clone())
}

/// Stops the run (see [`crate::preempt`]) if a signal asked it to.
fn stop_if_asked(task: usize) -> Result<()> {
    match crate::preempt::requested() {
        Some(signal) => Err(crate::preempt::Preempted { signal, task: task + 1 }.into()),
        None => Ok(()),
    }
}

fn fmt_row(row: &[f64]) -> Vec<String> {
    row.iter().map(|v| format!("{v:.1}")).collect()
}

fn incremental(stream: &TaskStream, labels: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = labels.iter().map(|&l| stream.incremental_label(l) as i64).collect();
    Tensor::from_slice(&v).to_device(device)
}

fn progress(len: u64, quiet: bool, msg: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed_precise} {per_sec}").expect("template").progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Copies saved `method.<name>` tensors into the method's variables (strict).
fn restore_vars(vs: &nn::VarStore, saved: &std::collections::HashMap<String, Tensor>, path: &Path) -> Result<()> {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let src = saved.get(&format!("method.{name}")).with_context(|| format!("{}: no `method.{name}`", path.display()))?;
            anyhow::ensure!(src.size() == var.size(), "{}: `method.{name}` has shape {:?}, expected {:?}", path.display(), src.size(), var.size());
            var.copy_(&src.to_device(var.device()).to_kind(var.kind()));
        }
        Ok(())
    })
}

/// Training steps taken by this process, for fault injection only.
static STEPS_TAKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A fault to inject (tests only): `PROMPTCL_FAULT=nan@<step>`, `oom@<step>` or `kill-after-task@<tasks>`,
/// counting training steps from 0 across this process.
fn injected_fault() -> Option<(String, usize)> {
    let spec = std::env::var("PROMPTCL_FAULT").ok()?;
    let (kind, step) = spec.split_once('@')?;
    Some((kind.to_string(), step.parse().ok()?))
}

/// Explains a libtorch failure that surfaced as a panic.
fn explain_panic(payload: &(dyn std::any::Any + Send), batch: usize) -> anyhow::Error {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    if msg.to_lowercase().contains("out of memory") {
        anyhow::anyhow!(
            "out of GPU memory at batch size {batch}: lower optim.batch_size (or run.eval_batch_size), or use \
             model.precision = \"bf16\". Finished tasks and checkpoints are kept; resume with `promptcl run --resume`."
        )
    } else {
        anyhow::anyhow!("libtorch failed during training: {msg}")
    }
}

struct TrainJob<'a> {
    cfg: &'a RunConfig,
    stream: &'a TaskStream,
    split: &'a Split,
    indices: &'a [usize],
    seed: u64,
    device: Device,
    /// Whether the dataset is text (packed token batches) rather than images.
    text: bool,
    dir: &'a RunDir,
    quiet: bool,
    state: &'a mut State,
    /// No epoch checkpoint after the task's very last epoch: the task checkpoint follows.
    last_stage: bool,
}

impl TrainJob<'_> {
    /// Runs stage `s` of the task (from epoch `resumed.0` with the saved optimizer state, if given).
    fn run(
        &mut self,
        method: &mut dyn ContinualMethod,
        info: &mut TaskInfo,
        s: usize,
        stage: &Stage,
        resumed: Option<(usize, &std::collections::HashMap<String, Tensor>)>,
    ) -> Result<()> {
        let mut opt = stage.optimizer(method.vars());
        opt.project(method.update_projections(info))?;
        let start_epoch = match resumed {
            Some((done, saved)) => {
                opt.load_state(saved)?;
                done
            }
            None => 0,
        };
        let batch_size = self.cfg.optim.batch_size;
        let from_data = stage.data != StageData::Generated;
        let loader_opts =
            LoaderOptions { batch_size, shuffle: true, augment: stage.data == StageData::TrainTransform, drop_last: false, seed: self.seed };
        let mut per_epoch = if from_data { self.indices.len().div_ceil(batch_size) } else { 0 };
        let pb = progress((per_epoch * stage.epochs) as u64, self.quiet, format!("task {} {}", info.task + 1, stage.name));
        pb.set_position((per_epoch * start_epoch) as u64);
        let fault = injected_fault();
        let mut bad_in_a_row = 0;
        let t = info.task;
        for epoch in start_epoch..stage.epochs {
            info.epoch = epoch;
            let t0 = Instant::now();
            seed_torch(self.seed, &[t as u64, s as u64, epoch as u64]);
            method.begin_epoch(info)?;
            let batches: Box<dyn Iterator<Item = Result<(Inputs, Tensor)>>> = if from_data {
                // Distinct loader stream per (task, stage, epoch); stage 0 keeps the single-stage stream.
                let loader_epoch = ((t as u64) << 20) | ((s as u64) << 16) | epoch as u64;
                let (stream, text, device) = (self.stream, self.text, self.device);
                let loader = Loader::new(self.split, self.indices.to_vec(), loader_opts, loader_epoch, &self.cfg.stream.transform, device);
                Box::new(loader.map(move |b| b.map(|b| (wrap(b.inputs, text), incremental(stream, &b.labels, device))).map_err(Into::into)))
            } else {
                let generated = method.generate(info)?;
                if epoch == start_epoch {
                    per_epoch = generated.len();
                    pb.set_length((per_epoch * stage.epochs) as u64);
                    pb.set_position((per_epoch * start_epoch) as u64);
                }
                Box::new(generated.into_iter().map(|(x, y)| Ok((Inputs::Features(x), y))))
            };
            pb.set_message(format!("task {} {} epoch {}/{}", t + 1, stage.name, epoch + 1, stage.epochs));
            let (mut loss_sum, mut n, mut correct, mut scored, mut skipped) = (0.0, 0usize, 0i64, 0i64, 0usize);
            for (i, batch) in batches.enumerate() {
                // Abandons the epoch: the last checkpoint is where a resume starts.
                stop_if_asked(t)?;
                let (inputs, labels) = batch?;
                let size = inputs.len() as usize;
                opt.set_lr(stage.lr_at(epoch, i, per_epoch));
                let global = STEPS_TAKEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let run_step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Option<(f64, Option<Tensor>)>> {
                    if fault.as_ref().is_some_and(|(k, s)| k == "oom" && *s == global) {
                        panic!("CUDA out of memory. Tried to allocate 2.00 GiB (injected by PROMPTCL_FAULT)");
                    }
                    let out = method.train_step(&inputs, &labels, info)?;
                    let mut value = out.loss.double_value(&[]);
                    if fault.as_ref().is_some_and(|(k, s)| k == "nan" && *s == global) {
                        value = f64::NAN;
                    }
                    if !value.is_finite() {
                        return Ok(None);
                    }
                    opt.zero_grad();
                    out.loss.backward();
                    opt.clip_and_step();
                    Ok(Some((value, out.logits)))
                }));
                let outcome = match run_step {
                    Ok(r) => r?,
                    Err(payload) => return Err(explain_panic(&*payload, size)),
                };
                match outcome {
                    Some((value, logits)) => {
                        bad_in_a_row = 0;
                        loss_sum += value * size as f64;
                        n += size;
                        if let Some(logits) = &logits {
                            correct += logits.argmax(1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
                            scored += size as i64;
                        }
                    }
                    None => {
                        bad_in_a_row += 1;
                        let keep_going = self.cfg.run.on_nonfinite_loss == NonFinite::SkipBatch && bad_in_a_row <= 10;
                        if !keep_going {
                            bail!(
                                "task {} stage `{}` epoch {} step {i}: the loss is not finite; stopping (results and checkpoints of \
                                 finished tasks are kept). Lower optim.lr, check the data, or set run.on_nonfinite_loss = \"skip-batch\".",
                                t + 1,
                                stage.name,
                                epoch + 1
                            );
                        }
                        tracing::warn!("task {} stage `{}` epoch {} step {i}: non-finite loss, batch skipped", t + 1, stage.name, epoch + 1);
                        skipped += 1;
                    }
                }
                pb.inc(1);
            }
            method.end_epoch(info)?;
            self.dir.append_log(&serde_json::json!({
                "task": t, "stage": stage.name, "epoch": epoch, "loss": loss_sum / n.max(1) as f64,
                "train_accuracy": (scored > 0).then(|| 100.0 * correct as f64 / scored as f64),
                "skipped_batches": skipped,
                "lr": stage.lr_at(epoch, per_epoch.saturating_sub(1), per_epoch), "seconds": t0.elapsed().as_secs_f64(),
            }))?;
            let task_done = self.last_stage && epoch + 1 == stage.epochs;
            if self.cfg.run.checkpoint_every_epoch && !task_done {
                self.checkpoint_epoch(method, &opt, EpochMark { task: t, stage: s, stage_name: stage.name.into(), epochs_done: epoch + 1 })?;
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// Method variables and optimizer state, then the state file that points at them.
    fn checkpoint_epoch(&mut self, method: &dyn ContinualMethod, opt: &Optimizer, mark: EpochMark) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = method.vars().variables().into_iter().map(|(k, v)| (format!("method.{k}"), v)).collect();
        tensors.extend(opt.state());
        results::atomic_write_with(&self.dir.file(results::EPOCH_CHECKPOINT), |tmp| Tensor::write_safetensors(&tensors, tmp))?;
        self.state.epoch_checkpoint = Some(mark);
        results::write_json(&self.dir.file(results::STATE), &*self.state)
    }
}

/// A loader batch as the method sees it.
fn wrap(inputs: Tensor, text: bool) -> Inputs {
    if text {
        Inputs::Text(inputs)
    } else {
        Inputs::Images(inputs)
    }
}

/// Accuracy (%) on each seen task's test data, on all seen test data, and the
/// task-identity accuracy where the method routes by task.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    method: &dyn ContinualMethod,
    stream: &TaskStream,
    test: &Split,
    after_task: usize,
    seen: usize,
    tf: &TransformConfig,
    batch_size: usize,
    device: Device,
    text: bool,
    quiet: bool,
) -> Result<(Vec<f64>, f64, Option<Vec<f64>>)> {
    let opts = LoaderOptions { batch_size, shuffle: false, augment: false, drop_last: false, seed: 0 };
    let (mut row, mut tid_row) = (Vec::new(), Vec::new());
    let (mut correct_all, mut total_all) = (0i64, 0i64);
    let mut routes = false;
    let pb = progress((after_task + 1) as u64, quiet, "evaluating".into());
    for j in 0..=after_task {
        let (mut correct, mut tid_correct, mut total) = (0i64, 0i64, 0i64);
        for batch in Loader::new(test, stream.indices(test, j), opts, 0, tf, device) {
            let batch = batch?;
            let labels = incremental(stream, &batch.labels, device);
            let pred = tch::no_grad(|| method.predict(&wrap(batch.inputs, text), seen))?;
            correct += pred.logits.argmax(1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
            if let Some(ids) = &pred.task_ids {
                routes = true;
                tid_correct += ids.eq(j as i64).sum(Kind::Int64).int64_value(&[]);
            }
            total += batch.labels.len() as i64;
        }
        let pct = |c: i64| if total == 0 { 0.0 } else { 100.0 * c as f64 / total as f64 };
        row.push(pct(correct));
        tid_row.push(pct(tid_correct));
        correct_all += correct;
        total_all += total;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seen_acc = if total_all == 0 { 0.0 } else { 100.0 * correct_all as f64 / total_all as f64 };
    Ok((row, seen_acc, routes.then_some(tid_row)))
}

/// The current task's training data under the test transform, for `end_task`.
struct Batches<'a> {
    split: &'a Split,
    indices: Vec<usize>,
    stream: &'a TaskStream,
    transform: &'a TransformConfig,
    batch_size: usize,
    device: Device,
    text: bool,
}

impl BatchSource for Batches<'_> {
    fn for_each(&mut self, f: &mut dyn FnMut(&Inputs, &Tensor) -> promptcl_learner::Result<()>) -> promptcl_learner::Result<()> {
        let opts = LoaderOptions { batch_size: self.batch_size, shuffle: false, augment: false, drop_last: false, seed: 0 };
        for batch in Loader::new(self.split, self.indices.clone(), opts, 0, self.transform, self.device) {
            let batch = batch.map_err(|e| promptcl_learner::LearnerError::Invalid(e.to_string()))?;
            f(&wrap(batch.inputs, self.text), &incremental(self.stream, &batch.labels, self.device))?;
        }
        Ok(())
    }
}
