//! Typed errors for the quill library. The binary turns them into one-line messages.

use std::path::PathBuf;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library. Variants carry the numbers and paths a user
/// needs to fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        /// The I/O error. Deliberately not the error's `source()`: the message already
        /// includes it, and chains printed with `{:#}` would repeat it.
        cause: std::io::Error,
    },

    /// A configuration or flag value is out of range.
    #[error("invalid {name}: {msg}")]
    InvalidConfig { name: &'static str, msg: String },

    /// The corpus cannot be used for training.
    #[error("corpus {path}: {msg}")]
    Corpus { path: PathBuf, msg: String },

    /// A prepared token file (`NAME.tokens`) is damaged, of another version, or does not fit
    /// what it is used for.
    #[error("token file {path}: {msg}")]
    TokenFile { path: PathBuf, msg: String },

    /// Text contains tokens the vocabulary does not have.
    #[error("text contains {} character(s) not in the model's vocabulary: {}", .0.len(), fmt_unknown(.0))]
    UnknownChars(Vec<char>),

    /// A tokenizer could not be trained, loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A checkpoint file is damaged, of another version, or does not fit what it is used for.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// An I/O step of saving or loading a checkpoint failed. `action` says which step, e.g.
    /// "cannot write temporary file /runs/.model.qck.tmp-41-0".
    #[error("checkpoint {path}: {action}: {cause}")]
    CheckpointIo {
        path: PathBuf,
        action: String,
        /// The I/O error (in the message, not chained, as for `Io`).
        cause: std::io::Error,
    },

    /// Shapes that do not fit together (a programming or data error caught at run time).
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// Training diverged (non-finite loss) and could not recover.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// A metrics log (`NAME-metrics.jsonl`) cannot be read or has nothing to plot.
    #[error("metrics log {path}: {msg}")]
    Metrics { path: PathBuf, msg: String },

    /// A plot could not be drawn or encoded.
    #[error("plot: {0}")]
    Plot(String),

    /// The user interrupted a long operation (Ctrl-C); nothing half-done was left behind.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The HTTP server could not start or run (`quill serve`), e.g. the address is taken.
    #[error("server: {0}")]
    Serve(String),

    /// Drawing to or reading keys from the terminal failed (the training dashboard).
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

fn fmt_unknown(chars: &[char]) -> String {
    chars
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    /// An invalid configuration value.
    pub fn config(name: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidConfig {
            name,
            msg: msg.into(),
        }
    }
}
