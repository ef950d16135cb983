//! The run config (`promptcl run config.toml`): typed, strict, validated
//! before any tensor exists; saved resolved beside the results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use promptcl_learner::OptimConfig;
use promptcl_model::{BertConfig, Precision, ViTConfig};
use promptcl_stream::{ClassOrder, DatasetConfig, FolderSplit, Remainder, SplitConfig, TransformConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// A label for the results folder and comparisons.
    #[serde(default = "default_name")]
    pub name: String,
    pub stream: StreamSection,
    #[serde(default)]
    pub model: ModelSection,
    pub method: MethodSection,
    #[serde(default)]
    pub optim: OptimConfig,
    /// One run per seed; the seed drives class order (when seeded), init, batches and crops.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub run: RunSection,
    /// Labels for comparisons, copied into `metrics.json`: a sweep sets one
    /// per axis (`"method.name" = "l2p"`), and its paper table groups by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

fn default_name() -> String {
    "run".into()
}

fn default_seeds() -> Vec<u64> {
    vec![42]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    pub dataset: DatasetConfig,
    #[serde(default)]
    pub order: ClassOrder,
    pub num_tasks: usize,
    #[serde(default)]
    pub first_task_classes: Option<usize>,
    #[serde(default)]
    pub remainder: Remainder,
    #[serde(default)]
    pub transform: TransformConfig,
}

impl StreamSection {
    pub fn split(&self) -> SplitConfig {
        SplitConfig { num_tasks: self.num_tasks, first_task_classes: self.first_task_classes, remainder: self.remainder }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A timm preset name, `bert-base-uncased` or `all-minilm-l6-v2`; or `custom` with `vit` / `bert` / `config` given.
    pub preset: String,
    pub vit: Option<ViTConfig>,
    pub bert: Option<BertConfig>,
    /// A Hugging Face `config.json` for a BERT encoder.
    pub config: Option<PathBuf>,
    /// timm- or Hugging Face-named safetensors (data-scripts/export_vit_weights.py); none = random init (for tests and benchmarks only).
    pub weights: Option<PathBuf>,
    pub precision: Precision,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { preset: "vit_base_patch16_224".into(), vit: None, bert: None, config: None, weights: None, precision: Precision::F32 }
    }
}

/// The encoder a run uses.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderConfig {
    Vit(ViTConfig),
    Bert(BertConfig),
}

impl EncoderConfig {
    pub fn depth(&self) -> usize {
        match self {
            Self::Vit(c) => c.depth,
            Self::Bert(c) => c.num_hidden_layers,
        }
    }

    /// Width of the feature methods read (`Backbone::feature_dim`).
    pub fn feature_dim(&self) -> i64 {
        match self {
            Self::Vit(c) => c.embed_dim,
            Self::Bert(c) => 2 * c.hidden_size,
        }
    }
}

impl ModelSection {
    /// The encoder, checked against the kind of data (`text`: relation extraction).
    pub fn encoder(&self, text: bool) -> Result<EncoderConfig> {
        let bert_preset = match self.preset.to_ascii_lowercase().as_str() {
            "bert-base-uncased" | "bert_base_uncased" => Some(BertConfig::default()),
            "all-minilm-l6-v2" | "all_minilm_l6_v2" => Some(BertConfig::minilm_l6()),
            _ => None,
        };
        let bert = match (&self.bert, &self.config) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(path)) => Some(BertConfig::from_json(path)?),
            (None, None) => bert_preset,
        };
        match (text, bert) {
            (true, Some(b)) => {
                b.validate()?;
                Ok(EncoderConfig::Bert(b))
            }
            (true, None) => bail!(
                "a relation-extraction dataset needs a BERT encoder: set model.preset = \"all-minilm-l6-v2\" or \"bert-base-uncased\", or model.config = <config.json>"
            ),
            (false, Some(_)) => bail!("model: a BERT encoder reads text, but stream.dataset is an image dataset"),
            (false, None) => {
                let cfg = match (&self.vit, self.preset.as_str()) {
                    (Some(v), _) => v.clone(),
                    (None, name) => ViTConfig::by_name(name)?,
                };
                cfg.validate()?;
                Ok(EncoderConfig::Vit(cfg))
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    pub name: String,
    #[serde(default)]
    pub params: toml::Table,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// `auto` (CUDA if available), `cpu` or `cuda`.
    pub device: DeviceChoice,
    pub results_dir: PathBuf,
    pub eval_batch_size: usize,
    /// Keep one checkpoint per finished task (else only the latest).
    pub keep_all_checkpoints: bool,
    /// Also checkpoint after every epoch (method and optimizer state), so
    /// `--resume` continues inside a task.
    pub checkpoint_every_epoch: bool,
    pub on_nonfinite_loss: NonFinite,
}

/// Where a run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

/// What a NaN/Inf loss does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinite {
    /// Stop the run with an error; everything finished so far is kept.
    #[default]
    Stop,
    /// Skip the batch (no update) and log it; stop after 10 in a row.
    SkipBatch,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            results_dir: "results".into(),
            eval_batch_size: 256,
            keep_all_checkpoints: false,
            checkpoint_every_epoch: false,
            on_nonfinite_loss: NonFinite::Stop,
        }
    }
}

impl RunConfig {
    /// Reads TOML or JSON (by extension) and validates it.
    pub fn load(path: &Path) -> Result<Self> {
        let cfg = Self::parse(path)?;
        cfg.validate().with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(cfg)
    }

    /// Reads TOML or JSON (by extension) with paths resolved against the
    /// file's folder, without validating: for callers that override parts
    /// first (benchmarks on synthetic data, tests of configs whose data and
    /// weights live on users' machines).
    pub fn parse(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let parsed: std::result::Result<Self, String> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let cfg = parsed.map_err(|e| anyhow::anyhow!("{}: invalid config: {}", path.display(), promptcl_learner::did_you_mean(&e)))?;
        Ok(cfg.resolve_paths(path.parent().unwrap_or(Path::new("."))))
    }

    /// Relative data and weight paths are relative to the config file; a
    /// leading `~/` is the home directory.
    pub(crate) fn resolve_paths(mut self, base: &Path) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let fix = |p: &mut PathBuf| {
            if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), &home) {
                *p = home.join(rest);
            } else if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.stream.dataset {
            DatasetConfig::Cifar100 { root, hierarchy } => {
                fix(root);
                if let Some(h) = hierarchy {
                    fix(h);
                }
            }
            DatasetConfig::ImagenetR { root, hierarchy, split, .. } | DatasetConfig::ImageFolder { root, hierarchy, split, .. } => {
                fix(root);
                if let Some(h) = hierarchy {
                    fix(h);
                }
                match split {
                    FolderSplit::Lists { train, test } => {
                        fix(train);
                        fix(test);
                    }
                    FolderSplit::File { path } => fix(path),
                    FolderSplit::Seeded { .. } => {}
                }
            }
            DatasetConfig::CfrlFewShot { root, tokenizer, .. }
            | DatasetConfig::RelationJson { root, tokenizer, .. }
            | DatasetConfig::Fewrel80 { root, tokenizer, .. }
            | DatasetConfig::Fewrel16Full { root, tokenizer, .. } => {
                fix(root);
                fix(tokenizer);
            }
        }
        if let Some(w) = &mut self.model.weights {
            fix(w);
        }
        if let Some(c) = &mut self.model.config {
            fix(c);
        }
        self
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_inner().map_err(|e| anyhow::anyhow!(promptcl_learner::did_you_mean(&format!("{e:#}"))))
    }

    fn validate_inner(&self) -> Result<()> {
        if self.seeds.is_empty() {
            bail!("seeds: give at least one seed");
        }
        self.optim.validate()?;
        self.stream.transform.validate().context("stream.transform")?;
        self.stream.dataset.validate().context("stream.dataset.root")?;
        if let Some(n) = self.stream.dataset.known_num_classes() {
            promptcl_stream::TaskStream::new(n, &ClassOrder::Natural, &self.stream.split())?;
            if let ClassOrder::Explicit(_) = &self.stream.order {
                self.stream.order.resolve(n).context("stream.order")?;
            }
        }
        let text = self.stream.dataset.tokenizer().is_some();
        let encoder = self.model.encoder(text).context("model")?;
        if let Some(w) = &self.model.weights {
            if !w.is_file() {
                bail!("model.weights: {} does not exist (data-scripts/export_vit_weights.py makes it)", w.display());
            }
        }
        if let Some((tok, _)) = self.stream.dataset.tokenizer() {
            if !tok.exists() {
                bail!("stream.dataset.tokenizer: {} does not exist (the encoder's tokenizer.json)", tok.display());
            }
        }
        let depth = encoder.depth();
        if let EncoderConfig::Vit(vit) = &encoder {
            if vit.img_size as usize != self.stream.transform.size {
                tracing::warn!(
                    "model img_size {} differs from stream.transform.size {}: position embeddings will be resampled",
                    vit.img_size,
                    self.stream.transform.size
                );
            }
        }
        promptcl_learner::registry::check(&self.method.name, &self.method.params).context("method")?;
        // Any `*layers` list of a method indexes backbone blocks.
        for (key, value) in &self.method.params {
            if let (true, Some(list)) = (key.ends_with("layers"), value.as_array()) {
                if let Some(bad) = list.iter().filter_map(|v| v.as_integer()).find(|&l| l < 0 || l as usize >= depth) {
                    bail!("method.params.{key}: layer {bad} does not exist, the backbone has {depth} blocks (0..{depth})");
                }
            }
        }
        if self.run.eval_batch_size == 0 {
            bail!("run.eval_batch_size must be positive");
        }
        Ok(())
    }
}
