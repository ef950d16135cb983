//! The safetensors loader on arbitrary and mutated files: an error naming the
//! file, never a panic.

mod common;

use common::{fixture, tiny_cfg};
use promptcl_model::{frozen_vit, weights::read_safetensors, Precision};
use proptest::prelude::*;
use tch::Device;

fn tmp(tag: usize) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("promptcl-fuzz-st-{}-{tag}.safetensors", std::process::id()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_reader_survives_mutations(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in proptest::option::of(0usize..2000), tag in any::<usize>()) {
        let mut bytes = std::fs::read(fixture("vit_tiny_test.safetensors")).unwrap();
        // Most damage lands in the JSON header, where parsing decisions are made.
        for (pos, b) in edits {
            let i = pos % bytes.len().min(4096);
            bytes[i] ^= b | 1;
        }
        if let Some(c) = cut {
            bytes.truncate(c);
        }
        let path = tmp(tag);
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = frozen_vit(&tiny_cfg(), Some(&path), Device::Cpu, Precision::F32) {
            prop_assert!(e.to_string().contains(&path.display().to_string()) || e.to_string().contains("shape") || e.to_string().contains("tensor"), "{e}");
        }
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn safetensors_reader_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), tag in any::<usize>()) {
        let path = tmp(tag ^ 1);
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_safetensors(&path);
        std::fs::remove_file(path).ok();
    }
}
