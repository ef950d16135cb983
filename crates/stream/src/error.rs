use std::path::PathBuf;

/// Errors reading datasets, orders, splits and hierarchies. Every variant that
/// comes from a file names it.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("invalid stream config: {0}")]
    Config(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl StreamError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format { path: path.into(), reason: reason.into() }
    }
}

pub type Result<T> = std::result::Result<T, StreamError>;
