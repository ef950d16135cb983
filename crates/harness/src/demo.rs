//! `promptcl demo`: a miniature of the real setting that runs offline on a
//! laptop CPU in a few minutes.
//!
//! 1. A procedural image set: 40 classes = 8 pattern families × 5 colour
//!    schemes, 32×32, with random frequency, phase, position and noise.
//! 2. A small ViT (depth 4, width 96, patch 4) that promptcl pretrains on the
//!    20 base classes (colour schemes 0–1 and half of scheme 2), cached in
//!    `~/.cache/promptcl/demo/` after the first run, then frozen.
//! 3. Continual learning over the 20 other classes (4 tasks × 5), written as
//!    an image folder of PNG files so the real loader and harness run it,
//!    with a baseline and prompt methods; accuracy matrix, metrics, plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use promptcl_model::{Prompts, ViTConfig, VisionTransformer};
use promptcl_stream::{Image, SplitMix64};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use crate::config::{DeviceChoice, RunConfig};
use crate::{compare, plot, results, run};

const CLASSES: usize = 40;
const SIZE: usize = 32;
const PRETRAIN_PER_CLASS: usize = 120;
const CL_PER_CLASS: usize = 60;
const DEMO_VERSION: u32 = 1;

/// The demo backbone's geometry.
pub fn demo_vit() -> ViTConfig {
    ViTConfig {
        img_size: 32,
        patch_size: 4,
        embed_dim: 96,
        depth: 4,
        num_heads: 4,
        mlp_ratio: 2.0,
        num_classes: 0,
        ..ViTConfig::vit_tiny_patch16_224()
    }
}

/// Base classes the backbone is pretrained on; the rest arrive continually.
fn is_base(class: usize) -> bool {
    let scheme = class / 8;
    scheme < 2 || (scheme == 2 && class.is_multiple_of(2))
}

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match i as i64 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// One procedural image of `class`: a pattern family (class % 8) drawn in a
/// colour scheme (class / 8), jittered by `rng`.
pub fn procedural(class: usize, rng: &mut SplitMix64) -> Image {
    let (pattern, scheme) = (class % 8, class / 8);
    let hue = scheme as f64 / 5.0 + rng.uniform(-0.03, 0.03);
    let fg = hsv(hue.rem_euclid(1.0), 0.85, 0.95);
    let bg = hsv((hue + 0.5).rem_euclid(1.0), 0.35, 0.25 + 0.1 * (scheme % 2) as f64);
    let freq = rng.uniform(0.25, 0.45);
    let phase = rng.uniform(0.0, std::f64::consts::TAU);
    let (cx, cy) = (rng.uniform(10.0, 22.0), rng.uniform(10.0, 22.0));
    let r = rng.uniform(5.0, 9.0);
    let mut data = vec![0u8; 3 * SIZE * SIZE];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (xf, yf) = (x as f64, y as f64);
            let (dx, dy) = (xf - cx, yf - cy);
            let on = match pattern {
                0 => (yf * freq + phase).sin() > 0.0,
                1 => (xf * freq + phase).sin() > 0.0,
                2 => ((xf + yf) * freq * 0.7 + phase).sin() > 0.0,
                3 => ((xf * freq + phase).sin() > 0.0) ^ ((yf * freq + phase).sin() > 0.0),
                4 => dx * dx + dy * dy < r * r,
                5 => dx.abs() < r && dy.abs() < r,
                6 => dx.abs() < r / 3.0 || dy.abs() < r / 3.0,
                _ => (dx * dx + dy * dy).sqrt() % 6.0 < 3.0,
            };
            let mix = if on { 1.0 } else { 0.0 };
            for c in 0..3 {
                let v = mix * fg[c] + (1.0 - mix) * bg[c] + rng.uniform(-0.08, 0.08);
                data[c * SIZE * SIZE + y * SIZE + x] = (v.clamp(0.0, 1.0) * 255.0) as u8;
            }
        }
    }
    Image::from_chw(SIZE, SIZE, data)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("PROMPTCL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("promptcl")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/promptcl")))
        .unwrap_or_else(|| PathBuf::from(".cache/promptcl"))
        .join("demo")
}

fn to_tensor(images: &[&Image], device: Device) -> Tensor {
    let flat: Vec<u8> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
    Tensor::from_slice(&flat).view([images.len() as i64, 3, SIZE as i64, SIZE as i64]).to_device(device).to_kind(Kind::Float) / 255.0
}

/// Pretrains the demo ViT on the base classes and saves it (timm names).
fn pretrain(path: &Path, device: Device, quiet: bool) -> Result<f64> {
    let t0 = Instant::now();
    let base: Vec<usize> = (0..CLASSES).filter(|&c| is_base(c)).collect();
    let mut rng = SplitMix64::new(2024);
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (k, &c) in base.iter().enumerate() {
        for i in 0..PRETRAIN_PER_CLASS + 20 {
            let img = procedural(c, &mut rng);
            if i < PRETRAIN_PER_CLASS {
                train.push((img, k))
            } else {
                val.push((img, k))
            }
        }
    }
    tch::manual_seed(0);
    let cfg = ViTConfig { num_classes: base.len() as i64, ..demo_vit() };
    let vs = nn::VarStore::new(device);
    let vit = VisionTransformer::new(vs.root(), &cfg);
    let mut opt = nn::AdamW::default().build(&vs, 2e-3)?;
    let epochs = 12;
    let batch = 64;
    let steps = epochs * train.len().div_ceil(batch);
    let mut step = 0;
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        SplitMix64::derive(7, &[epoch as u64]).shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(batch) {
            let imgs: Vec<&Image> = chunk.iter().map(|&i| &train[i].0).collect();
            let mut x = to_tensor(&imgs, device);
            if epoch % 2 == 1 {
                x = x.flip([3]);
            }
            let y = Tensor::from_slice(&chunk.iter().map(|&i| train[i].1 as i64).collect::<Vec<_>>()).to_device(device);
            opt.set_lr(2e-3 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / steps as f64).cos()));
            let logits = vit.forward(&x, &Prompts::none())?.logits.expect("head");
            let loss = logits.cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * chunk.len() as f64;
            step += 1;
        }
        if !quiet {
            eprintln!("  pretraining epoch {}/{epochs}: loss {:.3}", epoch + 1, loss_sum / train.len() as f64);
        }
    }
    let imgs: Vec<&Image> = val.iter().map(|(i, _)| i).collect();
    let y = Tensor::from_slice(&val.iter().map(|(_, k)| *k as i64).collect::<Vec<_>>()).to_device(device);
    let logits = tch::no_grad(|| vit.forward(&to_tensor(&imgs, device), &Prompts::none()))?.logits.expect("head");
    let acc = 100.0 * logits.argmax(1, false).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    std::fs::create_dir_all(path.parent().expect("cache dir"))?;
    let tmp = path.with_extension("tmp.safetensors");
    vs.save(&tmp)?;
    std::fs::rename(&tmp, path)?;
    if !quiet {
        eprintln!("  pretrained in {:.0}s: {acc:.1}% on held-out base-class images", t0.elapsed().as_secs_f64());
    }
    Ok(acc)
}

/// Writes the continual classes as `root/<class>/<i>.png` (once).
fn write_folder(root: &Path) -> Result<()> {
    let done = root.join(".complete");
    if done.is_file() {
        return Ok(());
    }
    let mut rng = SplitMix64::new(99);
    for c in (0..CLASSES).filter(|&c| !is_base(c)) {
        let dir = root.join(format!("class{c:02}"));
        std::fs::create_dir_all(&dir)?;
        for i in 0..CL_PER_CLASS {
            procedural(c, &mut rng).save(&dir.join(format!("{i:03}.png")))?;
        }
    }
    std::fs::write(done, b"")?;
    Ok(())
}

/// The demo's run config for one method.
pub fn demo_config(method: &str, params: &str, data: &Path, weights: &Path, results_dir: &Path, device: DeviceChoice) -> Result<RunConfig> {
    let text = format!(
        r#"
name = "demo"
seeds = [1]

[stream]
num_tasks = 4
order = {{ seed = 1 }}
dataset = {{ kind = "image-folder", root = "{data}", cache_short_side = 32, split = {{ kind = "seeded", seed = 0, train_fraction = 0.75 }} }}
transform = {{ size = 32, scale = [0.6, 1.0] }}

[model]
preset = "custom"
weights = "{weights}"
vit = {{ img_size = 32, patch_size = 4, embed_dim = 96, depth = 4, num_heads = 4, mlp_ratio = 2.0, num_classes = 0 }}

[method]
name = "{method}"
params = {{ {params} }}

[optim]
epochs = 4
batch_size = 32
lr = 0.01
scale_lr_by_batch = false

[run]
device = "{device}"
results_dir = "{results}"
eval_batch_size = 200
"#,
        data = data.display(),
        weights = weights.display(),
        results = results_dir.display(),
    );
    let cfg: RunConfig = toml::from_str(&text)?;
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(device: DeviceChoice, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let dev = run::device_for(device)?;
    println!("promptcl demo — a MINIATURE of Split CIFAR-100 with a pretrained ViT, built offline:");
    println!("  procedural 32x32 images (40 classes), a small ViT pretrained here on 20 base classes and frozen,");
    println!("  then 4 continual tasks over the 20 new classes. Numbers say nothing about real benchmarks.\n");
    let cache = cache_dir();
    let weights = cache.join(format!("vit-demo-v{DEMO_VERSION}.safetensors"));
    if weights.is_file() {
        println!("backbone: cached {}", weights.display());
    } else {
        println!("backbone: pretraining (first run only; cached in {})", cache.display());
        pretrain(&weights, dev, quiet)?;
    }
    let data = cache.join(format!("continual-v{DEMO_VERSION}"));
    write_folder(&data)?;
    let results_dir = PathBuf::from("results/demo");
    let methods = [
        ("finetune-head", ""),
        ("simplecil", ""),
        ("aper", "ffn_num = 16"),
        ("ranpac", "ffn_num = 16, projection = 2000"),
        ("ease", "ffn_num = 16"),
        ("fecam", ""),
        ("slca", "samples_per_class = 64"),
        ("dualprompt", "g_layers = [0, 1], e_layers = [2, 3], e_length = 5"),
        ("vpt-nsp", "eta = 0.97"),
        // Issue #18's composition: NoRGa's stages and gate on reparameterised (reparam-mlp) prefixes.
        (
            "norga",
            "layers = [0, 1, 2], length = 5, prompt = { param = \"reparam-mlp\", gate = \"sigmoid\" }, tii_epochs = 5, tii_align_epochs = 5, align_epochs = 5",
        ),
    ];
    let mut runs = Vec::new();
    for (method, params) in methods {
        println!("\n== {method}");
        let cfg = demo_config(method, params, &data, &weights, &results_dir, device)?;
        let dir = run::run(&cfg, 1, None, run::RunOptions { quiet, ..Default::default() })?;
        let m = crate::report(&dir, false)?;
        runs.push((method.to_string(), m));
    }
    let rows = compare::rows(&runs.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>());
    println!();
    print!("{}", compare::terminal(&rows));
    std::fs::create_dir_all(&results_dir)?;
    plot::write_svg_png(&plot::accuracy_svg(&runs), &results_dir.join("accuracy"))?;
    results::atomic_write(&results_dir.join("compare.md"), compare::markdown(&rows).as_bytes())?;
    println!("\nplots: {}/*/forgetting.png and {}", results_dir.display(), results_dir.join("accuracy.png").display());
    println!("demo took {:.0}s.", t0.elapsed().as_secs_f64());
    real_benchmark(quiet)
}

/// Names the real benchmark and, when its data and weights are here and a GPU
/// is available, runs it (one seed).
fn real_benchmark(quiet: bool) -> Result<()> {
    let config = Path::new("benchmarks/configs/cifar100_dualprompt.toml");
    let data = Path::new("data/cifar-100-python");
    let weights = Path::new("weights/sup21k.safetensors");
    println!("\nThe real benchmark (Split CIFAR-100, ViT-B/16 Sup-21K, 10 tasks):");
    println!("  data-scripts/download_cifar100.sh data");
    println!("  python data-scripts/export_vit_weights.py --timm vit_base_patch16_224.orig_in21k -o weights/sup21k.safetensors");
    println!("  promptcl run {}", config.display());
    match (data.is_dir() && weights.is_file() && config.is_file(), tch::Cuda::is_available()) {
        (true, true) => {
            println!("data, weights and a GPU are here: running it now (seed 42).");
            let cfg = RunConfig::load(config)?;
            let dir = run::run(&cfg, cfg.seeds[0], None, run::RunOptions { quiet, ..Default::default() })?;
            crate::report(&dir, false)?;
        }
        (true, false) => println!("data and weights are here, but no GPU: the real run takes hours on a CPU; start it with the command above."),
        (false, _) => {
            println!("(present here: data {}, weights {})", if data.is_dir() { "yes" } else { "no" }, if weights.is_file() { "yes" } else { "no" })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedural_images_are_deterministic_and_class_dependent() {
        let a = procedural(3, &mut SplitMix64::new(1));
        let b = procedural(3, &mut SplitMix64::new(1));
        assert_eq!(a.data, b.data);
        let c = procedural(11, &mut SplitMix64::new(1));
        assert_ne!(a.data, c.data);
        assert_eq!((0..CLASSES).filter(|&c| is_base(c)).count(), 20);
    }
}
