use std::path::PathBuf;

/// Everything that can go wrong building, loading or running a model.
///
/// Weight-file errors always name the file and, where relevant, the tensor key
/// and both shapes, because "shape mismatch" alone is useless in a 150-tensor
/// checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read weights file: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: missing tensor `{key}` (the model expects shape {expected:?})")]
    MissingTensor { path: PathBuf, key: String, expected: Vec<i64> },
    #[error("{path}: tensor `{key}` has shape {found:?} but the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, key: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("{path}: tensor `{key}` has dtype {dtype}; only F32, F64, F16 and BF16 weights are supported")]
    BadDtype { path: PathBuf, key: String, dtype: String },
    #[error("{path}: {count} tensor(s) the model does not use, e.g. {examples}; pass them in `ignore_prefixes` if this is intended")]
    UnexpectedTensors { path: PathBuf, count: usize, examples: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("bad input: {0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, ModelError>;
