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
