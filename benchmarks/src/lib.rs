//! Benchmarks, as library functions so the test suite can run them tiny on CPU.

pub mod loader;
pub mod ot;
pub mod pipeline;
pub mod step;

/// `--device` of the benchmark binaries: `cpu`, `cuda`, or anything else for CUDA when available.
pub fn device(name: &str) -> tch::Device {
    match name {
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        _ => tch::Device::cuda_if_available(),
    }
}

/// Where a measurement ran, recorded with every result.
#[derive(Debug, serde::Serialize)]
pub struct Env {
    pub device: String,
    pub cpu_threads: i32,
    pub git_commit: String,
}

impl Env {
    pub fn capture(device: tch::Device) -> Self {
        let git_commit = promptcl_harness::env::git_commit();
        Self { device: format!("{device:?}"), cpu_threads: tch::get_num_threads(), git_commit }
    }
}
