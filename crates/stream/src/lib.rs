//! Class-incremental task streams: datasets, class orders, task splits, label
//! hierarchies and the batch pipeline.
//!
//! Everything up to `transform`/`loader` is plain Rust; those two modules are
//! the edge where a batch becomes a `tch::Tensor`.

mod cifar;
pub mod cre;
mod dataset;
mod error;
mod folder;
mod hierarchy;
mod loader;
mod order;
pub mod pickle;
pub mod pyrandom;
mod rng;
mod tasks;
pub mod text;
mod transform;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cifar::{load as load_cifar100, load_binary as load_cifar100_binary, load_python as load_cifar100_python};
pub use cre::{FullDataProtocol, TaskPlan};
pub use dataset::{Dataset, Image, Split};
pub use error::{Result, StreamError};
pub use folder::{
    decode as decode_image, load as load_image_folder, scan as scan_image_folder, seeded_split, split_file_path, FolderOptions, FolderSplit,
    OnCorrupt, SplitFile,
};
pub use hierarchy::{LabelTree, CIFAR100_SUPERCLASS, CIFAR100_SUPERCLASS_NAMES};
pub use loader::{Batch, Loader, LoaderOptions};
pub use order::ClassOrder;
pub use rng::SplitMix64;
pub use tasks::{Remainder, SplitConfig, Task, TaskStream};
pub use text::{EncodedText, RelationExample, RelationTokenizer};
pub use transform::{random_resized_crop, render, resize_center_crop, Interpolation, Normalize, ResizeFirst, TransformConfig, View};

/// Which dataset a stream reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetConfig {
    /// `root` holds `cifar-100-python/` or `cifar-100-binary/` (or is one).
    Cifar100 {
        root: PathBuf,
        /// A `{"groups": {...}}` label tree replacing the built-in 20
        /// superclasses (e.g. HierC's leaf groups, benchmarks/trees/).
        #[serde(default)]
        hierarchy: Option<PathBuf>,
    },
    /// `root/<wnid>/*.jpg`, 200 classes.
    ImagenetR {
        root: PathBuf,
        #[serde(default = "default_folder_split")]
        split: FolderSplit,
        #[serde(default = "default_cache_side")]
        cache_short_side: Option<usize>,
        #[serde(default)]
        on_corrupt: OnCorrupt,
        /// Optional `{"groups": {...}, "aliases": {...}}` label tree over the
        /// wnids (e.g. HierC's, benchmarks/trees/imr_hierc_leaf_groups.json).
        #[serde(default)]
        hierarchy: Option<PathBuf>,
    },
    /// Any `root/<class>/*.{jpg,png}` folder.
    ImageFolder {
        root: PathBuf,
        #[serde(default = "default_folder_split")]
        split: FolderSplit,
        #[serde(default = "default_cache_side")]
        cache_short_side: Option<usize>,
        #[serde(default)]
        on_corrupt: OnCorrupt,
        /// Optional `{"groups": {...}}` label tree.
        #[serde(default)]
        hierarchy: Option<PathBuf>,
    },
    /// Continual few-shot relation extraction (CFRL text format):
    /// `root/{relation_name.txt, rel_index.npy, CFRLdata_10_100_10_<shots>/}`.
    CfrlFewShot {
        root: PathBuf,
        shots: usize,
        /// The encoder's `tokenizer.json` (or its folder).
        tokenizer: PathBuf,
        #[serde(default = "default_max_length")]
        max_length: usize,
        /// Keep only the first N test examples of each relation (file order):
        /// a smaller evaluation for CPU budgets. Unset = the protocol's 100.
        #[serde(default)]
        test_per_relation: Option<usize>,
    },
    /// Full-data continual relation extraction from a FewRel-style JSON file.
    RelationJson {
        root: PathBuf,
        protocol: FullDataProtocol,
        tokenizer: PathBuf,
        #[serde(default = "default_max_length")]
        max_length: usize,
    },
    /// All 80 FewRel relations of a CFRL release (`root` as for `cfrl-few-shot`),
    /// every file pooled and de-duplicated, a fixed number of train and test
    /// instances per relation drawn per seed ([`cre::load_pooled_cfrl`]): a
    /// reduced full-data protocol. The smallest relation has 133 distinct
    /// single-relation instances, hence the 100 / 33 default.
    #[serde(rename = "fewrel-80")]
    Fewrel80 {
        root: PathBuf,
        #[serde(default = "default_pooled_train")]
        train_per_relation: usize,
        #[serde(default = "default_pooled_test")]
        test_per_relation: usize,
        tokenizer: PathBuf,
        #[serde(default = "default_max_length")]
        max_length: usize,
    },
    /// FewRel 1.0's `val_wiki.json` (`root` is the file or its folder) under the
    /// exact full-data protocol: 420 train / 140 (unused) / 140 test of each
    /// relation's 700, per seed; 16 relations.
    #[serde(rename = "fewrel-16-full")]
    Fewrel16Full {
        root: PathBuf,
        tokenizer: PathBuf,
        #[serde(default = "default_max_length")]
        max_length: usize,
    },
}

fn default_pooled_train() -> usize {
    100
}

fn default_pooled_test() -> usize {
    33
}

/// The CRE samplers' `max_length`.
fn default_max_length() -> usize {
    256
}

fn default_folder_split() -> FolderSplit {
    FolderSplit::Seeded { seed: 0, train_fraction: 0.8 }
}

fn default_cache_side() -> Option<usize> {
    Some(256)
}

fn folder_options(split: &FolderSplit, cache_short_side: Option<usize>, on_corrupt: OnCorrupt) -> FolderOptions {
    FolderOptions { split: split.clone(), cache_short_side, on_corrupt }
}

/// A user-given label tree replaces the dataset's own (CIFAR-100's superclasses).
fn with_tree(mut ds: Dataset, tree: Option<&Path>) -> Result<Dataset> {
    if let Some(path) = tree {
        ds.hierarchy = Some(LabelTree::from_json(path, &ds.class_names)?);
    }
    Ok(ds)
}

/// A named stream whose relation count is part of its name.
fn expect_relations(ds: Dataset, n: usize, path: &Path) -> Result<Dataset> {
    if ds.num_classes() != n {
        return Err(StreamError::format(path, format!("{} relations; the {} stream has {n}", ds.num_classes(), ds.name)));
    }
    Ok(ds)
}

impl DatasetConfig {
    pub fn root(&self) -> &Path {
        match self {
            Self::Cifar100 { root, .. }
            | Self::ImagenetR { root, .. }
            | Self::ImageFolder { root, .. }
            | Self::CfrlFewShot { root, .. }
            | Self::RelationJson { root, .. }
            | Self::Fewrel80 { root, .. }
            | Self::Fewrel16Full { root, .. } => root,
        }
    }

    /// The class count when the format fixes it.
    pub fn known_num_classes(&self) -> Option<usize> {
        match self {
            Self::Cifar100 { .. } => Some(100),
            Self::ImagenetR { .. } => Some(200),
            Self::Fewrel80 { .. } => Some(80),
            Self::Fewrel16Full { .. } => Some(16),
            Self::ImageFolder { .. } | Self::CfrlFewShot { .. } | Self::RelationJson { .. } => None,
        }
    }

    /// Checks what can be checked without reading the data.
    pub fn validate(&self) -> Result<()> {
        let root = self.root();
        if !root.exists() {
            return Err(StreamError::Config(format!("dataset root {} does not exist (data-scripts/ has download scripts)", root.display())));
        }
        Ok(())
    }

    /// The tokenizer of a text dataset.
    pub fn tokenizer(&self) -> Option<(&Path, usize)> {
        match self {
            Self::CfrlFewShot { tokenizer, max_length, .. }
            | Self::RelationJson { tokenizer, max_length, .. }
            | Self::Fewrel80 { tokenizer, max_length, .. }
            | Self::Fewrel16Full { tokenizer, max_length, .. } => Some((tokenizer, *max_length)),
            _ => None,
        }
    }

    /// Loads the data. `seed` matters only where the protocol splits per seed
    /// (full-data relation extraction).
    pub fn load_for_seed(&self, seed: u64) -> Result<Dataset> {
        match self {
            Self::CfrlFewShot { root, shots, tokenizer, max_length, test_per_relation } => {
                cre::load_cfrl(root, *shots, *test_per_relation, &RelationTokenizer::from_file(tokenizer, *max_length)?)
            }
            Self::RelationJson { root, protocol, tokenizer, max_length } => {
                cre::load_full(root, *protocol, seed, &RelationTokenizer::from_file(tokenizer, *max_length)?)
            }
            Self::Fewrel80 { root, train_per_relation, test_per_relation, tokenizer, max_length } => {
                let split = cre::PooledSplit { train_per_relation: *train_per_relation, test_per_relation: *test_per_relation };
                let ds = cre::load_pooled_cfrl(root, split, seed, &RelationTokenizer::from_file(tokenizer, *max_length)?)?;
                expect_relations(ds, 80, root)
            }
            Self::Fewrel16Full { root, tokenizer, max_length } => {
                let file = if root.is_dir() { root.join("val_wiki.json") } else { root.clone() };
                let mut ds = cre::load_full(&file, FullDataProtocol::Fewrel, seed, &RelationTokenizer::from_file(tokenizer, *max_length)?)?;
                ds.name = "fewrel-16-full".into();
                expect_relations(ds, 16, &file)
            }
            _ => self.load(),
        }
    }

    pub fn load(&self) -> Result<Dataset> {
        match self {
            Self::CfrlFewShot { .. } | Self::RelationJson { .. } | Self::Fewrel80 { .. } | Self::Fewrel16Full { .. } => self.load_for_seed(0),
            Self::Cifar100 { root, hierarchy } => with_tree(cifar::load(root)?, hierarchy.as_deref()),
            Self::ImagenetR { root, split, cache_short_side, on_corrupt, hierarchy } => {
                let ds = folder::load(root, "imagenet-r", &folder_options(split, *cache_short_side, *on_corrupt))?;
                if ds.num_classes() != 200 {
                    tracing::warn!("{}: {} class folders, ImageNet-R has 200", root.display(), ds.num_classes());
                }
                with_tree(ds, hierarchy.as_deref())
            }
            Self::ImageFolder { root, split, cache_short_side, on_corrupt, hierarchy } => {
                let name = root.file_name().map_or_else(|| "image-folder".into(), |n| n.to_string_lossy().into_owned());
                let ds = folder::load(root, &name, &folder_options(split, *cache_short_side, *on_corrupt))?;
                with_tree(ds, hierarchy.as_deref())
            }
        }
    }
}

/// Writes a file so that readers see either the old or the new content, never
/// a torn one: temp file in the same directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// [`atomic_write`] for writers that need a path of their own (libtorch's
/// savers): `write(tmp)` fills a temp file beside `path`, which then replaces
/// `path` in one rename. Missing parent directories are created.
pub fn atomic_write_with<E>(path: &Path, write: impl FnOnce(&Path) -> std::result::Result<(), E>) -> Result<()>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |e| StreamError::io(path, e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The extension stays last, so writers that choose a format by it still do.
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    let cleanup = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    };
    write(&tmp).map_err(|e| cleanup(std::io::Error::other(e)))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(cleanup)?;
    std::fs::rename(&tmp, path).map_err(cleanup)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
