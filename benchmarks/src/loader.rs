//! Input-pipeline throughput: images/s delivered as ready `[B, 3, 224, 224]`
//! batches (augmented, on the device), for a CIFAR-like in-memory set and an
//! ImageNet-R-like folder of real JPEG files; plus the one-off decode rate.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use promptcl_stream::{load_image_folder, FolderOptions, FolderSplit, Image, Loader, LoaderOptions, OnCorrupt, Split, SplitMix64, TransformConfig};
use serde::Serialize;
use tch::Device;

#[derive(Debug, Serialize)]
pub struct LoaderResult {
    pub dataset: String,
    pub images: usize,
    pub batch_size: usize,
    pub decode_images_per_s: Option<f64>,
    pub batches_images_per_s: f64,
}

/// A smooth random image (JPEG-compressible, like a photo).
fn synthetic(h: usize, w: usize, rng: &mut SplitMix64) -> Image {
    let (a, b, c) = (rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.below(256) as f64);
    let mut data = vec![0u8; 3 * h * w];
    for ch in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = c + 60.0 * ((x as f64 * a + ch as f64).sin() + (y as f64 * b).cos()) + rng.below(16) as f64;
                data[ch * h * w + y * w + x] = v.rem_euclid(256.0) as u8;
            }
        }
    }
    Image::from_chw(h, w, data)
}

fn time_batches(split: &Split, batch_size: usize, epochs: u64, device: Device) -> Result<f64> {
    let tf = TransformConfig::default();
    let opts = LoaderOptions { batch_size, shuffle: true, augment: true, drop_last: false, seed: 0 };
    // Warm-up (allocator, kernels).
    for b in Loader::new(split, (0..split.len()).collect(), opts, 99, &tf, device).take(2) {
        b?;
    }
    let t = Instant::now();
    let mut n = 0;
    for epoch in 0..epochs {
        for b in Loader::new(split, (0..split.len()).collect(), opts, epoch, &tf, device) {
            let b = b?;
            n += b.labels.len();
            // Force completion, as a training step consuming the batch would.
            let _ = b.inputs.sum(tch::Kind::Float).double_value(&[]);
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub fn cifar_like(n: usize, batch_size: usize, epochs: u64, device: Device) -> Result<LoaderResult> {
    let mut rng = SplitMix64::new(1);
    let split =
        Split { images: (0..n).map(|_| synthetic(32, 32, &mut rng)).collect(), labels: (0..n).map(|i| i % 100).collect(), ..Split::default() };
    Ok(LoaderResult {
        dataset: "cifar-like 32x32 (in memory)".into(),
        images: n,
        batch_size,
        decode_images_per_s: None,
        batches_images_per_s: time_batches(&split, batch_size, epochs, device)?,
    })
}

/// Writes `n` JPEGs of ImageNet-R-like sizes (shorter side 300–500 px, aspect 0.75–1.6) under `dir`.
pub fn write_imagenet_r_like(dir: &Path, n: usize, classes: usize) -> Result<()> {
    let mut rng = SplitMix64::new(2);
    for i in 0..n {
        let class_dir = dir.join(format!("n{:08}", i % classes));
        std::fs::create_dir_all(&class_dir)?;
        let short = 300 + rng.below(201) as usize;
        let aspect = rng.uniform(0.75, 1.6);
        let (h, w) = if aspect >= 1.0 { (short, (short as f64 * aspect) as usize) } else { ((short as f64 / aspect) as usize, short) };
        synthetic(h, w, &mut rng).save(&class_dir.join(format!("{i:06}.jpg")))?;
    }
    Ok(())
}

pub fn imagenet_r_like(dir: &Path, batch_size: usize, epochs: u64, device: Device) -> Result<LoaderResult> {
    let opts =
        FolderOptions { split: FolderSplit::Seeded { seed: 0, train_fraction: 1.0 }, cache_short_side: Some(256), on_corrupt: OnCorrupt::Error };
    let t = Instant::now();
    let ds = load_image_folder(dir, "imagenet-r-like", &opts)?;
    let decode = (ds.train.len() + ds.test.len()) as f64 / t.elapsed().as_secs_f64();
    Ok(LoaderResult {
        dataset: "imagenet-r-like JPEG folder (cached at short side 256)".into(),
        images: ds.train.len(),
        batch_size,
        decode_images_per_s: Some(decode),
        batches_images_per_s: time_batches(&ds.train, batch_size, epochs, device)?,
    })
}
