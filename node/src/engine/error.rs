use std::path::PathBuf;

/// Why a block could not be loaded or run. Every variant is a clear message for the
/// caller; none of them is a panic.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime not found: {0}")]
    MissingRuntime(String),
    /// Whoever waited for the session is gone (a client that disconnected).
    #[error("the session was cancelled: its client is gone")]
    Cancelled,
    #[error("cannot load ONNX Runtime from {path}: {reason}; run `scripts/setup`")]
    RuntimeLoad { path: PathBuf, reason: String },
    #[error(transparent)]
    Manifest(#[from] crate::model::ManifestError),
    #[error(transparent)]
    Verify(#[from] crate::model::VerifyError),
    #[error("model has no block {index} (it has {count})")]
    NoSuchBlock { index: usize, count: usize },
    #[error("cannot open weights file {path}: {source}")]
    MapWeights { path: PathBuf, source: std::io::Error },
    #[error("weights file {path} has {actual} bytes, the manifest says {expected}")]
    WeightsSize { path: PathBuf, expected: u64, actual: u64 },
    #[error("cannot load block graph {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("block {block} failed to run: {reason}")]
    Run { block: usize, reason: String },
    #[error("bad input for block {block}: {reason}")]
    BadInput { block: usize, reason: String },
    #[error("prompt and generation need {needed} positions, the model's context is {limit}")]
    ContextOverflow { needed: usize, limit: usize },
    #[error("session {0} is not in the KV cache of this block (never started, or closed)")]
    UnknownSession(u64),
    #[error(
        "session {0} was evicted from the KV cache (oldest first) to make room; start it again"
    )]
    SessionEvicted(u64),
    #[error("session {session} is at position {cached}, the request is for position {requested}")]
    PositionMismatch { session: u64, cached: usize, requested: usize },
    #[error("rolling session {session} back failed: {reason}")]
    Rollback { session: u64, reason: String },
    #[error("session needs {needed} KV-cache tokens, this block allows {limit}")]
    CacheFull { needed: usize, limit: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("this is a {found} model; {wanted}")]
    WrongKind { found: &'static str, wanted: &'static str },
}

impl EngineError {
    pub(crate) fn load(path: &std::path::Path, err: impl std::fmt::Display) -> Self {
        EngineError::Load { path: path.to_path_buf(), reason: err.to_string() }
    }

    pub(crate) fn run(block: usize, err: impl std::fmt::Display) -> Self {
        EngineError::Run { block, reason: err.to_string() }
    }

    pub(crate) fn input(block: usize, reason: impl Into<String>) -> Self {
        EngineError::BadInput { block, reason: reason.into() }
    }
}
