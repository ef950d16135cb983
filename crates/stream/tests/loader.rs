//! The batch pipeline: deterministic, correctly shaped, device-agnostic.

use std::path::PathBuf;

use promptcl_stream::{load_cifar100_python, ClassOrder, Loader, LoaderOptions, SplitConfig, TaskStream, TransformConfig};
use tch::{Device, Kind};

fn opts(augment: bool) -> LoaderOptions {
    LoaderOptions { batch_size: 8, shuffle: true, augment, drop_last: false, seed: 3 }
}

#[test]
fn same_seed_same_batches_and_epochs_differ() {
    let ds = load_cifar100_python(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar-100-python")).unwrap();
    let stream =
        TaskStream::new(100, &ClassOrder::Natural, &SplitConfig { num_tasks: 10, first_task_classes: None, remainder: Default::default() }).unwrap();
    let idx = stream.indices(&ds.train, 0);
    let tf = TransformConfig { size: 48, ..Default::default() };
    let run = |epoch| Loader::new(&ds.train, idx.clone(), opts(true), epoch, &tf, Device::Cpu).map(|b| b.unwrap()).collect::<Vec<_>>();
    let (a, b, c) = (run(0), run(0), run(1));
    assert_eq!(a.len(), 3, "20 samples in batches of 8");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.indices, y.indices);
        assert!(x.inputs.equal(&y.inputs), "bit-identical batches");
    }
    assert_ne!(a[0].indices, c[0].indices, "epochs reshuffle");
    let img = &a[0].inputs;
    assert_eq!(img.size(), [8, 3, 48, 48]);
    assert_eq!(img.kind(), Kind::Float);
    let (lo, hi) = (img.min().double_value(&[]), img.max().double_value(&[]));
    assert!((0.0..=1.0).contains(&lo) && hi <= 1.0 && hi > lo);
    for b in &a {
        assert!(b.labels.iter().all(|&l| stream.task_of(l) == 0));
    }
    // Crops depend on (seed, epoch, sample), not on the batch the sample lands in.
    let one_by_one = Loader::new(&ds.train, idx.clone(), LoaderOptions { batch_size: 1, ..opts(true) }, 0, &tf, Device::Cpu)
        .map(|b| b.unwrap())
        .collect::<Vec<_>>();
    let first = &one_by_one[0];
    let pos = a[0].indices.iter().position(|&i| i == first.indices[0]).unwrap();
    let diff = (a[0].inputs.get(pos as i64) - first.inputs.get(0)).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "{diff}");

    let test = Loader::new(&ds.test, stream.indices(&ds.test, 0), LoaderOptions { shuffle: false, ..opts(false) }, 0, &tf, Device::Cpu);
    assert_eq!(test.num_batches(), 2);
}

/// The test resize uses `test_interpolation` (bicubic by default as in the
/// timm-based codes, bilinear for CODA-Prompt), and nothing else changes.
#[test]
fn test_images_follow_the_configured_interpolation() {
    use promptcl_stream::{render, resize_center_crop, Interpolation};
    let ds = load_cifar100_python(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar-100-python")).unwrap();
    let idx: Vec<usize> = (0..4).collect();
    let batch = |tf: &TransformConfig| {
        Loader::new(&ds.test, idx.clone(), LoaderOptions { shuffle: false, ..opts(false) }, 0, tf, Device::Cpu).next().unwrap().unwrap().inputs
    };
    let by_hand = |tf: &TransformConfig, interpolation| {
        let images: Vec<_> = idx.iter().map(|&i| &ds.test.images[i]).collect();
        let boxes: Vec<_> = images.iter().map(|im| resize_center_crop(im.height, im.width, tf)).collect();
        render(&images, &boxes, tf, interpolation, Device::Cpu).unwrap()
    };
    let bicubic = TransformConfig { size: 48, ..Default::default() };
    let bilinear = TransformConfig { test_interpolation: Interpolation::Bilinear, ..bicubic.clone() };
    assert!(batch(&bicubic).equal(&by_hand(&bicubic, Interpolation::Bicubic)));
    assert!(batch(&bilinear).equal(&by_hand(&bilinear, Interpolation::Bilinear)));
    assert!(!batch(&bilinear).equal(&batch(&bicubic)));
}
