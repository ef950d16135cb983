//! Relation-extraction streams: the CFRL and FewRel-JSON formats (fixtures from
//! data-scripts/gen_cre_fixtures.py), marker tokenization, the protocols' task
//! plans, errors that name the file; and the real FewRel CFRL data in
//! ../shared/data when it is present.

use std::path::{Path, PathBuf};

use promptcl_stream::cre::{load_cfrl, load_full, read_cfrl};
use promptcl_stream::text::{unpack, MARKERS};
use promptcl_stream::{FullDataProtocol, Loader, LoaderOptions, RelationExample, RelationTokenizer, TaskPlan, TaskStream, TransformConfig};
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
    let c = load_full(&path, FullDataProtocol::Fewrel, 2021, &tok).unwrap();
    assert_eq!((c.train.len(), c.test.len()), (48, 0), "420/140/140 keeps all of 12 for training");
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
