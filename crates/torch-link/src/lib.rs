//! Shared `build.rs` logic for every promptcl package that links libtorch.
//!
//! Two problems it solves, both of which otherwise fail silently or far from
//! their cause:
//! - the binaries must find `libtorch*.so` at run time without the user
//!   exporting `LD_LIBRARY_PATH`, so we embed the directory as an rpath;
//! - the linker's `--as-needed` drops `libtorch_cuda.so` (nothing references
//!   its symbols directly, it registers CUDA kernels from static initialisers),
//!   so CUDA disappears. Forcing it in with `--no-as-needed` keeps the GPU.
//!
//! The calling package must depend on `torch-sys` directly: Cargo hands the
//! `DEP_TCH_LIBTORCH_LIB` metadata only to direct dependents of `links = "tch"`.

use std::path::Path;

/// Emit the link arguments. Call from `build.rs`.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys was configured some other way (e.g. LIBTORCH_STATIC); it
        // already emitted what it needs and there is no directory to embed.
        return;
    };
    let lib_dir = Path::new(&lib_dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    // Lets `promptcl doctor` say which libtorch it was built against.
    println!("cargo:rustc-env=PROMPTCL_LIBTORCH_LIB={}", lib_dir.display());
}
