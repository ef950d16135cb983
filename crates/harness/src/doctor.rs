//! `promptcl doctor`: what this binary runs on, checked by running it.

use std::path::PathBuf;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Serialize)]
pub struct Report {
    pub promptcl_version: &'static str,
    pub libtorch_version: String,
    pub libtorch_path: String,
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub device: String,
    pub device_name: String,
    pub bf16_matmul: bool,
    pub fused_attention: String,
    pub cpu_threads: i32,
}

impl Report {
    pub fn collect() -> Self {
        Self::collect_for(Device::cuda_if_available())
    }

    pub fn collect_for(device: Device) -> Self {
        let lib_dir = loaded_libtorch_dir();
        Self {
            promptcl_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: lib_dir.as_ref().and_then(|d| torch_version(d)).unwrap_or_else(|| "unknown".into()),
            libtorch_path: lib_dir.map_or_else(|| "unknown".into(), |d| d.display().to_string()),
            cuda_available: tch::Cuda::is_available(),
            cuda_devices: tch::Cuda::device_count(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            device: format!("{device:?}"),
            device_name: device_name(device),
            bf16_matmul: bf16_works(device),
            fused_attention: fused_backend(device),
            cpu_threads: tch::get_num_threads(),
        }
    }

    pub fn print(&self) {
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!("promptcl {}", self.promptcl_version);
        println!("  libtorch          {} ({})", self.libtorch_version, self.libtorch_path);
        println!("  CUDA available    {} ({} device(s), cuDNN {})", yes(self.cuda_available), self.cuda_devices, yes(self.cudnn_available));
        println!("  device            {} — {}", self.device, self.device_name);
        println!("  bf16 matmul       {}", yes(self.bf16_matmul));
        println!("  fused attention   {}", self.fused_attention);
        println!("  CPU threads       {}", self.cpu_threads);
    }
}

/// The directory of the libtorch actually mapped into this process (not the
/// one we were built against: on another machine `LD_LIBRARY_PATH` may win).
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
        .or_else(|| option_env!("PROMPTCL_LIBTORCH_LIB").map(PathBuf::from))
}

/// `torch/version.py` sits one level above `torch/lib` in a PyTorch install.
fn torch_version(lib_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib_dir.parent()?.join("version.py")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("__version__ = ")).map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
}

fn device_name(device: Device) -> String {
    if !device.is_cuda() {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())));
        return cpu.unwrap_or_else(|| "CPU".into());
    }
    // The NVIDIA kernel driver exposes the model name without any CUDA API call.
    let from_proc = std::fs::read_dir("/proc/driver/nvidia/gpus").ok().and_then(|mut d| {
        let info = std::fs::read_to_string(d.next()?.ok()?.path().join("information")).ok()?;
        info.lines().find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
    });
    from_proc
        .or_else(|| {
            let out = std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"]).output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "CUDA device".into())
}

fn bf16_works(device: Device) -> bool {
    let a = Tensor::f_ones([16, 16], (Kind::BFloat16, device));
    a.and_then(|a| a.f_matmul(&a)).and_then(|c| c.f_double_value(&[0, 0])).is_ok_and(|v| v == 16.0)
}

/// Which kernel `scaled_dot_product_attention` picks for a bf16 ViT-B-shaped call.
fn fused_backend(device: Device) -> String {
    let kind = if device.is_cuda() { Kind::BFloat16 } else { Kind::Float };
    let q = match Tensor::f_zeros([2, 12, 197, 64], (kind, device)) {
        Ok(q) => q,
        Err(e) => return format!("unavailable ({e})"),
    };
    match Tensor::f_internal_fused_sdp_choice(&q, &q, &q, None::<Tensor>, 0.0, false, None, false) {
        // at::SDPBackend numbering.
        Ok(0) => "math (unfused) kernel".into(),
        Ok(1) => "flash attention".into(),
        Ok(2) => "memory-efficient attention".into(),
        Ok(3) => "cuDNN attention".into(),
        Ok(n) => format!("backend #{n}"),
        Err(e) => format!("unavailable ({e})"),
    }
}
