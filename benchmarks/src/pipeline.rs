//! The full-pipeline figure: wall time of a whole paper-schedule run (every
//! task, both HiDe/NoRGa stages, statistics, TAP and evaluation) on random-init
//! weights and a synthetic CIFAR-100 of the real size in the official binary
//! format, so that it runs anywhere without downloads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use promptcl_harness::config::{DeviceChoice, RunConfig};
use promptcl_harness::{results, run};
use promptcl_stream::{DatasetConfig, SplitMix64, CIFAR100_SUPERCLASS, CIFAR100_SUPERCLASS_NAMES};
use serde::Serialize;

/// A binary CIFAR-100 record: coarse label, fine label, 3 × 32 × 32 pixels.
const RECORD: usize = 2 + 3 * 32 * 32;

/// Writes `dir/cifar-100-binary/{train,test}.bin` (records `[coarse, fine,
/// 3072 channel-planar pixels]`) and the two name files; `per_class_*` images
/// of each of the 100 classes. Each class has its own mean colour so the
/// stream is learnable, plus per-pixel noise so no two images are equal.
pub fn write_synthetic_cifar100(dir: &Path, per_class_train: usize, per_class_test: usize, seed: u64) -> Result<PathBuf> {
    let out = dir.join("cifar-100-binary");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rng = SplitMix64::new(seed);
    for (file, per_class) in [("train.bin", per_class_train), ("test.bin", per_class_test)] {
        let path = out.join(file);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        let mut record = vec![0u8; RECORD];
        // Interleave the classes, as the real files do.
        for _ in 0..per_class {
            for fine in 0..100usize {
                record[0] = CIFAR100_SUPERCLASS[fine] as u8;
                record[1] = fine as u8;
                for ch in 0..3 {
                    let base = (fine * 37 + ch * 91) % 200;
                    for px in record[2 + ch * 1024..2 + (ch + 1) * 1024].iter_mut() {
                        *px = (base + (rng.next_u64() % 56) as usize) as u8;
                    }
                }
                w.write_all(&record)?;
            }
        }
        w.flush()?;
    }
    let fine: Vec<String> = (0..100).map(|c| format!("class_{c:02}")).collect();
    std::fs::write(out.join("fine_label_names.txt"), fine.join("\n") + "\n")?;
    std::fs::write(out.join("coarse_label_names.txt"), CIFAR100_SUPERCLASS_NAMES.join("\n") + "\n")?;
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct PipelineResult {
    pub config: String,
    pub method: String,
    pub precision: String,
    pub train_images: usize,
    pub test_images: usize,
    pub tasks: usize,
    /// The whole run, data loading included.
    pub wall_seconds: f64,
    /// Per task: training epochs (both stages), and the rest (statistics, TAP, evaluation, checkpoint).
    pub task_train_seconds: Vec<f64>,
    pub task_other_seconds: Vec<f64>,
    pub final_accuracy: f64,
    pub run_dir: PathBuf,
}

/// Runs `config` on the synthetic data in `data` with random-init weights.
/// `tiny` shrinks the model and schedule so the test suite can run it.
pub fn run_pipeline(config: &Path, data: &Path, device: &str, seed: u64, results_dir: &Path, tiny: bool) -> Result<PipelineResult> {
    let mut cfg = RunConfig::parse(config)?;
    match &mut cfg.stream.dataset {
        DatasetConfig::Cifar100 { root, .. } => *root = data.to_path_buf(),
        other => bail!("{}: the pipeline benchmark runs CIFAR-100 configs, not {other:?}", config.display()),
    }
    cfg.model.weights = None;
    cfg.run.device = match device {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        _ => DeviceChoice::Auto,
    };
    cfg.run.results_dir = results_dir.to_path_buf();
    if tiny {
        cfg.model.preset = "custom".into();
        cfg.model.vit = Some(promptcl_model::ViTConfig {
            img_size: 32,
            patch_size: 8,
            embed_dim: 64,
            depth: 6,
            num_heads: 4,
            num_classes: 0,
            ..promptcl_model::ViTConfig::default()
        });
        cfg.model.precision = Default::default();
        cfg.stream.transform.size = 32;
        cfg.optim.epochs = 1;
        cfg.optim.batch_size = 32;
        for key in ["tii_epochs", "tii_align_epochs", "align_epochs"] {
            if cfg.method.params.contains_key(key) {
                cfg.method.params.insert(key.into(), toml::Value::Integer(1));
            }
        }
    }
    cfg.validate()?;
    let started = Instant::now();
    let dir = run::run(&cfg, seed, None, run::RunOptions { quiet: true, ..Default::default() })?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let metrics = results::load_metrics(&dir)?;
    let (mut train, mut total) = (Vec::new(), Vec::new());
    let log = std::fs::read_to_string(dir.join(results::LOG))?;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(task), Some(s)) = (v["task"].as_u64(), v["seconds"].as_f64()) else { continue };
        let task = task as usize;
        if train.len() <= task {
            train.resize(task + 1, 0.0);
            total.resize(task + 1, 0.0);
        }
        if v.get("epoch").is_some() {
            train[task] += s;
        } else {
            total[task] = s;
        }
    }
    let other = total.iter().zip(&train).map(|(t, e)| t - e).collect();
    let records = |file: &str| -> Result<usize> {
        let path = data.join("cifar-100-binary").join(file);
        Ok(std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len() as usize / RECORD)
    };
    Ok(PipelineResult {
        config: config.display().to_string(),
        method: cfg.method.name.clone(),
        precision: format!("{:?}", cfg.model.precision),
        train_images: records("train.bin")?,
        test_images: records("test.bin")?,
        tasks: metrics.matrix.num_tasks(),
        wall_seconds,
        task_train_seconds: train,
        task_other_seconds: other,
        final_accuracy: metrics.summary.as_ref().map_or(f64::NAN, |s| s.final_accuracy),
        run_dir: dir,
    })
}
