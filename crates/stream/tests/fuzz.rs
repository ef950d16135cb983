//! Every dataset parser on arbitrary and mutated bytes: an error or a value,
//! never a panic or a hang. Runs briefly in the test suite (proptest, fixed
//! case counts); see the README's reliability table for counts and times.

use std::path::{Path, PathBuf};

use promptcl_stream::{decode_image, load_cifar100_binary, load_cifar100_python, pickle, LabelTree, SplitFile};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tmpdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!("promptcl-fuzz-{}-{tag}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Flips, overwrites, truncates or extends `base` as `edits` say.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(pos, byte) in edits {
        if !v.is_empty() {
            let i = pos % v.len();
            v[i] ^= byte | 1;
        }
    }
    if let Some(c) = cut {
        v.truncate(c % (v.len() + 1));
    }
    v
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn pickle_parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = pickle::parse(&bytes);
    }

    #[test]
    fn pickle_parser_survives_opcode_soup(ops in proptest::collection::vec(
        prop_oneof![Just(b'('), Just(b']'), Just(b')'), Just(b'}'), Just(b'a'), Just(b'e'), Just(b's'), Just(b'u'),
                    Just(b'l'), Just(b't'), Just(b'd'), Just(b'2'), Just(b'0'), Just(b'1'), Just(b'N'), Just(b'R'),
                    Just(b'b'), Just(0x85u8), Just(0x86), Just(0x87), Just(0x94), Just(b'K'), Just(b'h')], 0..400)) {
        let mut bytes = vec![0x80, 2];
        bytes.extend(ops);
        bytes.push(b'.');
        let _ = pickle::parse(&bytes);
    }
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn cifar_pickle_with_mutations_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in proptest::option::of(any::<usize>())) {
        let src = fixtures().join("cifar-100-python");
        let dir = tmpdir("py");
        for f in ["meta", "test"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let base = std::fs::read(src.join("train")).unwrap();
        std::fs::write(dir.join("train"), mutate(&base, &edits, cut)).unwrap();
        let _ = load_cifar100_python(&dir);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn cifar_binary_with_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let dir = tmpdir("bin");
        let src = fixtures().join("cifar-100-binary");
        for f in ["test.bin", "fine_label_names.txt", "coarse_label_names.txt"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("train.bin"), &bytes).unwrap();
        let _ = load_cifar100_binary(&dir);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn image_decoder_never_panics(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16), cut in proptest::option::of(any::<usize>()), png in any::<bool>()) {
        let name = if png { "n01443537/n01443537_1.png" } else { "n01443537/n01443537_0.jpg" };
        let base = std::fs::read(fixtures().join("imagenet-r-mini").join(name)).unwrap();
        let dir = tmpdir("img");
        let path = dir.join(if png { "x.png" } else { "x.jpg" });
        std::fs::write(&path, mutate(&base, &edits, cut)).unwrap();
        let _ = decode_image(&path, Some(16));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn split_and_taxonomy_files_never_panic(text in "[\\\\{\\\\}\\\\[\\\\]\":, a-z0-9/._-]{0,200}") {
        let dir = tmpdir("json");
        let p = dir.join("f.json");
        std::fs::write(&p, &text).unwrap();
        let _ = SplitFile::read(&p);
        let _ = LabelTree::from_json(&p, &["a".to_string(), "b".to_string()]);
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn fixture_paths_exist() {
    assert!(Path::new(&fixtures().join("cifar-100-python/train")).is_file());
}
