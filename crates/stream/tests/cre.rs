//! Relation-extraction streams: the CFRL and FewRel-JSON formats (fixtures from
//! data-scripts/gen_cre_fixtures.py), marker tokenization, the protocols' task
//! plans, errors that name the file; and the real FewRel CFRL data in
//! ../shared/data when it is present.

use std::path::{Path, PathBuf};

use promptcl_stream::cre::{full_split, load_cfrl, load_full, load_pooled_cfrl, pooled_cfrl_split, read_cfrl, Examples, PooledSplit};
use promptcl_stream::text::{unpack, MARKERS};
use promptcl_stream::{
    DatasetConfig, FullDataProtocol, Loader, LoaderOptions, RelationExample, RelationTokenizer, TaskPlan, TaskStream, TransformConfig,
};
use tch::Device;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cre")
}

fn tokenizer(max_length: usize) -> RelationTokenizer {
    RelationTokenizer::from_file(&fixtures().join("tokenizer.json"), max_length).unwrap()
}

#[test]
fn cfrl_fixture_loads_with_markers_and_its_task_plan() {
    let tok = tokenizer(64);
    let ds = load_cfrl(&fixtures().join("cfrl"), 2, None, &tok).unwrap();
    assert_eq!(ds.num_classes(), 6);
    assert_eq!(ds.class_names[0], "place of birth");
    assert!(ds.is_text() && ds.train.images.is_empty());
    let count = |split: &promptcl_stream::Split, c: usize| split.labels.iter().filter(|&&l| l == c).count();
    // rel_index [4,1,6,2,5,3] with clusters [0,2,1,0,1,2]: cluster 2 = relations 1 and 3 (1-based) → 0 and 2.
    let tasks = ds.plan.as_ref().unwrap().tasks(6, 3, 2021).unwrap();
    assert_eq!(tasks[0], [0, 2], "the many-shot cluster comes first");
    for c in 0..6 {
        assert_eq!(count(&ds.train, c), if tasks[0].contains(&c) { 8 } else { 2 });
        assert_eq!(count(&ds.test, c), 4);
    }
    let [e11, _, e21, _] = tok.marker_ids();
    for e in &ds.train.texts {
        assert_eq!((e.ids[e.head], e.ids[e.tail]), (e11, e21));
        assert!(e.ids.len() <= 64);
    }
    let stream = TaskStream::from_tasks(6, tasks).unwrap();
    assert_eq!(stream.num_tasks(), 3);
    // Text batches travel packed through the loader.
    let opts = LoaderOptions { batch_size: 5, shuffle: true, augment: true, drop_last: false, seed: 3 };
    let idx = stream.indices(&ds.train, 0);
    let batches: Vec<_> = Loader::new(&ds.train, idx.clone(), opts, 0, &TransformConfig::default(), Device::Cpu).map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.labels.len()).sum::<usize>(), idx.len());
    let b = unpack(&batches[0].inputs).unwrap();
    let first = &ds.train.texts[batches[0].indices[0]];
    assert_eq!(b.head.int64_value(&[0]) as usize, first.head);
    assert_eq!(b.mask.get(0).sum(tch::Kind::Int64).int64_value(&[]) as usize, first.ids.len());
    let again: Vec<_> = Loader::new(&ds.train, idx, opts, 0, &TransformConfig::default(), Device::Cpu).map(Result::unwrap).collect();
    assert_eq!(again[0].indices, batches[0].indices, "deterministic order per seed and epoch");
}

#[test]
fn tokenizer_keeps_both_markers_when_truncating() {
    let words: Vec<String> = (0..40).map(|i| if i % 2 == 0 { "today".into() } else { "reports".into() }).collect();
    let ex = RelationExample { words, head: (30, 31), tail: (36, 36) };
    let tok = tokenizer(16);
    let e = tok.encode(&ex).unwrap().unwrap();
    assert_eq!(e.ids.len(), 16);
    let [e11, _, e21, _] = tok.marker_ids();
    assert_eq!((e.ids[e.head], e.ids[e.tail]), (e11, e21));
    let far = RelationExample { head: (0, 0), tail: (39, 39), ..ex };
    assert!(tok.encode(&far).unwrap().is_none(), "markers 40 words apart cannot share 16 tokens");
    assert!(tok.vocab_size() > e11 as usize && MARKERS.len() == 4);
}

#[test]
fn relation_json_splits_per_seed_by_protocol() {
    let tok = tokenizer(64);
    let path = fixtures().join("fewrel.json");
    let a = load_full(&path, FullDataProtocol::Tacred, 2021, &tok).unwrap();
    assert_eq!(a.num_classes(), 4);
    assert_eq!(a.class_names[0], "P100", "relations in file order");
    assert_eq!(a.test.len(), 4 * (12 / 5));
    assert_eq!(a.train.len(), 4 * 12 - a.test.len());
    let b = load_full(&path, FullDataProtocol::Tacred, 2121, &tok).unwrap();
    assert_ne!(a.test.texts, b.test.texts, "another seed, another split");
    let e = load_full(&path, FullDataProtocol::Fewrel, 2021, &tok).unwrap_err().to_string();
    assert!(e.contains("fewrel.json") && e.contains("relation `P100` has 12 examples") && e.contains("420 / 140 / 140"), "{e}");
    assert_eq!(a.plan, Some(TaskPlan::Shuffled));
}

#[test]
fn bad_files_name_the_file_and_line() {
    let bad = fixtures().join("bad");
    for (file, needle) in [("eight_fields.txt", "8 tab-separated fields"), ("span_outside.txt", "outside"), ("label_range.txt", "outside 1..=6")] {
        let e = read_cfrl(&bad.join(file), 6).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains("line 1") && e.contains(needle), "{e}");
    }
    let e = RelationTokenizer::from_file(&bad.join("nope.json"), 64).unwrap_err().to_string();
    assert!(e.contains("nope.json"), "{e}");
    let e = load_cfrl(&fixtures().join("cfrl"), 7, None, &tokenizer(64)).unwrap_err().to_string();
    assert!(e.contains("7 shots"), "{e}");
}

fn shared_cfrl() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cfrl-fewrel");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent (real FewRel CFRL data)", p.display());
        None
    }
}

/// The real FewRel CFRL 5-shot files, tokenized by promptcl exactly as
/// transformers' BertTokenizer does in the CRE samplers (all-MiniLM-L6-v2 vocabulary).
#[test]
fn real_fewrel_cfrl_matches_the_protocol_and_reference_tokenization() {
    let Some(root) = shared_cfrl() else { return };
    let Ok(python) = std::env::var("PROMPTCL_PYTHON") else {
        eprintln!("skipped: PROMPTCL_PYTHON not set (run through `make test`)");
        return;
    };
    let train = root.join("CFRLdata_10_100_10_5/train_0.txt");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data-scripts/cre_tokenize_reference.py");
    let out = std::process::Command::new(python).arg(&script).arg(&train).arg("200").output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("ModuleNotFoundError") {
            eprintln!("skipped: {}", err.lines().last().unwrap_or("a module is missing"));
            return;
        }
        panic!("reference script failed:\n{err}");
    }
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tok = RelationTokenizer::from_file(Path::new(reference["model_dir"].as_str().unwrap()), 512).unwrap();
    let examples = read_cfrl(&train, 80).unwrap();
    for ((_, ex), want) in examples.iter().zip(reference["ids"].as_array().unwrap()) {
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(ex).unwrap().unwrap().ids, want, "{:?}", ex.words);
    }

    let ds = load_cfrl(&root, 5, None, &tok).unwrap();
    assert_eq!((ds.num_classes(), ds.train.len(), ds.test.len()), (80, 1350, 8000));
    for seed in [2021, 2121, 2221, 2321, 2421] {
        let tasks = ds.plan.as_ref().unwrap().tasks(80, 8, seed).unwrap();
        assert!(tasks.iter().all(|t| t.len() == 10));
        let first_counts: Vec<usize> = tasks[0].iter().map(|&c| ds.train.labels.iter().filter(|&&l| l == c).count()).collect();
        assert!(first_counts.iter().all(|&n| n == 100), "first task = the 100-shot relations");
        TaskStream::from_tasks(80, tasks).unwrap();
    }
}

/// FewRel 1.0's real `val_wiki.json` (16 relations × 700) through the
/// full-data protocol: 420 train / 140 test per relation, split per seed.
#[test]
fn real_fewrel_json_splits_420_140_140() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fewrel-wiki/val_wiki.json");
    if !path.is_file() {
        eprintln!("skipped: {} is absent (real FewRel JSON)", path.display());
        return;
    }
    let ds = load_full(&path, FullDataProtocol::Fewrel, 2021, &tokenizer(512)).unwrap();
    assert_eq!(ds.num_classes(), 16);
    assert_eq!((ds.train.len(), ds.test.len()), (16 * 420, 16 * 140));
    let tasks = ds.plan.as_ref().unwrap().tasks(16, 4, 2021).unwrap();
    assert_eq!(tasks.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 4]);
    let other = load_full(&path, FullDataProtocol::Fewrel, 2121, &tokenizer(512)).unwrap();
    assert_ne!(ds.test.texts, other.test.texts);
}

/// No test sentence with its entity spans is also a training one.
fn disjoint(train: &Examples, test: &Examples) {
    let seen: std::collections::HashSet<&RelationExample> = train.iter().map(|(_, e)| e).collect();
    let shared = test.iter().filter(|(_, e)| seen.contains(e)).count();
    assert_eq!(shared, 0, "{shared} test instances also in train");
}

/// Two CFRL shot folders that overlap (the 5-shot train file repeats the
/// 2-shot one) and disagree once (a `member of` test line filed as `spouse`).
fn pooled_fixture(extra: &str) -> PathBuf {
    let src = fixtures().join("cfrl");
    let root = std::env::temp_dir().join(format!("promptcl-pooled-{}-{extra}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let two = root.join("CFRLdata_10_100_10_2");
    let five = root.join("CFRLdata_10_100_10_5");
    std::fs::create_dir_all(&two).unwrap();
    std::fs::create_dir_all(&five).unwrap();
    std::fs::copy(src.join("relation_name.txt"), root.join("relation_name.txt")).unwrap();
    for f in ["train_0.txt", "test_0.txt"] {
        std::fs::copy(src.join("CFRLdata_10_100_10_2").join(f), two.join(f)).unwrap();
    }
    let test = std::fs::read_to_string(two.join("test_0.txt")).unwrap();
    let member = test.lines().find(|l| l.starts_with("2\t")).unwrap();
    let relabelled = format!("4{}", &member[1..]);
    std::fs::copy(two.join("train_0.txt"), five.join("train_0.txt")).unwrap();
    std::fs::write(five.join("test_0.txt"), format!("{relabelled}\n{extra}")).unwrap();
    root
}

#[test]
fn fewrel_80_pools_deduplicates_and_splits_per_seed() {
    let tok = tokenizer(64);
    let root = pooled_fixture("");
    let split = PooledSplit { train_per_relation: 3, test_per_relation: 2 };
    let ds = load_pooled_cfrl(&root, split, 2021, &tok).unwrap();
    assert_eq!((ds.num_classes(), ds.train.len(), ds.test.len()), (6, 18, 12));
    for c in 0..6 {
        assert_eq!(ds.train.labels.iter().filter(|&&l| l == c).count(), 3);
        assert_eq!(ds.test.labels.iter().filter(|&&l| l == c).count(), 2);
    }
    let (_, train, test) = pooled_cfrl_split(&root, split, 2021).unwrap();
    disjoint(&train, &test);
    assert_eq!(ds.plan, Some(TaskPlan::Shuffled));
    let again = load_pooled_cfrl(&root, split, 2021, &tok).unwrap();
    assert_eq!((again.train.texts.clone(), again.test.texts.clone()), (ds.train.texts.clone(), ds.test.texts.clone()), "same seed, same split");
    let other = load_pooled_cfrl(&root, split, 2121, &tok).unwrap();
    assert_ne!(other.test.texts, ds.test.texts, "another seed, another split");
    // `member of` has 2 + 4 instances, one of them also filed as `spouse`: 5 remain, and `spouse` keeps its 6.
    let e = load_pooled_cfrl(&root, PooledSplit { train_per_relation: 3, test_per_relation: 3 }, 2021, &tok).unwrap_err().to_string();
    assert!(e.contains("relation 2 (`member of`) has 5 distinct instances") && e.contains("= 6"), "{e}");
    load_pooled_cfrl(&root, PooledSplit { train_per_relation: 2, test_per_relation: 3 }, 2021, &tok).unwrap();
    let e = load_pooled_cfrl(&root, PooledSplit { train_per_relation: 0, test_per_relation: 3 }, 2021, &tok).unwrap_err().to_string();
    assert!(e.contains("train_per_relation = 0"), "{e}");
    std::fs::remove_dir_all(&root).ok();

    let bad = pooled_fixture("9\tnot a cfrl line");
    let e = load_pooled_cfrl(&bad, split, 2021, &tok).unwrap_err().to_string();
    assert!(e.contains("CFRLdata_10_100_10_5/test_0.txt") && e.contains("line 2") && e.contains("2 tab-separated fields"), "{e}");
    std::fs::remove_dir_all(&bad).ok();
}

/// The real CFRL release pooled into `fewrel-80`: 80 × (100 + 33), no input in
/// both splits, per-seed determinism; a request beyond the smallest relation
/// names it.
#[test]
fn real_fewrel_80_is_a_reduced_full_data_split() {
    let Some(root) = shared_cfrl() else { return };
    let config = |train: usize, test: usize| -> DatasetConfig {
        serde_json::from_value(serde_json::json!({
            "kind": "fewrel-80", "root": root, "train_per_relation": train, "test_per_relation": test,
            "tokenizer": fixtures().join("tokenizer.json"), "max_length": 512,
        }))
        .unwrap()
    };
    let ds = config(100, 33).load_for_seed(2021).unwrap();
    assert_eq!((ds.name.as_str(), ds.num_classes(), ds.train.len(), ds.test.len()), ("fewrel-80", 80, 8000, 2640));
    let (_, train, test) = pooled_cfrl_split(&root, PooledSplit { train_per_relation: 100, test_per_relation: 33 }, 2021).unwrap();
    disjoint(&train, &test);
    let tasks = ds.plan.as_ref().unwrap().tasks(80, 10, 2021).unwrap();
    assert!(tasks.iter().all(|t| t.len() == 8));
    let again = config(100, 33).load_for_seed(2021).unwrap();
    assert_eq!(again.test.texts, ds.test.texts);
    let other = config(100, 33).load_for_seed(2121).unwrap();
    assert_ne!(other.test.texts, ds.test.texts);
    let e = config(100, 37).load_for_seed(2021).unwrap_err().to_string();
    assert!(e.contains("distinct instances in the CFRL files, fewer than train_per_relation + test_per_relation = 137"), "{e}");
}

/// `fewrel-16-full` on the real `val_wiki.json`: 420 / 140 of each 700, no
/// input in both splits, per seed.
#[test]
fn real_fewrel_16_full_stream_kind() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fewrel-wiki");
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent (real FewRel JSON)", dir.display());
        return;
    }
    let config: DatasetConfig = serde_json::from_value(serde_json::json!({
        "kind": "fewrel-16-full", "root": dir, "tokenizer": fixtures().join("tokenizer.json"), "max_length": 512,
    }))
    .unwrap();
    let ds = config.load_for_seed(2021).unwrap();
    assert_eq!((ds.name.as_str(), ds.num_classes(), ds.train.len(), ds.test.len()), ("fewrel-16-full", 16, 16 * 420, 16 * 140));
    let (_, train, test) = full_split(&dir.join("val_wiki.json"), FullDataProtocol::Fewrel, 2021).unwrap();
    disjoint(&train, &test);
    assert_eq!(config.load_for_seed(2021).unwrap().test.texts, ds.test.texts);
    assert_ne!(config.load_for_seed(2221).unwrap().test.texts, ds.test.texts);
    assert_eq!(ds.plan.as_ref().unwrap().tasks(16, 4, 2021).unwrap().len(), 4);
}
