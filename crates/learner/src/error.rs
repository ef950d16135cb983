#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    #[error("unknown method `{name}`{hint}; valid methods: {valid}")]
    UnknownMethod { name: String, hint: String, valid: String },
    #[error("method `{method}`: bad parameters: {reason}")]
    Params { method: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] promptcl_model::ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, LearnerError>;
