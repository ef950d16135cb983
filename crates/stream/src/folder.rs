//! Image folders (`root/<class>/*.{jpg,jpeg,png}`): ImageNet-R, CUB, or any
//! user data, with a train/test split that is the same on every machine.
//!
//! The official ImageNet-R code splits 80/20 with `torch.utils.data.random_split`
//! seeded by the run, so every lab trains on a different split. Here the split is
//! per class: file names sorted (byte order), shuffled with
//! `SplitMix64::derive(seed, [class index])`, the first `round(fraction·n)`
//! go to train (kept within `1..n` when n ≥ 2 and 0 < fraction < 1, so both
//! sides see every class). It is written beside the data as
//! `promptcl-split-seed<seed>.json` and read back from there on later runs.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Image, Split};
use crate::error::{Result, StreamError};
use crate::rng::SplitMix64;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum FolderSplit {
    /// promptcl's deterministic per-class split (written as a split file).
    Seeded { seed: u64, train_fraction: f64 },
    /// A split file written by promptcl (or by hand, same format).
    File { path: PathBuf },
    /// Two text files, one image path (relative to the root) per line; a
    /// second whitespace-separated field (a label) is ignored, the label comes
    /// from the class folder. E.g. CODA-Prompt's ImageNet-R lists.
    Lists { train: PathBuf, test: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    #[default]
    Error,
    /// Skip the image with a logged warning.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderOptions {
    pub split: FolderSplit,
    /// Decoded images are kept in memory with their shorter side resized to
    /// this (if larger); `None` keeps full resolution.
    #[serde(default = "default_cache_side")]
    pub cache_short_side: Option<usize>,
    #[serde(default)]
    pub on_corrupt: OnCorrupt,
}

fn default_cache_side() -> Option<usize> {
    Some(256)
}

/// The on-disk split file.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    pub format: String,
    pub seed: Option<u64>,
    pub train_fraction: Option<f64>,
    pub train: Vec<String>,
    pub test: Vec<String>,
}

const SPLIT_FORMAT: &str = "promptcl-split/1";

pub fn split_file_path(root: &Path, seed: u64) -> PathBuf {
    root.join(format!("promptcl-split-seed{seed}.json"))
}

/// Sorted class folder names and their sorted image files (relative paths).
pub fn scan(root: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut classes = Vec::new();
    let entries = std::fs::read_dir(root).map_err(|e| StreamError::io(root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StreamError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        let mut files = Vec::new();
        for f in std::fs::read_dir(&dir).map_err(|e| StreamError::io(&dir, e))? {
            let f = f.map_err(|e| StreamError::io(&dir, e))?;
            let fname = f.file_name().to_string_lossy().into_owned();
            let ext = Path::new(&fname).extension().map(|e| e.to_string_lossy().to_lowercase());
            if f.path().is_file() && ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                files.push(format!("{name}/{fname}"));
            }
        }
        if files.is_empty() {
            return Err(StreamError::format(&dir, "class folder holds no .jpg/.jpeg/.png image"));
        }
        files.sort();
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(StreamError::format(root, "no class folders (expected root/<class>/<image>.jpg)"));
    }
    classes.sort();
    Ok(classes)
}

/// promptcl's deterministic split (see the module docs).
pub fn seeded_split(classes: &[(String, Vec<String>)], seed: u64, train_fraction: f64) -> SplitFile {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (c, (_, files)) in classes.iter().enumerate() {
        let mut idx: Vec<usize> = (0..files.len()).collect();
        SplitMix64::derive(seed, &[c as u64]).shuffle(&mut idx);
        let n = files.len();
        let mut n_train = (train_fraction * n as f64).round() as usize;
        if n >= 2 && train_fraction > 0.0 && train_fraction < 1.0 {
            n_train = n_train.clamp(1, n - 1);
        }
        let (tr, te) = idx.split_at(n_train.min(n));
        let mut tr: Vec<String> = tr.iter().map(|&i| files[i].clone()).collect();
        let mut te: Vec<String> = te.iter().map(|&i| files[i].clone()).collect();
        tr.sort();
        te.sort();
        train.extend(tr);
        test.extend(te);
    }
    SplitFile { format: SPLIT_FORMAT.into(), seed: Some(seed), train_fraction: Some(train_fraction), train, test }
}

impl SplitFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
        let f: Self = serde_json::from_str(&text).map_err(|e| StreamError::format(path, format!("bad split file: {e}")))?;
        if f.format != SPLIT_FORMAT {
            return Err(StreamError::format(path, format!("format `{}`, expected `{SPLIT_FORMAT}`", f.format)));
        }
        Ok(f)
    }

    /// Written atomically (temp file + rename), so a crash never leaves half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable");
        crate::atomic_write(path, text.as_bytes())
    }
}

fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.trim_start_matches("./").to_string())
        .collect())
}

/// Loads an image folder and decodes (in parallel) both sides of its split.
pub fn load(root: &Path, name: &str, opts: &FolderOptions) -> Result<Dataset> {
    let classes = scan(root)?;
    let split = match &opts.split {
        FolderSplit::Seeded { seed, train_fraction } => {
            if !(0.0..=1.0).contains(train_fraction) {
                return Err(StreamError::Config(format!("train_fraction {train_fraction} is not in [0, 1]")));
            }
            let path = split_file_path(root, *seed);
            let computed = seeded_split(&classes, *seed, *train_fraction);
            if path.is_file() {
                let existing = SplitFile::read(&path)?;
                if existing != computed {
                    tracing::warn!("{}: differs from the split of the files now present (files added or removed?); using the file", path.display());
                }
                existing
            } else {
                if let Err(e) = computed.write(&path) {
                    tracing::warn!("could not write the split file ({e}); continuing without it");
                }
                computed
            }
        }
        FolderSplit::File { path } => SplitFile::read(path)?,
        FolderSplit::Lists { train, test } => {
            SplitFile { format: SPLIT_FORMAT.into(), seed: None, train_fraction: None, train: read_list(train)?, test: read_list(test)? }
        }
    };
    let class_names: Vec<String> = classes.into_iter().map(|(n, _)| n).collect();
    let train = decode_side(root, &split.train, &class_names, opts)?;
    let test = decode_side(root, &split.test, &class_names, opts)?;
    Ok(Dataset { name: name.into(), class_names, train, test, hierarchy: None, plan: None, token_vocab: None })
}

fn decode_side(root: &Path, rel: &[String], class_names: &[String], opts: &FolderOptions) -> Result<Split> {
    let labels: Vec<usize> = rel
        .iter()
        .map(|r| {
            let class = r.split('/').next().unwrap_or_default();
            class_names
                .binary_search_by(|n| n.as_str().cmp(class))
                .map_err(|_| StreamError::format(root.join(r), format!("listed image is not under a class folder of {}", root.display())))
        })
        .collect::<Result<_>>()?;
    let decoded: Vec<Result<Option<Image>>> = rel
        .par_iter()
        .map(|r| {
            let path = root.join(r);
            match decode(&path, opts.cache_short_side) {
                Ok(img) => Ok(Some(img)),
                Err(e) if opts.on_corrupt == OnCorrupt::Skip => {
                    tracing::warn!("skipping {e}");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .collect();
    let mut split = Split::default();
    for ((img, label), r) in decoded.into_iter().zip(labels).zip(rel) {
        if let Some(img) = img? {
            split.images.push(img);
            split.labels.push(label);
            split.paths.push(root.join(r));
        }
    }
    Ok(split)
}

/// Decodes one JPEG/PNG to RGB, shrinking its shorter side to `short_side`.
pub fn decode(path: &Path, short_side: Option<usize>) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| StreamError::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| StreamError::Image { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if let Some(s) = short_side {
        let short = w.min(h);
        if short > s {
            let (nw, nh) = ((w * s).div_ceil(short), (h * s).div_ceil(short));
            rgb = image::imageops::resize(&rgb, nw as u32, nh as u32, image::imageops::FilterType::Triangle);
        }
    }
    Ok(Image::from_hwc(rgb.height() as usize, rgb.width() as usize, rgb.as_raw()))
}
