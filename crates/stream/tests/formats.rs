//! Every dataset format on fixtures written by data-scripts/gen_stream_fixtures.py.

use std::path::{Path, PathBuf};

use promptcl_stream::{
    load_cifar100, load_cifar100_binary, load_cifar100_python, load_image_folder, pickle, ClassOrder, DatasetConfig, FolderOptions, FolderSplit,
    LabelTree, OnCorrupt, SplitConfig, SplitFile, StreamError, TaskStream,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A private copy of a fixture folder (tests write split files and corrupt files).
fn copy_of(name: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("promptcl-stream-{}-{name}-{}", std::process::id(), rand_suffix()));
    copy_dir(&fixtures().join(name), &dst);
    dst
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn seeded(seed: u64) -> FolderOptions {
    FolderOptions { split: FolderSplit::Seeded { seed, train_fraction: 0.8 }, cache_short_side: Some(256), on_corrupt: OnCorrupt::Error }
}

#[test]
fn cifar_python_and_binary_formats_agree() {
    let py = load_cifar100_python(&fixtures().join("cifar-100-python")).unwrap();
    let bin = load_cifar100_binary(&fixtures().join("cifar-100-binary")).unwrap();
    assert_eq!((py.train.len(), py.test.len(), py.num_classes()), (200, 100, 100));
    assert_eq!(py.class_names[..3], ["apple", "aquarium_fish", "baby"]);
    assert_eq!(py.class_names, bin.class_names);
    assert_eq!(py.train.labels, bin.train.labels);
    assert_eq!(py.test.labels, bin.test.labels);
    for (a, b) in py.train.images.iter().zip(&bin.train.images) {
        assert_eq!((a.height, a.width), (32, 32));
        assert_eq!(a.data, b.data);
    }
    // The superclasses come from the data and match the built-in table.
    assert_eq!(py.hierarchy.as_ref().unwrap().parent, LabelTree::cifar100().parent);
    assert_eq!(py.hierarchy.as_ref().unwrap().group_names[18], "vehicles_1");
    // `load` finds either layout under a parent folder.
    assert_eq!(load_cifar100(&fixtures()).unwrap().train.len(), 200);
}

#[test]
fn cifar_names_match_the_shared_hierarchy_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar100-hierarchy/cifar100_hierarchy.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: {} not present", path.display());
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ds = load_cifar100_python(&fixtures().join("cifar-100-python")).unwrap();
    let names: Vec<String> = v["fine_label_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    assert_eq!(ds.class_names, names);
}

#[test]
fn python3_pickles_parse_too() {
    let bytes = std::fs::read(fixtures().join("py3_protocol5.pkl")).unwrap();
    let v = pickle::parse(&bytes).unwrap();
    let labels: Vec<i64> = v.get("labels").unwrap().as_seq().unwrap().iter().map(|x| x.as_int().unwrap()).collect();
    assert_eq!(labels, [1, 300, 70000, -5]);
    let (dtype, shape, data) = v.get("arr").unwrap().as_ndarray().unwrap();
    assert_eq!((dtype.as_str(), shape, &*data), ("u1", vec![2, 3], &[0u8, 1, 2, 3, 4, 5][..]));
    let nested = v.get("nested").unwrap();
    assert_eq!(nested.get("pi"), Some(&pickle::Value::Float(3.25)));
    assert_eq!(nested.get("flag"), Some(&pickle::Value::Bool(true)));
}

#[test]
fn truncated_and_wrong_shaped_pickles_name_the_file() {
    let dir = copy_of("cifar-100-python");
    let train = dir.join("train");
    let bytes = std::fs::read(&train).unwrap();
    std::fs::write(&train, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_cifar100_python(&dir).unwrap_err().to_string();
    assert!(e.contains(&train.display().to_string()) && e.contains("truncated"), "{e}");

    let e = load_cifar100_python(&fixtures().join("cifar-100-python-badshape")).unwrap_err().to_string();
    assert!(e.contains("badshape/train") && e.contains("[2, 1024]") && e.contains("3072"), "{e}");
}

#[test]
fn binary_of_wrong_size_is_rejected() {
    let dir = copy_of("cifar-100-binary");
    let f = dir.join("test.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_cifar100_binary(&dir).unwrap_err().to_string();
    assert!(e.contains("test.bin") && e.contains("3074"), "{e}");
    let e = load_cifar100(&dir.join("nowhere")).unwrap_err().to_string();
    assert!(e.contains("no CIFAR-100 found"), "{e}");
}

#[test]
fn image_folder_split_is_deterministic_and_round_trips() {
    let root = copy_of("imagenet-r-mini");
    let a = load_image_folder(&root, "inr", &seeded(7)).unwrap();
    assert_eq!(a.num_classes(), 4);
    assert_eq!((a.train.len(), a.test.len()), (16, 4), "per class 80/20 of 5 images");
    let split_path = root.join("promptcl-split-seed7.json");
    let file = SplitFile::read(&split_path).unwrap();
    assert_eq!(file.train.len(), 16);
    // No image in both sides, every image somewhere.
    let mut all: Vec<_> = file.train.iter().chain(&file.test).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20);
    // A second load reads the file and gives the same split.
    let b = load_image_folder(&root, "inr", &seeded(7)).unwrap();
    assert_eq!(a.train.paths, b.train.paths);
    // The split is a pure function of (sorted files, seed): another copy elsewhere agrees.
    let other = copy_of("imagenet-r-mini");
    let c = load_image_folder(&other, "inr", &seeded(7)).unwrap();
    let rel = |ds: &promptcl_stream::Dataset, r: &Path| -> Vec<String> {
        ds.test.paths.iter().map(|p| p.strip_prefix(r).unwrap().display().to_string()).collect()
    };
    assert_eq!(rel(&a, &root), rel(&c, &other));
    // Another seed, another split (over 4 classes × 5 choices, a collision is 1/625).
    let d = load_image_folder(&other, "inr", &seeded(8)).unwrap();
    assert_ne!(rel(&c, &other), rel(&d, &other));
    // Decoded images keep their aspect ratio and come as CHW.
    let img = &a.train.images[0];
    assert_eq!(img.data.len(), 3 * img.height * img.width);
}

/// CODA-Prompt's fixed ImageNet-R split, in its YAML layout, through
/// `data-scripts/coda_imr_split.py`: the lists load as promptcl's `lists`
/// split and the printed order puts CODA's class 0 first.
#[test]
fn coda_split_yaml_converts_to_lists_and_an_order() {
    let Ok(python) = std::env::var("PROMPTCL_PYTHON") else {
        eprintln!("skipped: PROMPTCL_PYTHON not set (run through `make test`)");
        return;
    };
    let root = copy_of("imagenet-r-mini");
    // CODA's labels are not the sorted folders': here n01498041 is its class 0.
    let coda = [("n01498041", 0), ("n01443537", 1), ("n01494475", 2), ("n01484850", 3)];
    let yaml = |files: &[usize]| {
        let mut data = String::from("data:\n");
        let mut targets = String::from("targets:\n");
        for (wnid, t) in coda {
            for &i in files {
                let ext = if std::path::Path::new(&format!("{}/{wnid}/{wnid}_{i}.jpg", root.display())).exists() { "jpg" } else { "png" };
                data.push_str(&format!("- data/imagenet-r/{wnid}/{wnid}_{i}.{ext}\n"));
                targets.push_str(&format!("- {t}\n"));
            }
        }
        data + &targets
    };
    std::fs::write(root.join("imagenet-r_train.yaml"), yaml(&[0, 1, 2])).unwrap();
    std::fs::write(root.join("imagenet-r_test.yaml"), yaml(&[3, 4])).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data-scripts/coda_imr_split.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(root.join("imagenet-r_train.yaml"))
        .arg(root.join("imagenet-r_test.yaml"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "order = [3, 0, 2, 1]", "promptcl labels in CODA's order");
    let opts = FolderOptions { split: FolderSplit::Lists { train: root.join("coda_train.txt"), test: root.join("coda_test.txt") }, ..seeded(0) };
    let ds = load_image_folder(&root, "inr", &opts).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (12, 8));
    assert_eq!(&ds.train.labels[..3], [3, 3, 3], "n01498041 is promptcl's class 3 (sorted folders)");
}

#[test]
fn explicit_lists_and_split_files_are_honoured() {
    let root = copy_of("imagenet-r-mini");
    std::fs::write(root.join("train.txt"), "n01443537/n01443537_0.jpg 0\n./n01484850/n01484850_1.png 1\n# comment\n\n").unwrap();
    std::fs::write(root.join("test.txt"), "n01498041/n01498041_4.jpg\n").unwrap();
    let opts = FolderOptions { split: FolderSplit::Lists { train: root.join("train.txt"), test: root.join("test.txt") }, ..seeded(0) };
    let ds = load_image_folder(&root, "inr", &opts).unwrap();
    assert_eq!(ds.train.labels, [0, 1]);
    assert_eq!(ds.test.labels, [3]);
    std::fs::write(root.join("bad.txt"), "not_a_class/x.jpg\n").unwrap();
    let opts = FolderOptions { split: FolderSplit::Lists { train: root.join("bad.txt"), test: root.join("test.txt") }, ..seeded(0) };
    let e = load_image_folder(&root, "inr", &opts).unwrap_err().to_string();
    assert!(e.contains("not_a_class/x.jpg"), "{e}");
}

#[test]
fn empty_class_folder_and_corrupt_images_are_reported() {
    let root = copy_of("imagenet-r-mini");
    std::fs::create_dir(root.join("n09999999")).unwrap();
    let e = load_image_folder(&root, "inr", &seeded(0)).unwrap_err().to_string();
    assert!(e.contains("n09999999") && e.contains("no .jpg"), "{e}");
    std::fs::remove_dir(root.join("n09999999")).unwrap();

    let bad = root.join("n01484850/n01484850_0.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    let e = load_image_folder(&root, "inr", &seeded(0)).unwrap_err();
    assert!(matches!(e, StreamError::Image { .. }), "{e}");
    assert!(e.to_string().contains("n01484850_0.jpg"), "{e}");
    let skip = FolderOptions { on_corrupt: OnCorrupt::Skip, ..seeded(0) };
    let ds = load_image_folder(&root, "inr", &skip).unwrap();
    assert_eq!(ds.train.len() + ds.test.len(), 19, "the corrupt image is skipped");
}

#[test]
fn dataset_config_validates_paths_and_loads() {
    let cfg: DatasetConfig = serde_json::from_str(&format!(r#"{{"kind": "cifar100", "root": "{}"}}"#, fixtures().display())).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.load().unwrap().num_classes(), 100);
    let missing: DatasetConfig = serde_json::from_str(r#"{"kind": "imagenet-r", "root": "/no/such/dir"}"#).unwrap();
    assert!(missing.validate().unwrap_err().to_string().contains("/no/such/dir"));
    let e = serde_json::from_str::<DatasetConfig>(r#"{"kind": "cifar100", "root": "x", "shufle": true}"#).unwrap_err();
    assert!(e.to_string().contains("shufle"), "{e}");
}

#[test]
fn task_streams_over_cifar() {
    let ds = load_cifar100_python(&fixtures().join("cifar-100-python")).unwrap();
    let cfg = SplitConfig { num_tasks: 10, first_task_classes: None, remainder: Default::default() };
    let a = TaskStream::new(100, &ClassOrder::Seeded { seed: 1993 }, &cfg).unwrap();
    let b = TaskStream::new(100, &ClassOrder::Seeded { seed: 1993 }, &cfg).unwrap();
    assert_eq!(a.order(), b.order(), "same stream twice");
    let c = TaskStream::new(100, &ClassOrder::Seeded { seed: 42 }, &cfg).unwrap();
    assert_ne!(a.order(), c.order(), "the seed changes the order");
    let mut covered = 0;
    for t in 0..10 {
        let idx = a.indices(&ds.train, t);
        assert_eq!(idx.len(), 20, "10 classes × 2 images");
        assert!(idx.iter().all(|&i| a.task_of(ds.train.labels[i]) == t));
        covered += idx.len();
    }
    assert_eq!(covered, ds.train.len());
    let explicit: Vec<usize> = (0..100).rev().collect();
    let e = TaskStream::new(100, &ClassOrder::Explicit(explicit.clone()), &cfg).unwrap();
    assert_eq!(e.tasks()[0].classes, (90..100).rev().collect::<Vec<_>>());
}

#[test]
fn taxonomy_files_are_validated_and_name_the_class() {
    let dir = std::env::temp_dir().join(format!("promptcl-tax-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let classes: Vec<String> = ["cat", "dog", "car", "bus"].iter().map(|s| s.to_string()).collect();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = write("ok.json", r#"{"groups": {"animals": ["cat", "dog"], "vehicles": ["car", "bus"]}}"#);
    let t = LabelTree::from_json(&ok, &classes).unwrap();
    assert_eq!(t.group_names, ["animals", "vehicles"]);
    assert_eq!(t.parent, [0, 0, 1, 1]);
    // The tree grows as tasks bring classes: first cat + car, then dog.
    assert_eq!(t.restricted_to(&[0, 2]), vec![(0, vec![0]), (1, vec![2])]);
    assert_eq!(t.restricted_to(&[0, 2, 1]), vec![(0, vec![0, 1]), (1, vec![2])]);
    let missing = write("missing.json", r#"{"groups": {"animals": ["cat", "dog"], "vehicles": ["car"]}}"#);
    let e = LabelTree::from_json(&missing, &classes).unwrap_err().to_string();
    assert!(e.contains("`bus` is in no group") && e.contains("missing.json"), "{e}");
    let dup = write("dup.json", r#"{"groups": {"animals": ["cat", "dog", "car"], "vehicles": ["car", "bus"]}}"#);
    let e = LabelTree::from_json(&dup, &classes).unwrap_err().to_string();
    assert!(e.contains("`car` appears twice"), "{e}");
    let unknown = write("unknown.json", r#"{"groups": {"animals": ["cat", "dog", "cow"], "vehicles": ["car", "bus"]}}"#);
    let e = LabelTree::from_json(&unknown, &classes).unwrap_err().to_string();
    assert!(e.contains("`cow`"), "{e}");
    // Aliases let a tree use readable labels for opaque class names (ImageNet-R wnids).
    let aliased = write("aliased.json", r#"{"groups": {"animals": ["kitty", "dog"], "vehicles": ["car", "bus"]}, "aliases": {"kitty": "cat"}}"#);
    assert_eq!(LabelTree::from_json(&aliased, &classes).unwrap().parent, [0, 0, 1, 1]);
    let bad_alias = write("bad_alias.json", r#"{"groups": {"animals": ["cat", "dog"], "vehicles": ["car", "bus"]}, "aliases": {"kitty": "n0000"}}"#);
    let e = LabelTree::from_json(&bad_alias, &classes).unwrap_err().to_string();
    assert!(e.contains("alias `kitty`") && e.contains("`n0000`") && e.contains("bad_alias.json"), "{e}");
    let twice = write("twice.json", r#"{"groups": {"animals": ["kitty", "cat", "dog"], "vehicles": ["car", "bus"]}, "aliases": {"kitty": "cat"}}"#);
    let e = LabelTree::from_json(&twice, &classes).unwrap_err().to_string();
    assert!(e.contains("appears twice"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
