//! The benchmarks run (tiny, on CPU) in the test suite so they never rot. No timing assertions.

use promptcl_benchmarks::loader;
use tch::Device;

#[test]
fn loader_benchmark_runs_tiny_on_cpu() {
    let r = loader::cifar_like(40, 16, 1, Device::Cpu).unwrap();
    assert_eq!(r.images, 40);
    assert!(r.batches_images_per_s > 0.0);
    let dir = std::env::temp_dir().join(format!("promptcl-bench-smoke-{}", std::process::id()));
    loader::write_imagenet_r_like(&dir, 6, 3).unwrap();
    let r = loader::imagenet_r_like(&dir, 4, 1, Device::Cpu).unwrap();
    assert_eq!(r.images, 6);
    assert!(r.decode_images_per_s.unwrap() > 0.0);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn step_benchmark_runs_tiny_on_cpu() {
    use promptcl_benchmarks::step::{run, Expert, StepConfig};
    use promptcl_model::{Precision, ViTConfig};
    for expert in [Expert::Norga, Expert::ZeroInit, Expert::ReparamMlp, Expert::Lora] {
        let cfg = StepConfig {
            vit: ViTConfig { img_size: 32, patch_size: 8, embed_dim: 64, depth: 6, num_heads: 4, ..ViTConfig::vit_tiny_patch16_224() },
            batch: 4,
            prompt_length: 5,
            layers: vec![0, 1, 2, 3, 4],
            expert,
            classes: 10,
            precision: Precision::F32,
            device: Device::Cpu,
            warmup: 1,
            iters: 2,
        };
        let r = run(&cfg).unwrap();
        assert!(r.train_images_per_s > 0.0 && r.eval_images_per_s > 0.0, "{expert:?}");
    }
}

/// The PyTorch reference must keep running too (tiny, CPU), when the venv's
/// python is known (`make test` exports PROMPTCL_PYTHON).
#[test]
fn pytorch_reference_runs_tiny_on_cpu() {
    let Ok(python) = std::env::var("PROMPTCL_PYTHON") else {
        eprintln!("skipped: PROMPTCL_PYTHON not set (run through `make test`)");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("torch_step_reference.py");
    let out = std::process::Command::new(python)
        .args([
            script.to_str().unwrap(),
            "--device",
            "cpu",
            "--tiny",
            "--batch",
            "4",
            "--modes",
            "official,eager",
            "--experts",
            "norga,zero-init,reparam-mlp,lora",
            "--warmup",
            "1",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8, "two modes by four experts");
    assert!(lines.iter().all(|l| l["train_images_per_s"].as_f64().unwrap() > 0.0));
}

#[test]
fn ot_benchmark_runs_tiny_on_cpu() {
    let r = promptcl_benchmarks::ot::run(5, 8, 16, 3, Device::Cpu).unwrap();
    assert_eq!((r.pairs, r.exact_pairs), (10, 3));
    assert!(r.sinkhorn_all_pairs_s > 0.0 && r.exact_per_pair_s > 0.0);
}

/// The full-pipeline benchmark on the NoRGa paper config, shrunk: the synthetic
/// data is real CIFAR-100 binary format (read back by the stream's loader with
/// its superclasses), and the run covers every task.
#[test]
fn pipeline_benchmark_runs_tiny_on_cpu() {
    use promptcl_benchmarks::pipeline;
    let dir = std::env::temp_dir().join(format!("promptcl-bench-pipeline-{}", std::process::id()));
    let bin = pipeline::write_synthetic_cifar100(&dir.join("data"), 4, 2, 1).unwrap();
    let ds = promptcl_stream::load_cifar100(&bin).unwrap();
    assert_eq!((ds.train.len(), ds.test.len(), ds.num_classes()), (400, 200, 100));
    assert_eq!(ds.hierarchy.as_ref().unwrap().parent, promptcl_stream::CIFAR100_SUPERCLASS);
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cifar100_norga.toml");
    let r = pipeline::run_pipeline(&config, &dir.join("data"), "cpu", 1, &dir.join("results"), true).unwrap();
    assert_eq!((r.tasks, r.train_images, r.test_images), (10, 400, 200));
    assert_eq!(r.task_train_seconds.len(), 10);
    assert!(r.task_train_seconds.iter().chain(&r.task_other_seconds).all(|s| s.is_finite() && *s >= 0.0), "{r:?}");
    assert!(r.wall_seconds >= r.task_train_seconds.iter().sum::<f64>());
    std::fs::remove_dir_all(dir).ok();
}
