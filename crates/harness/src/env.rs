//! The environment recorded beside every result.

use serde::Serialize;
use tch::Device;

#[derive(Debug, Serialize)]
pub struct Env {
    pub promptcl: &'static str,
    pub tch: &'static str,
    pub libtorch: String,
    pub device: String,
    pub device_name: String,
    pub cpu_threads: i32,
    pub seed: u64,
    pub git_commit: String,
    pub started_utc: String,
}

pub fn capture(device: Device, seed: u64) -> Env {
    let report = crate::doctor::Report::collect_for(device);
    Env {
        promptcl: env!("CARGO_PKG_VERSION"),
        tch: "0.24",
        libtorch: report.libtorch_version,
        device: format!("{device:?}"),
        device_name: report.device_name,
        cpu_threads: tch::get_num_threads(),
        seed,
        git_commit: git_commit(),
        started_utc: crate::results::utc_stamp(),
    }
}

pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
