//! Continual relation extraction data: the two protocols of the literature,
//! read from their published files, with the task orders and splits their
//! samplers draw for each seed (reproduced with [`PyRandom`]).
//!
//! - **Few-shot (CFRL)**: `CFRLdata_10_100_10_K/{train_0,test_0}.txt`, one
//!   example per line, 9 tab-separated fields (1-based relation, 10 candidate
//!   labels, tokenized sentence, head entity, its word positions, tail entity,
//!   its word positions, two Wikidata ids); `rel_cluster_label_0.npy` and
//!   `../rel_index.npy` group the relations into 8 tasks. The first task is
//!   always the many-shot cluster; the other seven follow in the order
//!   `argsort(shuffle(range(7)))` after `random.seed(seed)` (the CFRL / CPL
//!   samplers, seeds 2021, 2121, …, 2421).
//! - **Full data (RP-CRE / CRL)**: a FewRel-style JSON object
//!   `{relation: [{tokens, h: [name, id, [[positions]]], t: …}]}`. Per
//!   relation the samples are shuffled after `random.seed(seed)`; FewRel keeps
//!   420 train / 140 valid / 140 test, TACRED the first `len // 5` (at most 41)
//!   for test and up to 320 for training. Relations arrive in the order
//!   `argsort(shuffle(range(R)))` cut into equal tasks.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Split};
use crate::error::{Result, StreamError};
use crate::pyrandom::{argsort_shuffle, PyRandom};
use crate::text::{EncodedText, RelationExample, RelationTokenizer};

/// How a dataset's classes are grouped into tasks when the protocol fixes it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskPlan {
    /// CFRL: `clusters[last]` first, then the others in a seeded shuffled order.
    Clusters(Vec<Vec<usize>>),
    /// RP-CRE / CRL: classes in `argsort(shuffle(range(R)))` order, equal chunks.
    Shuffled,
}

impl TaskPlan {
    /// The classes of each task for `seed`.
    pub fn tasks(&self, num_classes: usize, num_tasks: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
        match self {
            Self::Clusters(clusters) => {
                if clusters.len() != num_tasks {
                    return Err(StreamError::Config(format!("the protocol defines {} tasks, stream.num_tasks = {num_tasks}", clusters.len())));
                }
                let n = clusters.len() - 1;
                let order = argsort_shuffle(seed, n);
                Ok(std::iter::once(clusters[n].clone()).chain(order.iter().map(|&c| clusters[c].clone())).collect())
            }
            Self::Shuffled => {
                if num_tasks == 0 || !num_classes.is_multiple_of(num_tasks) {
                    return Err(StreamError::Config(format!("{num_classes} relations do not divide into {num_tasks} tasks")));
                }
                let order = argsort_shuffle(seed, num_classes);
                Ok(order.chunks(num_classes / num_tasks).map(<[usize]>::to_vec).collect())
            }
        }
    }
}

/// Which full-data split rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullDataProtocol {
    /// 420 / 140 / 140 per relation (the validation part is not used).
    Fewrel,
    /// Test: the first `len // 5` shuffled samples (at most 41); train: the rest, at most 320.
    Tacred,
}

/// Reads a CFRL text file into (0-based relation, example) pairs.
pub fn read_cfrl(path: &Path, num_relations: usize) -> Result<Vec<(usize, RelationExample)>> {
    Ok(read_cfrl_lines(path, num_relations)?.into_iter().map(|l| (l.label, l.example)).collect())
}

/// One CFRL line: the relation (0-based), the example and the Wikidata ids of
/// its head and tail, which with the sentence identify an instance across files.
struct CfrlLine {
    label: usize,
    example: RelationExample,
    entity_ids: [String; 2],
}

fn read_cfrl_lines(path: &Path, num_relations: usize) -> Result<Vec<CfrlLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("line {}", n + 1);
        let bad = |reason: String| StreamError::format(path, format!("{}: {reason}", at()));
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 9 {
            return Err(bad(format!("{} tab-separated fields, the CFRL format has 9", f.len())));
        }
        let label: usize = f[0].trim().parse().map_err(|_| bad(format!("relation label `{}` is not a number", f[0])))?;
        if label == 0 || label > num_relations {
            return Err(bad(format!("relation label {label} outside 1..={num_relations}")));
        }
        let span = |field: &str, what: &str| -> Result<(usize, usize)> {
            let pos: Vec<usize> = field
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad(format!("{what} positions `{field}` are not numbers")))?;
            match (pos.first(), pos.last()) {
                (Some(&a), Some(&b)) => Ok((a, b)),
                _ => Err(bad(format!("{what} entity has no positions"))),
            }
        };
        let ex = RelationExample { words: f[2].split_whitespace().map(String::from).collect(), head: span(f[4], "head")?, tail: span(f[6], "tail")? };
        ex.validate(&at).map_err(|e| StreamError::format(path, e))?;
        out.push(CfrlLine { label: label - 1, example: ex, entity_ids: [f[7].trim().to_string(), f[8].trim().to_string()] });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct JsonSample {
    tokens: Vec<String>,
    h: (serde_json::Value, serde_json::Value, Vec<Vec<usize>>),
    t: (serde_json::Value, serde_json::Value, Vec<Vec<usize>>),
}

/// Reads a FewRel-style JSON file: relation → examples, in file order.
pub fn read_relation_json(path: &Path) -> Result<Vec<(String, Vec<RelationExample>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
    let data: IndexMap<String, Vec<JsonSample>> =
        serde_json::from_str(&text).map_err(|e| StreamError::format(path, format!("expected {{relation: [{{tokens, h, t}}]}}: {e}")))?;
    data.into_iter()
        .map(|(rel, samples)| {
            let examples = samples
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let at = || format!("relation {rel}, example {i}");
                    let span = |p: &[Vec<usize>], what: &str| match p.first().and_then(|m| Some((*m.first()?, *m.last()?))) {
                        Some(s) => Ok(s),
                        None => Err(StreamError::format(path, format!("{}: {what} entity has no positions", at()))),
                    };
                    let ex = RelationExample { head: span(&s.h.2, "head")?, tail: span(&s.t.2, "tail")?, words: s.tokens };
                    ex.validate(&at).map_err(|e| StreamError::format(path, e))?;
                    Ok(ex)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((rel, examples))
        })
        .collect()
}

/// Reads a 1-D integer `.npy` array (the CFRL files hold `<i8`; `<i4` is
/// accepted as well, as numpy writes it on some platforms).
pub fn read_npy_ints(path: &Path) -> Result<Vec<i64>> {
    use ndarray::Array1;
    use ndarray_npy::{ReadNpyError, ReadNpyExt};
    let open = || std::fs::File::open(path).map_err(|e| StreamError::io(path, e));
    let bad = |e: ReadNpyError| StreamError::format(path, format!("not a 1-D integer .npy array: {e}"));
    match Array1::<i64>::read_npy(open()?) {
        Ok(a) => Ok(a.to_vec()),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(Array1::<i32>::read_npy(open()?).map_err(bad)?.iter().map(|&v| i64::from(v)).collect()),
        Err(e) => Err(bad(e)),
    }
}

fn tokenize_split(tok: &RelationTokenizer, samples: Vec<(usize, RelationExample)>, what: &Path) -> Result<Split> {
    let encoded: Vec<(usize, Option<EncodedText>)> = samples.par_iter().map(|(l, ex)| Ok((*l, tok.encode(ex)?))).collect::<Result<_>>()?;
    let dropped = encoded.iter().filter(|(_, e)| e.is_none()).count();
    if dropped > 0 {
        tracing::warn!("{}: {dropped} examples dropped: their entities lie more than max_length = {} tokens apart", what.display(), tok.max_length);
    }
    let (labels, texts) = encoded.into_iter().filter_map(|(l, e)| Some((l, e?))).unzip();
    Ok(Split { images: Vec::new(), texts, labels, paths: Vec::new() })
}

/// Loads a CFRL few-shot stream: `root/relation_name.txt`, `root/rel_index.npy`
/// and `root/CFRLdata_10_100_10_<shots>/`.
pub fn load_cfrl(root: &Path, shots: usize, test_per_relation: Option<usize>, tok: &RelationTokenizer) -> Result<Dataset> {
    let names = relation_names(root)?;
    let dir = cfrl_dir(root, shots)?;
    let index_path = root.join("rel_index.npy");
    let index = read_npy_ints(&index_path)?;
    let cluster_path = dir.join("rel_cluster_label_0.npy");
    let cluster = read_npy_ints(&cluster_path)?;
    if index.len() != names.len() || cluster.len() != names.len() {
        return Err(StreamError::format(
            &cluster_path,
            format!("{} cluster labels and {} relation indices for {} relation names", cluster.len(), index.len(), names.len()),
        ));
    }
    let num_clusters = cluster.iter().copied().max().unwrap_or(-1) + 1;
    let mut clusters = vec![Vec::new(); num_clusters.max(0) as usize];
    let mut seen = vec![false; names.len()];
    for (&r, &c) in index.iter().zip(&cluster) {
        let r = r - 1;
        if c < 0 || r < 0 || r as usize >= names.len() || std::mem::replace(&mut seen[r as usize], true) {
            return Err(StreamError::format(&index_path, format!("relation index {} is out of range or repeated", r + 1)));
        }
        clusters[c as usize].push(r as usize);
    }
    let train_path = dir.join("train_0.txt");
    let test_path = dir.join("test_0.txt");
    let train = tokenize_split(tok, read_cfrl(&train_path, names.len())?, &train_path)?;
    let mut test = read_cfrl(&test_path, names.len())?;
    if let Some(n) = test_per_relation {
        let mut kept = vec![0usize; names.len()];
        test.retain(|(l, _)| {
            kept[*l] += 1;
            kept[*l] <= n
        });
    }
    let test = tokenize_split(tok, test, &test_path)?;
    Ok(Dataset {
        name: format!("fewrel-cfrl-{shots}shot"),
        class_names: names,
        train,
        test,
        hierarchy: None,
        plan: Some(TaskPlan::Clusters(clusters)),
        token_vocab: Some(tok.vocab_size()),
    })
}

/// `root/relation_name.txt`: one relation name per line.
fn relation_names(root: &Path) -> Result<Vec<String>> {
    let path = root.join("relation_name.txt");
    Ok(std::fs::read_to_string(&path)
        .map_err(|e| StreamError::io(&path, e))?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The `CFRLdata_*_<shots>` folders under `root`, by shot count.
fn cfrl_dirs(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| StreamError::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let shots = name.strip_prefix("CFRLdata_")?.rsplit('_').next()?.parse().ok()?;
            Some((shots, p))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Sizes of the `fewrel-80` split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PooledSplit {
    pub train_per_relation: usize,
    pub test_per_relation: usize,
}

/// `fewrel-80`: every relation of a CFRL release with a fixed number of train
/// and test instances each, drawn per seed from all its files pooled — a
/// reduced version of the full-data protocol (FewRel's 420 / 140 / 140 of 700)
/// on the 80 relations the CFRL files carry.
///
/// The files (`CFRLdata_*_<shots>/{train_0,test_0}.txt`, by shot count) overlap
/// and differ; an instance is its sentence with its head and tail Wikidata ids,
/// kept once, in order of first appearance. The few instances filed under two
/// relations are dropped: one input cannot have two labels, and keeping either
/// could put the same input in train and test. Per relation the instances are
/// shuffled after `random.seed(seed)` (as the full-data samplers do) and the
/// first `train_per_relation` train, the next `test_per_relation` test.
pub fn load_pooled_cfrl(root: &Path, split: PooledSplit, seed: u64, tok: &RelationTokenizer) -> Result<Dataset> {
    let (class_names, train, test) = pooled_cfrl_split(root, split, seed)?;
    shuffled_relations("fewrel-80".into(), class_names, (train, test), tok, root)
}

/// A relation dataset whose task order the stream draws per seed, tokenized.
fn shuffled_relations(
    name: String,
    class_names: Vec<String>,
    (train, test): (Examples, Examples),
    tok: &RelationTokenizer,
    source: &Path,
) -> Result<Dataset> {
    Ok(Dataset {
        name,
        class_names,
        train: tokenize_split(tok, train, source)?,
        test: tokenize_split(tok, test, source)?,
        hierarchy: None,
        plan: Some(TaskPlan::Shuffled),
        token_vocab: Some(tok.vocab_size()),
    })
}

/// Labelled examples of one split.
pub type Examples = Vec<(usize, RelationExample)>;

/// [`load_pooled_cfrl`]'s relation names, train and test examples, before tokenization.
pub fn pooled_cfrl_split(root: &Path, split: PooledSplit, seed: u64) -> Result<(Vec<String>, Examples, Examples)> {
    let PooledSplit { train_per_relation, test_per_relation } = split;
    if train_per_relation == 0 || test_per_relation == 0 {
        return Err(StreamError::Config(format!(
            "fewrel-80: train_per_relation = {train_per_relation} and test_per_relation = {test_per_relation} must both be at least 1"
        )));
    }
    let names = relation_names(root)?;
    let dirs = cfrl_dirs(root)?;
    if dirs.is_empty() {
        return Err(StreamError::format(root, "no CFRLdata_* folder"));
    }
    // (sentence, head id, tail id) → (relation, example); None once a second relation claims it.
    type Instance = (String, [String; 2]);
    let mut instances: IndexMap<Instance, Option<(usize, RelationExample)>> = IndexMap::new();
    for (_, dir) in &dirs {
        for file in ["train_0.txt", "test_0.txt"] {
            for line in read_cfrl_lines(&dir.join(file), names.len())? {
                let key = (line.example.words.join(" "), line.entity_ids);
                match instances.get_mut(&key) {
                    None => {
                        instances.insert(key, Some((line.label, line.example)));
                    }
                    Some(slot) => {
                        if slot.as_ref().is_some_and(|(l, _)| *l != line.label) {
                            *slot = None;
                        }
                    }
                }
            }
        }
    }
    let ambiguous = instances.values().filter(|v| v.is_none()).count();
    let mut per_relation: Vec<Vec<RelationExample>> = vec![Vec::new(); names.len()];
    for (label, ex) in instances.into_values().flatten() {
        per_relation[label].push(ex);
    }
    tracing::info!("{}: {ambiguous} instances filed under two relations dropped", root.display());
    let need = train_per_relation + test_per_relation;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, mut samples) in per_relation.into_iter().enumerate() {
        if samples.len() < need {
            return Err(StreamError::format(
                root,
                format!(
                    "relation {} (`{}`) has {} distinct instances in the CFRL files, fewer than train_per_relation + test_per_relation = {need}",
                    label + 1,
                    names[label],
                    samples.len()
                ),
            ));
        }
        PyRandom::new(seed).shuffle(&mut samples);
        for (i, ex) in samples.into_iter().take(need).enumerate() {
            if i < train_per_relation { &mut train } else { &mut test }.push((label, ex));
        }
    }
    Ok((names, train, test))
}

fn cfrl_dir(root: &Path, shots: usize) -> Result<PathBuf> {
    let found: Vec<PathBuf> = cfrl_dirs(root)?.into_iter().filter(|(s, _)| *s == shots).map(|(_, p)| p).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(StreamError::format(root, format!("no CFRLdata_*_{shots} folder for {shots} shots"))),
        _ => Err(StreamError::format(root, format!("several CFRLdata_*_{shots} folders: {found:?}"))),
    }
}

/// Loads a full-data CRE stream from a FewRel-style JSON file, split for `seed`.
pub fn load_full(path: &Path, protocol: FullDataProtocol, seed: u64, tok: &RelationTokenizer) -> Result<Dataset> {
    let (class_names, train, test) = full_split(path, protocol, seed)?;
    let name = path.file_stem().map_or_else(|| "relations".into(), |n| n.to_string_lossy().into_owned());
    shuffled_relations(name, class_names, (train, test), tok, path)
}

/// [`load_full`]'s relation names, train and test examples, before tokenization.
pub fn full_split(path: &Path, protocol: FullDataProtocol, seed: u64) -> Result<(Vec<String>, Examples, Examples)> {
    let relations = read_relation_json(path)?;
    let class_names: Vec<String> = relations.iter().map(|(r, _)| r.clone()).collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, (name, mut samples)) in relations.into_iter().enumerate() {
        if protocol == FullDataProtocol::Fewrel && samples.len() < 700 {
            return Err(StreamError::format(
                path,
                format!("relation `{name}` has {} examples; the FewRel protocol splits 700 per relation into 420 / 140 / 140", samples.len()),
            ));
        }
        PyRandom::new(seed).shuffle(&mut samples);
        match protocol {
            FullDataProtocol::Fewrel => {
                for (i, ex) in samples.into_iter().enumerate() {
                    if i < 420 {
                        train.push((label, ex));
                    } else if i >= 560 {
                        test.push((label, ex));
                    }
                }
            }
            FullDataProtocol::Tacred => {
                let (n, mut n_test, mut n_train) = (samples.len(), 0, 0);
                for (i, ex) in samples.into_iter().enumerate() {
                    if i < n / 5 && n_test <= 40 {
                        n_test += 1;
                        test.push((label, ex));
                    } else {
                        n_train += 1;
                        train.push((label, ex));
                        if n_train >= 320 {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok((class_names, train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` file laid out as numpy writes it: magic, header
    /// padded with spaces to a multiple of 64 bytes and ended by a newline, data.
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn npy_integers_read_in_both_widths_and_other_arrays_are_named_errors() {
        let dir = std::env::temp_dir().join(format!("promptcl-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let i8s: Vec<u8> = [7i64, -1, 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(read_npy_ints(&write("a.npy", npy("<i8", "(3,)", &i8s))).unwrap(), [7, -1, 40]);
        let i4s: Vec<u8> = [3i32, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(read_npy_ints(&write("b.npy", npy("<i4", "(2,)", &i4s))).unwrap(), [3, 0]);
        for (name, bytes) in [
            ("two-d.npy", npy("<i8", "(1, 3)", &i8s)),
            ("float.npy", npy("<f8", "(3,)", &i8s)),
            ("short.npy", npy("<i8", "(4,)", &i8s)),
            ("text.npy", b"relation ids".to_vec()),
        ] {
            let err = read_npy_ints(&write(name, bytes)).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("not a 1-D integer .npy array"), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cfrl_plan_puts_the_many_shot_cluster_first() {
        let clusters: Vec<Vec<usize>> = (0..8).map(|c| vec![2 * c, 2 * c + 1]).collect();
        let tasks = TaskPlan::Clusters(clusters).tasks(16, 8, 2021).unwrap();
        // random.seed(2021); shuffle(range(7)) = [1, 5, 0, 2, 4, 3, 6] → argsort [2, 0, 3, 5, 4, 1, 6].
        let firsts: Vec<usize> = tasks.iter().map(|t| t[0] / 2).collect();
        assert_eq!(firsts, [7, 2, 0, 3, 5, 4, 1, 6]);
        assert!(TaskPlan::Clusters(vec![vec![0]; 8]).tasks(8, 10, 1).is_err());
    }

    #[test]
    fn shuffled_plan_partitions_relations() {
        let tasks = TaskPlan::Shuffled.tasks(80, 10, 2021).unwrap();
        assert_eq!(tasks.len(), 10);
        let mut all: Vec<usize> = tasks.concat();
        all.sort();
        assert_eq!(all, (0..80).collect::<Vec<_>>());
        assert!(TaskPlan::Shuffled.tasks(80, 7, 2021).is_err());
    }
}
