//! The error type of GGUF export: malformed files, unsupported architectures or tokenizers,
//! bad configs. Every variant names the file, key or tensor concerned.

use std::path::PathBuf;

/// Everything that can go wrong while planning, writing or reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file being read is malformed or uses something this reader does not support.
    #[error("{path}: invalid GGUF file (at byte {offset}): {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset where the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Content handed to the writer would make a file llama.cpp rejects.
    #[error("cannot write GGUF: {0}")]
    Invalid(String),
    /// The model's architecture has no GGUF mapping in smelt.
    #[error("architecture `{arch}` is not supported for GGUF export (supported: {supported})")]
    UnsupportedArch {
        /// The `architectures[0]` / `model_type` found in config.json.
        arch: String,
        /// The supported architectures, comma-separated.
        supported: String,
    },
    /// config.json lacks a key or has a value of the wrong kind.
    #[error("config.json: {0}")]
    Config(String),
    /// A tokenizer file is missing, malformed or unsupported.
    #[error("{path}: {reason}")]
    Tokenizer {
        /// The tokenizer file (or model folder).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The byte-level BPE pre-tokenizer could not be identified.
    #[error(
        "cannot identify the BPE pre-tokenizer (tokenizer.ggml.pre): {reason}; pass `--pre NAME` \
         (for example llama-bpe, qwen2, gpt-2, tekken, smollm) naming llama.cpp's pre-tokenizer \
         for this tokenizer"
    )]
    UnknownPreTokenizer {
        /// Why it could not be identified.
        reason: String,
    },
    /// An unknown llama.cpp file type name.
    #[error("unknown GGUF file type `{name}` (supported: {supported})")]
    UnknownFileType {
        /// The name given.
        name: String,
        /// The supported names.
        supported: String,
    },
    /// A tensor is missing, has the wrong shape, or cannot be converted.
    #[error("tensor `{tensor}`: {reason}")]
    Tensor {
        /// The tensor name (HF or GGUF).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
}

impl GgufError {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }

    /// A tensor error.
    pub fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        GgufError::Tensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this module.
pub type GgufResult<T> = std::result::Result<T, GgufError>;
