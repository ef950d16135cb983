//! `promptcl sweep`: a grid of runs from a base config and axes, run on a
//! local queue or as one Slurm job array, preemption-safe, aggregated into
//! a paper's table.
//!
//! A sweep lives in `<out>/<name>/`: `sweep.json` (the manifest: every run,
//! its index, seed and folder, in a fixed order), `runs/<run>/` (one run
//! folder each, its config written before anything runs), `logs/`, and the
//! backend's bookkeeping (`queue.jsonl`, `slurm/`). Every backend runs
//! `promptcl run --dir <run folder>`, which starts, resumes or skips the run
//! as its folder says, so running a sweep again after any stop only does
//! what is left.

pub mod local;
pub mod slurm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::results::{self, State};

pub const MANIFEST: &str = "sweep.json";
/// A run's error, written by `promptcl run --dir` when the run fails.
pub const ERROR_FILE: &str = "error.txt";

/// The sweep file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Names the sweep's folder; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The base config, relative to the sweep file; or several (one per
    /// method and benchmark, as in `benchmarks/configs/`), which make a first
    /// axis `config` named by their file stems.
    pub base: Bases,
    /// Where the sweep's folder goes (relative to the working directory, as `run.results_dir`).
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// The axes, expanded as a grid (the last varies fastest). Without a
    /// `seeds` axis every seed of the base config is one run.
    #[serde(default, rename = "axis")]
    pub axes: Vec<Axis>,
    /// Runs checkpoint every epoch, so a preempted run redoes one epoch at most.
    #[serde(default = "yes")]
    pub checkpoint_every_epoch: bool,
    #[serde(default)]
    pub backend: BackendKind,
    #[serde(default)]
    pub local: local::LocalSection,
    #[serde(default)]
    pub slurm: slurm::SlurmSection,
    #[serde(default)]
    pub table: TableSpec,
}

fn default_out() -> PathBuf {
    "results/sweeps".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bases {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Bases {
    fn paths(&self) -> &[PathBuf] {
        match self {
            Self::One(p) => std::slice::from_ref(p),
            Self::Many(v) => v,
        }
    }
}

/// The axis that several base configs make.
pub const CONFIG_AXIS: &str = "config";
/// The tag every run gets: its weights file's stem, or its preset.
pub const BACKBONE: &str = "backbone";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A queue over this machine's GPUs (or CPU slots).
    #[default]
    Local,
    /// One Slurm job array.
    Slurm,
}

/// One axis: a config key (dotted, e.g. `method.params.length`) and its values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub key: String,
    pub values: Vec<toml::Value>,
    /// The names the values take in run names and tables (default: derived from the values).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Prefixes each value in run names (default: the key's last part; none for `method.name`).
    #[serde(default)]
    pub label: Option<String>,
}

/// Which axes become rows and which columns of the paper table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableSpec {
    /// Axis keys whose values name the rows (default: the axes outside `stream.` and `model.`).
    pub rows: Option<Vec<String>>,
    /// Axis keys whose values name the column groups (default: the `stream.` and `model.` axes: benchmark, backbone).
    pub columns: Option<Vec<String>>,
    /// Metrics per column group, from `faa`, `caa`, `ffm`, `bwt`, `final`, `average`.
    pub metrics: Vec<String>,
}

impl Default for TableSpec {
    fn default() -> Self {
        Self { rows: None, columns: None, metrics: vec!["faa".into(), "caa".into(), "ffm".into()] }
    }
}

pub const TABLE_METRICS: [&str; 6] = ["faa", "caa", "ffm", "bwt", "final", "average"];

/// `sweep.json`: the expanded runs, in submission order (the index is the
/// Slurm array index and never changes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub sweep_file: PathBuf,
    pub backend: BackendKind,
    pub table: TableSpec,
    /// The axis keys, in order (`config` first when there are several bases; the seed axis excluded).
    pub axes: Vec<String>,
    pub runs: Vec<RunEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunEntry {
    pub index: usize,
    /// The run's folder name: the axis values and the seed.
    pub name: String,
    /// The name without the seed: the runs of one group differ only in seed.
    pub group: String,
    pub seed: u64,
    pub dir: PathBuf,
    pub tags: BTreeMap<String, String>,
}

/// A sweep expanded and validated: the manifest and each run's config.
pub struct Expanded {
    pub root: PathBuf,
    pub manifest: Manifest,
    pub configs: Vec<RunConfig>,
    pub file: SweepFile,
}

impl SweepFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading sweep file {}", path.display()))?;
        let file: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid sweep file: {}", path.display(), promptcl_learner::did_you_mean(&e.to_string())))?;
        file.validate().with_context(|| format!("{}: invalid sweep file", path.display()))?;
        Ok(file)
    }

    fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.name != sanitize(&self.name) {
            bail!("name: `{}` must be non-empty and use only letters, digits, `-`, `_`, `.`, `+`", self.name);
        }
        if self.base.paths().is_empty() {
            bail!("base: give at least one config");
        }
        let mut keys = BTreeSet::new();
        if self.base.paths().len() > 1 {
            keys.insert(CONFIG_AXIS);
        }
        for (i, a) in self.axes.iter().enumerate() {
            let at = format!("axis {} (`{}`)", i + 1, a.key);
            if a.key.is_empty() || a.key.split('.').any(str::is_empty) {
                bail!("{at}: key must be a dotted config key such as `method.params.length`");
            }
            if !keys.insert(a.key.as_str()) {
                bail!("{at}: a second axis on the same key (several `base` configs make the axis `{CONFIG_AXIS}`)");
            }
            if a.values.is_empty() {
                bail!("{at}: values is empty (an axis needs at least one value)");
            }
            if let Some(l) = &a.labels {
                if l.len() != a.values.len() {
                    bail!("{at}: {} labels for {} values", l.len(), a.values.len());
                }
            }
            if a.key == "seeds" {
                if let Some(bad) = a.values.iter().find(|v| v.as_integer().is_none_or(|s| s < 0)) {
                    bail!("{at}: a seed is a non-negative integer, not {bad}");
                }
            }
        }
        for (what, list) in [("table.rows", &self.table.rows), ("table.columns", &self.table.columns)] {
            for k in list.iter().flatten() {
                if !(keys.contains(k.as_str()) || ["method", "dataset", BACKBONE].contains(&k.as_str())) || k == "seeds" {
                    let axes: Vec<&&str> = keys.iter().filter(|k| **k != "seeds").collect();
                    bail!("{what}: `{k}` is neither `method`, `dataset`, `{BACKBONE}` nor an axis of this sweep (axes: {axes:?})");
                }
            }
        }
        if let Some(m) = self.table.metrics.iter().find(|m| !TABLE_METRICS.contains(&m.as_str())) {
            bail!("table.metrics: `{m}` is not one of {TABLE_METRICS:?}");
        }
        self.local.validate().context("local")?;
        self.slurm.validate().context("slurm")?;
        Ok(())
    }
}

/// Letters, digits and `-_.+` are kept; anything else becomes `-`.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.+".contains(c) { c } else { '-' }).collect()
}

/// How a value reads in a run name: a path by its file stem, a list joined by
/// `+`, a table by its `name`.
fn value_name(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) if s.contains('/') || s.ends_with(".safetensors") || s.ends_with(".toml") || s.ends_with(".json") => {
            Path::new(s).file_stem()?.to_string_lossy().into_owned()
        }
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(a) => a.iter().map(value_name).collect::<Option<Vec<_>>>()?.join("+"),
        toml::Value::Table(t) => t.get("name").and_then(|n| n.as_str())?.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
    })
}

impl Axis {
    fn names(&self) -> Result<Vec<String>> {
        if let Some(l) = &self.labels {
            return Ok(l.clone());
        }
        self.values.iter().map(|v| value_name(v).with_context(|| format!("axis `{}`: give `labels` to name the value {v}", self.key))).collect()
    }

    fn prefix(&self) -> String {
        match (&self.label, self.key.as_str()) {
            (Some(l), _) => l.clone(),
            (None, "method.name" | "method") => String::new(),
            (None, k) => k.rsplit('.').next().unwrap_or(k).to_string(),
        }
    }
}

/// Sets a dotted key in a TOML table, creating the tables on the way.
fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("validated: non-empty key");
    let mut t = table;
    for (i, p) in path.iter().enumerate() {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().with_context(|| format!("`{}` is a value in the base config, not a section", parts[..=i].join(".")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

fn has_key(table: &toml::Table, key: &str) -> bool {
    let mut t = table;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        match t.get(*p) {
            Some(_) if i + 1 == parts.len() => return true,
            Some(toml::Value::Table(inner)) => t = inner,
            _ => return false,
        }
    }
    false
}

/// Expands and validates every run of `path` before anything is written or submitted.
pub fn expand(path: &Path) -> Result<Expanded> {
    let file = SweepFile::load(path)?;
    let here = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    // Paths in a base resolve against its folder; those the axes set, against the sweep file's.
    let mut bases = Vec::new();
    for b in file.base.paths() {
        let cfg = RunConfig::parse(&here.join(b)).with_context(|| format!("{}: base", path.display()))?;
        let table = toml::Table::try_from(&cfg).context("serialising the base config")?;
        bases.push((cfg, table));
    }
    let cwd = std::env::current_dir()?;
    let root = cwd.join(&file.out).join(&file.name);

    // The grid: one choice per axis, the last axis fastest.
    let mut axes: Vec<&Axis> = Vec::new();
    let config_axis;
    if bases.len() > 1 {
        let stems: Vec<String> =
            file.base.paths().iter().map(|p| p.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned())).collect();
        let values = (0..bases.len()).map(|i| toml::Value::Integer(i as i64)).collect();
        config_axis = Axis { key: CONFIG_AXIS.into(), values, labels: Some(stems), label: Some(String::new()) };
        axes.push(&config_axis);
    }
    axes.extend(file.axes.iter());
    let implicit_seeds;
    if !file.axes.iter().any(|a| a.key == "seeds") {
        // Every base's seeds (the first base's when they differ: one grid).
        let seeds = &bases[0].0.seeds;
        implicit_seeds =
            Axis { key: "seeds".into(), values: seeds.iter().map(|&s| toml::Value::Integer(s as i64)).collect(), labels: None, label: None };
        axes.push(&implicit_seeds);
    }
    let names: Vec<Vec<String>> = axes.iter().map(|a| a.names()).collect::<Result<_>>()?;
    let total: usize = axes.iter().map(|a| a.values.len()).product();
    let mut runs = Vec::with_capacity(total);
    let mut configs = Vec::with_capacity(total);
    let mut seen_names: BTreeMap<String, String> = BTreeMap::new();
    for n in 0..total {
        let mut choice = vec![0; axes.len()];
        let mut rest = n;
        for (i, a) in axes.iter().enumerate().rev() {
            choice[i] = rest % a.values.len();
            rest /= a.values.len();
        }
        let base_index = match axes[0].key.as_str() {
            CONFIG_AXIS => choice[0],
            _ => 0,
        };
        let (base, base_table) = &bases[base_index];
        let mut table = base_table.clone();
        let (mut parts, mut tags, mut described) = (Vec::new(), BTreeMap::new(), Vec::new());
        let mut seed = 0;
        for (i, a) in axes.iter().enumerate() {
            let v = &a.values[choice[i]];
            if a.key == CONFIG_AXIS {
                described.push(format!("{CONFIG_AXIS} = {}", file.base.paths()[choice[i]].display()));
                parts.push(names[i][choice[i]].clone());
                tags.insert(a.key.clone(), names[i][choice[i]].clone());
                continue;
            }
            described.push(format!("{} = {v}", a.key));
            if a.key == "seeds" {
                seed = v.as_integer().expect("validated") as u64;
                set_key(&mut table, "seeds", toml::Value::Array(vec![v.clone()]))?;
                continue;
            }
            set_key(&mut table, &a.key, v.clone()).with_context(|| format!("{}: axis `{}`", path.display(), a.key))?;
            parts.push(format!("{}{}", a.prefix(), names[i][choice[i]]));
            tags.insert(a.key.clone(), names[i][choice[i]].clone());
        }
        let group = if parts.is_empty() { sanitize(&base.name) } else { sanitize(&parts.join("_")) };
        let name = format!("{group}_seed{seed}");
        let describe = described.join(", ");
        if let Some(other) = seen_names.insert(name.clone(), describe.clone()) {
            bail!("{}: two runs are named `{name}` ({other}; and {describe}): give the axes distinct `labels`", path.display());
        }
        set_key(&mut table, "name", toml::Value::String(group.clone()))?;
        set_key(&mut table, "run.checkpoint_every_epoch", toml::Value::Boolean(file.checkpoint_every_epoch))?;
        let tag_table = tags.iter().map(|(k, v)| (k.clone(), toml::Value::String(v.clone()))).collect();
        table.insert("tags".into(), toml::Value::Table(tag_table));
        let cfg = (|| -> Result<RunConfig> {
            let cfg: RunConfig =
                toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| anyhow::anyhow!(promptcl_learner::did_you_mean(&e.to_string())))?;
            let cfg = cfg.resolve_paths(&here);
            let back = toml::Table::try_from(&cfg)?;
            for a in axes.iter().filter(|a| a.key != "seeds" && a.key != CONFIG_AXIS) {
                if !has_key(&back, &a.key) {
                    bail!("axis `{}`: no such config key (it does not survive into the run config)", a.key);
                }
            }
            cfg.validate()?;
            Ok(cfg)
        })()
        .map(|mut cfg| {
            // The backbone by its weights file (or preset), for the paper table's columns.
            let backbone =
                cfg.model.weights.as_deref().and_then(Path::file_stem).map_or_else(|| cfg.model.preset.clone(), |s| s.to_string_lossy().into_owned());
            cfg.tags.entry(BACKBONE.into()).or_insert(backbone.clone());
            tags.entry(BACKBONE.into()).or_insert(backbone);
            cfg
        })
        .with_context(|| format!("{}: run `{name}` ({describe})", path.display()))?;
        let dir = root.join("runs").join(&name);
        runs.push(RunEntry { index: n, name, group, seed, dir, tags });
        configs.push(cfg);
    }
    let manifest = Manifest {
        name: file.name.clone(),
        sweep_file: cwd.join(path),
        backend: file.backend,
        table: file.table.clone(),
        axes: axes.iter().filter(|a| a.key != "seeds").map(|a| a.key.clone()).collect(),
        runs,
    };
    Ok(Expanded { root, manifest, configs, file })
}

impl Expanded {
    /// Writes the manifest and every run's config. A sweep folder that exists
    /// must hold the same runs; a started run must have the same config.
    pub fn write(&self) -> Result<()> {
        let manifest_path = self.root.join(MANIFEST);
        if manifest_path.is_file() {
            let old: Manifest = results::read_json(&manifest_path)?;
            let names = |m: &Manifest| m.runs.iter().map(|r| (r.index, r.name.clone())).collect::<Vec<_>>();
            if names(&old) != names(&self.manifest) {
                bail!(
                    "{} holds a sweep with other runs ({} before, {} now): give this grid a new `name`",
                    self.root.display(),
                    old.runs.len(),
                    self.manifest.runs.len()
                );
            }
        }
        for (run, cfg) in self.manifest.runs.iter().zip(&self.configs) {
            std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
            let text = toml::to_string_pretty(cfg)?;
            let path = run.dir.join(results::CONFIG);
            if run.dir.join(results::STATE).is_file() {
                let old = std::fs::read_to_string(&path).unwrap_or_default();
                let same = toml::from_str::<toml::Table>(&old).ok() == toml::from_str::<toml::Table>(&text).ok();
                if !same {
                    bail!("{}: this run has started with another config than the sweep now gives: give this grid a new `name`", path.display());
                }
                continue;
            }
            results::atomic_write(&path, text.as_bytes())?;
        }
        std::fs::create_dir_all(self.root.join("logs"))?;
        results::write_json(&manifest_path, &self.manifest)
    }
}

/// Reads a sweep's manifest from its folder, or expands its sweep file.
pub fn open(arg: &Path) -> Result<(PathBuf, Manifest)> {
    if arg.join(MANIFEST).is_file() {
        return Ok((arg.to_path_buf(), results::read_json(&arg.join(MANIFEST))?));
    }
    if arg.is_file() {
        let e = expand(arg)?;
        let path = e.root.join(MANIFEST);
        if !path.is_file() {
            bail!("{}: this sweep has not been started (no {})", arg.display(), path.display());
        }
        return Ok((e.root.clone(), results::read_json(&path)?));
    }
    bail!("{} is neither a sweep folder (with {MANIFEST}) nor a sweep file", arg.display())
}

/// Where one run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    NotStarted,
    Queued,
    Running,
    /// Stopped before the end (preempted, killed), not queued: resubmit runs it on.
    Stopped {
        completed: usize,
        of: usize,
    },
    Failed(String),
    Finished,
}

impl RunStatus {
    pub fn word(&self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Stopped { .. } => "stopped",
            Self::Failed(_) => "failed",
            Self::Finished => "finished",
        }
    }

    /// Whether a resubmission should run it.
    pub fn needs_run(&self) -> bool {
        matches!(self, Self::NotStarted | Self::Stopped { .. } | Self::Failed(_))
    }
}

/// The status of every run: from its folder, and from Slurm for the runs of
/// submitted arrays (`scheduler`: index → queued/running).
pub fn statuses(manifest: &Manifest, scheduler: &BTreeMap<usize, RunStatus>) -> Vec<RunStatus> {
    manifest
        .runs
        .iter()
        .map(|r| {
            let state: Option<State> = results::read_json(&r.dir.join(results::STATE)).ok();
            if state.as_ref().is_some_and(|s| s.finished) {
                return RunStatus::Finished;
            }
            if let Some(s) = scheduler.get(&r.index) {
                return s.clone();
            }
            if results::lock_holder(&r.dir).is_some() {
                return RunStatus::Running;
            }
            if let Ok(err) = std::fs::read_to_string(r.dir.join(ERROR_FILE)) {
                return RunStatus::Failed(err.lines().next().unwrap_or("").to_string());
            }
            match state {
                Some(s) => RunStatus::Stopped { completed: s.completed_tasks, of: s.num_tasks },
                None => RunStatus::NotStarted,
            }
        })
        .collect()
}

/// The status table of `promptcl sweep status`.
pub fn status_table(manifest: &Manifest, statuses: &[RunStatus]) -> String {
    use std::fmt::Write as _;
    let width = manifest.runs.iter().map(|r| r.name.len()).max().unwrap_or(3).max(3);
    let mut out = format!("{:>5}  {:<width$}  status\n", "index", "run");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (r, s) in manifest.runs.iter().zip(statuses) {
        *counts.entry(s.word()).or_default() += 1;
        let detail = match s {
            RunStatus::Failed(e) => format!(": {e}"),
            RunStatus::Stopped { completed, of } => format!(" after {completed}/{of} tasks"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{:>5}  {:<width$}  {}{detail}", r.index, r.name, s.word());
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(out, "{} runs: {}", manifest.runs.len(), summary.join(", "));
    out
}

/// `promptcl run --dir`: records a failure for `sweep status`, or clears an old one.
pub fn record_outcome(dir: &Path, outcome: &Result<PathBuf>) -> Result<()> {
    let path = dir.join(ERROR_FILE);
    match outcome {
        Err(e) if e.downcast_ref::<crate::preempt::Preempted>().is_none() => {
            let text: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            results::atomic_write(&path, format!("{}\n", text.join("\n  caused by: ")).as_bytes())?;
        }
        _ => {
            std::fs::remove_file(&path).ok();
        }
    }
    Ok(())
}

/// Runs (local) or submits (Slurm) every run that is not finished, queued or running.
pub fn launch(root: &Path, manifest: &Manifest, file: &SweepFile, backend: BackendKind) -> Result<()> {
    match backend {
        BackendKind::Local => {
            let exe = std::env::current_exe().context("locating the promptcl binary")?;
            let failed = local::run_queue(root, manifest, &file.local, &exe)?;
            if failed > 0 {
                bail!("{failed} run(s) failed: `promptcl sweep status {}` shows why, `promptcl sweep resubmit` runs them again", root.display());
            }
            println!("sweep {}: every run finished; `promptcl compare {}` makes the table", manifest.name, root.display());
        }
        BackendKind::Slurm => {
            let states = statuses(manifest, &slurm::scheduler_states(root));
            let todo: Vec<usize> = manifest.runs.iter().zip(&states).filter(|(_, s)| s.needs_run()).map(|(r, _)| r.index).collect();
            if todo.is_empty() {
                println!("sweep {}: nothing to submit (every run is finished, queued or running)", manifest.name);
                return Ok(());
            }
            let job = slurm::submit(root, manifest, &file.slurm, &todo)?;
            println!("sweep {}: submitted job array {job} ({} runs: {})", manifest.name, todo.len(), slurm::ranges(&todo));
        }
    }
    Ok(())
}

/// What `promptcl sweep <file>` would do: the runs, and the Slurm script.
pub fn dry_run(e: &Expanded, backend: BackendKind) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = format!("sweep {} in {} ({} runs, {backend:?} backend)\n", e.manifest.name, e.root.display(), e.manifest.runs.len());
    let states = statuses(&e.manifest, &Default::default());
    for (r, s) in e.manifest.runs.iter().zip(&states) {
        let tags: Vec<String> = r.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "{:>5}  {}  seed {}  [{}]  {}", r.index, r.name, r.seed, tags.join(", "), s.word());
    }
    if backend == BackendKind::Slurm {
        let todo: Vec<usize> = e.manifest.runs.iter().zip(&states).filter(|(_, s)| s.needs_run()).map(|(r, _)| r.index).collect();
        let exe = match &e.file.slurm.promptcl {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let _ = write!(out, "\n# the array script (not submitted):\n{}", slurm::script(&e.root, &e.manifest, &e.file.slurm, &todo, &exe));
    }
    Ok(out)
}

/// The paper table of a sweep's finished (or partial) runs. Rows and columns
/// follow the sweep file's `[table]`; by default the rows are the method and
/// the axes outside `stream.` and `model.`, the column groups the dataset,
/// the backbone when the runs use more than one, and the other `stream.` and
/// `model.` axes. The `config` axis of several bases is left out: method,
/// dataset and backbone say what it does.
pub fn paper_table(manifest: &Manifest) -> Result<crate::compare::PaperTable> {
    let model_axis = |k: &String| k == "model.weights" || k == "model.preset";
    let column_axis = |k: &String| (k.starts_with("stream.") || k.starts_with("model.")) && !model_axis(k);
    let named = |k: &String| k != CONFIG_AXIS && k != "method.name" && k != "method";
    let backbones: BTreeSet<&String> = manifest.runs.iter().filter_map(|r| r.tags.get(BACKBONE)).collect();
    let default_rows = || {
        std::iter::once("method".to_string()).chain(manifest.axes.iter().filter(|k| named(k) && !column_axis(k) && !model_axis(k)).cloned()).collect()
    };
    let default_columns = || {
        let backbone = (backbones.len() > 1).then(|| BACKBONE.to_string());
        std::iter::once("dataset".to_string()).chain(backbone).chain(manifest.axes.iter().filter(|k| column_axis(k)).cloned()).collect()
    };
    let rows: Vec<String> = manifest.table.rows.clone().unwrap_or_else(default_rows);
    let columns: Vec<String> = manifest.table.columns.clone().unwrap_or_else(default_columns);
    let runs =
        manifest.runs.iter().filter(|r| r.dir.join(results::METRICS).is_file()).map(|r| results::load_metrics(&r.dir)).collect::<Result<Vec<_>>>()?;
    Ok(crate::compare::PaperTable::new(&runs, &rows, &columns, &manifest.table.metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_creates_sections_and_refuses_to_descend_into_values() {
        let mut t: toml::Table = toml::from_str("[method]\nname = \"l2p\"\n").unwrap();
        set_key(&mut t, "method.params.length", toml::Value::Integer(5)).unwrap();
        assert_eq!(t["method"]["params"]["length"].as_integer(), Some(5));
        assert!(has_key(&t, "method.params.length"));
        assert!(!has_key(&t, "method.params.size"));
        let err = set_key(&mut t, "method.name.x", toml::Value::Integer(1)).unwrap_err();
        assert!(err.to_string().contains("`method.name` is a value"), "{err}");
    }

    #[test]
    fn value_names_are_short_and_stable() {
        let v = |s: &str| toml::from_str::<toml::Table>(&format!("v = {s}")).unwrap()["v"].clone();
        assert_eq!(value_name(&v("\"weights/vit_b16.safetensors\"")).as_deref(), Some("vit_b16"));
        assert_eq!(value_name(&v("0.001")).as_deref(), Some("0.001"));
        assert_eq!(value_name(&v("[0, 1]")).as_deref(), Some("0+1"));
        assert_eq!(value_name(&v("{ name = \"l2p\", params = {} }")).as_deref(), Some("l2p"));
        assert_eq!(value_name(&v("{ params = {} }")), None);
        assert_eq!(sanitize("a b/c"), "a-b-c");
    }
}
