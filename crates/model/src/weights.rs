//! Strict safetensors loading into a `VarStore`.
//!
//! Every variable of the model must be present with the right shape, and every
//! tensor in the file must be used (or explicitly ignored): a silently
//! half-loaded backbone is the worst failure a CL experiment can have, since it
//! still trains and reports plausible-looking numbers.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{nn::VarStore, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Turns a file tensor into the variable's expected shape when a known
/// transformation applies (e.g. resampling position embeddings), or returns it
/// unchanged and lets the shape check report the mismatch.
pub type Adapt<'a> = &'a dyn Fn(&str, Tensor, &[i64]) -> Result<Tensor>;

/// Reads every tensor of a safetensors file as a float tensor on the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    read_safetensors_except(path, &[])
}

/// [`read_safetensors`], skipping keys that start with any of `skip` (before
/// their dtype is checked: checkpoints carry integer buffers such as BERT's
/// `embeddings.position_ids`).
pub fn read_safetensors_except(path: &Path, skip: &[&str]) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::BadFile { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut out = HashMap::new();
    for (key, view) in st.tensors() {
        if skip.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => return Err(ModelError::BadDtype { path: path.to_path_buf(), key, dtype: format!("{other:?}") }),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        out.insert(key, t);
    }
    Ok(out)
}

/// Copies the file's tensors into `vs`, requiring an exact match of names and
/// shapes. Keys starting with any of `ignore_prefixes` may be absent from the
/// model; `adapt` may reshape a tensor before the shape check.
pub fn load_strict(vs: &VarStore, path: &Path, ignore_prefixes: &[&str], adapt: Adapt<'_>) -> Result<()> {
    load_map(vs, path, read_safetensors(path)?, ignore_prefixes, adapt)
}

/// [`load_strict`] on tensors already read (and possibly renamed) from `path`.
pub fn load_map(vs: &VarStore, path: &Path, mut file: HashMap<String, Tensor>, ignore_prefixes: &[&str], adapt: Adapt<'_>) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let expected = var.size();
        let Some(src) = file.remove(name.as_str()) else {
            return Err(ModelError::MissingTensor { path: path.to_path_buf(), key: name.clone(), expected });
        };
        let src = adapt(name, src, &expected)?;
        if src.size() != expected {
            return Err(ModelError::ShapeMismatch { path: path.to_path_buf(), key: name.clone(), found: src.size(), expected });
        }
        let mut var = var.shallow_clone();
        tch::no_grad(|| var.f_copy_(&src.to_device(var.device()).to_kind(var.kind())))?;
    }
    let unexpected: BTreeSet<String> = file.into_keys().filter(|k| !ignore_prefixes.iter().any(|p| k.starts_with(p))).collect();
    if !unexpected.is_empty() {
        let examples: Vec<_> = unexpected.iter().take(5).map(String::as_str).collect();
        return Err(ModelError::UnexpectedTensors { path: path.to_path_buf(), count: unexpected.len(), examples: examples.join(", ") });
    }
    Ok(())
}
