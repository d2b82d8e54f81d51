//! The error type of the checkpoint formats: a file that cannot be read, or one whose bytes
//! are not a checkpoint smelt can use. Every variant names the file.

use std::path::PathBuf;

/// Every way reading a checkpoint file's structure can fail.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is malformed or unsupported (bad header, truncated data, overlapping
    /// tensors, a forbidden pickle global, ...).
    #[error("{path}: invalid checkpoint: {reason}")]
    Malformed {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl FormatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-checkpoint error for `path`.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        FormatError::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type FormatResult<T> = std::result::Result<T, FormatError>;
