//! CIFAR-100 in both official formats.
//!
//! - python (`cifar-100-python/{train,test,meta}`): pickled dicts with `data`
//!   (N×3072 uint8, channel-planar 32×32), `fine_labels`, `coarse_labels`;
//!   `meta` has `fine_label_names` and `coarse_label_names`.
//! - binary (`cifar-100-binary/{train,test}.bin`): records of
//!   `[coarse, fine, 3072 pixels]`; names in `{fine,coarse}_label_names.txt`.

use std::path::Path;

use crate::dataset::{Dataset, Image, Split};
use crate::error::{Result, StreamError};
use crate::hierarchy::LabelTree;
use crate::pickle::{self, Value};

pub const NUM_CLASSES: usize = 100;
pub const NUM_SUPERCLASSES: usize = 20;
const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 2 + PIXELS;

/// Loads CIFAR-100 from `root`, which may be the extracted
/// `cifar-100-python/` or `cifar-100-binary/` folder, or a folder holding one of them.
pub fn load(root: &Path) -> Result<Dataset> {
    for dir in [root.to_path_buf(), root.join("cifar-100-python"), root.join("cifar-100-binary")] {
        if dir.join("meta").is_file() && dir.join("train").is_file() {
            return load_python(&dir);
        }
        if dir.join("train.bin").is_file() {
            return load_binary(&dir);
        }
    }
    Err(StreamError::format(
        root,
        "no CIFAR-100 found: expected `meta` + `train` + `test` (python format) or `train.bin` + `test.bin` \
         (binary format) here or in cifar-100-python/ or cifar-100-binary/ (data-scripts/download_cifar100.sh fetches it)",
    ))
}

struct Part {
    split: Split,
    coarse: Vec<usize>,
}

pub fn load_python(dir: &Path) -> Result<Dataset> {
    let meta_path = dir.join("meta");
    let meta = read_pickle(&meta_path)?;
    let fine_names = names(&meta, "fine_label_names", NUM_CLASSES, &meta_path)?;
    let coarse_names = names(&meta, "coarse_label_names", NUM_SUPERCLASSES, &meta_path)?;
    let train = python_part(&dir.join("train"))?;
    let test = python_part(&dir.join("test"))?;
    finish(fine_names, coarse_names, train, test, dir)
}

pub fn load_binary(dir: &Path) -> Result<Dataset> {
    let train = binary_part(&dir.join("train.bin"))?;
    let test = binary_part(&dir.join("test.bin"))?;
    let fine_names = text_names(&dir.join("fine_label_names.txt"), NUM_CLASSES)?;
    let coarse_names = text_names(&dir.join("coarse_label_names.txt"), NUM_SUPERCLASSES)?;
    finish(fine_names, coarse_names, train, test, dir)
}

fn finish(fine_names: Vec<String>, coarse_names: Vec<String>, train: Part, test: Part, dir: &Path) -> Result<Dataset> {
    // The superclass of each class, read from the data and checked to be consistent.
    let mut parent = vec![usize::MAX; NUM_CLASSES];
    for part in [&train, &test] {
        for (&f, &c) in part.split.labels.iter().zip(&part.coarse) {
            if parent[f] != usize::MAX && parent[f] != c {
                return Err(StreamError::format(dir, format!("class {f} appears under superclasses {} and {c}", parent[f])));
            }
            parent[f] = c;
        }
    }
    if let Some(missing) = parent.iter().position(|&p| p == usize::MAX) {
        return Err(StreamError::format(dir, format!("class {missing} has no samples")));
    }
    let hierarchy = LabelTree::from_parents(&parent, coarse_names).map_err(|e| StreamError::format(dir, e))?;
    Ok(Dataset {
        name: "cifar100".into(),
        class_names: fine_names,
        train: train.split,
        test: test.split,
        hierarchy: Some(hierarchy),
        plan: None,
        token_vocab: None,
    })
}

fn read_pickle(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| StreamError::io(path, e))?;
    pickle::parse(&bytes).map_err(|e| StreamError::format(path, format!("not a readable pickle: {e}")))
}

fn names(meta: &Value, key: &str, n: usize, path: &Path) -> Result<Vec<String>> {
    let list = meta.get(key).and_then(Value::as_seq).ok_or_else(|| StreamError::format(path, format!("no `{key}` list")))?;
    let names: Option<Vec<String>> = list.iter().map(Value::as_str).collect();
    match names {
        Some(names) if names.len() == n => Ok(names),
        Some(names) => Err(StreamError::format(path, format!("`{key}` has {} names, expected {n}", names.len()))),
        None => Err(StreamError::format(path, format!("`{key}` holds non-strings"))),
    }
}

fn labels(d: &Value, key: &str, n: usize, max: usize, path: &Path) -> Result<Vec<usize>> {
    let list = d.get(key).and_then(Value::as_seq).ok_or_else(|| StreamError::format(path, format!("no `{key}` list")))?;
    if list.len() != n {
        return Err(StreamError::format(path, format!("`{key}` has {} entries but `data` has {n} rows", list.len())));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_int() {
            Some(l) if (0..max as i64).contains(&l) => Ok(l as usize),
            _ => Err(StreamError::format(path, format!("`{key}`[{i}] = {v:?} is not a label in 0..{max}"))),
        })
        .collect()
}

fn python_part(path: &Path) -> Result<Part> {
    let d = read_pickle(path)?;
    let (dtype, shape, data) = d.get("data").and_then(Value::as_ndarray).ok_or_else(|| StreamError::format(path, "no `data` numpy array"))?;
    if !matches!(dtype.as_str(), "u1" | "|u1") || shape.len() != 2 || shape[1] != PIXELS {
        return Err(StreamError::format(path, format!("`data` is {dtype} {shape:?}, expected uint8 [N, {PIXELS}]")));
    }
    let n = shape[0];
    if data.len() != n * PIXELS {
        return Err(StreamError::format(path, format!("`data` holds {} bytes, expected {}", data.len(), n * PIXELS)));
    }
    let fine = labels(&d, "fine_labels", n, NUM_CLASSES, path)?;
    let coarse = labels(&d, "coarse_labels", n, NUM_SUPERCLASSES, path)?;
    let images = data.chunks_exact(PIXELS).map(|c| Image::from_chw(32, 32, c.to_vec())).collect();
    Ok(Part { split: Split { images, texts: Vec::new(), labels: fine, paths: Vec::new() }, coarse })
}

fn binary_part(path: &Path) -> Result<Part> {
    let bytes = std::fs::read(path).map_err(|e| StreamError::io(path, e))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(StreamError::format(
            path,
            format!("size {} is not a positive multiple of the {RECORD}-byte record (truncated or not CIFAR-100 binary)", bytes.len()),
        ));
    }
    let n = bytes.len() / RECORD;
    let (mut images, mut fine, mut coarse) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let (c, f) = (rec[0] as usize, rec[1] as usize);
        if c >= NUM_SUPERCLASSES || f >= NUM_CLASSES {
            return Err(StreamError::format(path, format!("record {i}: labels coarse={c} fine={f} out of range")));
        }
        coarse.push(c);
        fine.push(f);
        images.push(Image::from_chw(32, 32, rec[2..].to_vec()));
    }
    Ok(Part { split: Split { images, texts: Vec::new(), labels: fine, paths: Vec::new() }, coarse })
}

fn text_names(path: &Path, n: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != n {
        return Err(StreamError::format(path, format!("{} names, expected {n}", names.len())));
    }
    Ok(names)
}
