//! The library's error type: one enum, every variant carrying the context a user needs to fix
//! the problem (the file, tensor, recipe key or line). The `smelt` binary turns these into
//! messages and a non-zero exit; the library never prints.

use std::path::PathBuf;

/// Every way a smelt operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is malformed (bad header, truncated data, overlapping tensors, ...).
    #[error("{path}: invalid checkpoint: {reason}")]
    BadCheckpoint {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A model reference could not be resolved to files on disk.
    #[error("model `{reference}` not found: {reason}")]
    ModelNotFound {
        /// The reference as written in the recipe.
        reference: String,
        /// Where smelt looked.
        reason: String,
    },
    /// The recipe could not be read or is invalid.
    #[error("{path}: {message}")]
    Recipe {
        /// The recipe file (`<string>` when parsed from memory).
        path: PathBuf,
        /// What is wrong, with line and column where known.
        message: String,
    },
    /// A recipe with problems: every one found in the file, in file order.
    #[error("{report}")]
    RecipeProblems {
        /// The recipe file.
        path: PathBuf,
        /// The problems.
        problems: Vec<crate::recipe::Problem>,
        /// Every problem's message with the lines of the file it concerns.
        report: String,
    },
    /// A tensor that the plan needs is absent from a model.
    #[error("tensor `{tensor}` is missing from model `{model}`{hint}")]
    MissingTensor {
        /// The tensor name looked up.
        tensor: String,
        /// The model it was looked up in.
        model: String,
        /// Extra context (for example which other model has it).
        hint: String,
    },
    /// Two inputs of one merge have incompatible shapes.
    #[error("shape mismatch for tensor `{tensor}`: {detail}")]
    ShapeMismatch {
        /// The output tensor being merged.
        tensor: String,
        /// Both shapes, with the models they come from.
        detail: String,
    },
    /// A tensor has a dtype smelt cannot use where it appears.
    #[error("tensor `{tensor}` in {model}: {reason}")]
    Dtype {
        /// The tensor name.
        tensor: String,
        /// The model it comes from.
        model: String,
        /// Why the dtype is not usable here.
        reason: String,
    },
    /// A merge method rejected its inputs or parameters.
    #[error("{method} merge of `{tensor}`: {reason}")]
    Method {
        /// The merge method.
        method: String,
        /// The output tensor.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
    /// A parameter a method requires is set at no level for a tensor.
    #[error(
        "missing required parameter `{name}`{} for tensor `{tensor}` (merge method `{method}`)",
        .model.as_ref().map(|m| format!(" for model `{m}`")).unwrap_or_default()
    )]
    MissingParameter {
        /// The parameter.
        name: String,
        /// The model it is missing for (`None` for a global parameter).
        model: Option<String>,
        /// The output tensor.
        tensor: String,
        /// The merge method.
        method: String,
    },
    /// The models' configs do not say how many layers a model has (slices need it).
    #[error("cannot tell how many layers model `{model}` has")]
    UnknownLayerCount {
        /// The model.
        model: String,
    },
    /// Two models declare different architectures (and `--allow-crimes` is not set).
    #[error(
        "models have different architectures: `{first}` is {first_arch} but `{other}` is {other_arch}; pass --allow-crimes to merge them anyway"
    )]
    ArchitectureMismatch {
        /// The first model.
        first: String,
        /// Its architecture class (`?` when its config names none).
        first_arch: String,
        /// The first model of another architecture.
        other: String,
        /// That model's architecture class.
        other_arch: String,
    },
    /// The tokenizer options need the base model's tokenizer, and it has none.
    #[error(
        "the tokenizer options need the tokenizer of model `{model}` (the base): {location} has no tokenizer.json"
    )]
    BaseWithoutTokenizer {
        /// The base model.
        model: String,
        /// Its folder (or "a bare weights file").
        location: String,
    },
    /// The model or folder named by `tokenizer.source` has no tokenizer.
    #[error("tokenizer source {tokenizer_source} has no tokenizer.json")]
    TokenizerSourceWithoutTokenizer {
        /// The source as it appears in the message: `` `model` `` or a folder path.
        tokenizer_source: String,
    },
    /// The output tokenizer's ids have a hole (a token whose id is past the others).
    #[error(
        "the output vocabulary's ids are not contiguous: {tokens} tokens, but token {token:?} has id {id} (expected {expected})"
    )]
    VocabularyIdsNotContiguous {
        /// The number of tokens.
        tokens: usize,
        /// The first token out of place.
        token: String,
        /// Its id.
        id: usize,
        /// The id it would need.
        expected: usize,
    },
    /// A token's embedding row source (`tokenizer.tokens.<token>.source`) cannot be used for
    /// a tensor.
    #[error("tensor `{tensor}`: {reason}")]
    TokenRowSource {
        /// The embedding or output-head tensor.
        tensor: String,
        /// What is wrong with the source.
        reason: String,
    },
    /// A GGUF output needs the donor model's config.json, and there is none.
    #[error("a GGUF file needs the model's config.json, and the donor model has none")]
    GgufWithoutConfig,
    /// The GGUF conversion plan names a tensor the merge plan does not produce.
    #[error("GGUF tensor {gguf_tensor} has no source tensor {source_tensor}")]
    GgufSourceMissing {
        /// The GGUF tensor.
        gguf_tensor: String,
        /// The merged tensor it should come from.
        source_tensor: String,
    },
    /// `--locked`: the recipe, seed or inputs differ from the lock file.
    #[error("the merge does not match its lock (--locked):\n  {}", .differences.join("\n  "))]
    LockMismatch {
        /// One line per difference.
        differences: Vec<String>,
    },
    /// A thread could not be started.
    #[error("cannot start {what}: {reason}")]
    ThreadStart {
        /// The thread or pool (`worker threads`, `the hashing thread`).
        what: String,
        /// The system's reason.
        reason: String,
    },
    /// A helper thread ended without a result (it panicked).
    #[error("{what} failed")]
    ThreadFailed {
        /// What the thread did (`input hashing`, `the hashing thread`).
        what: String,
    },
    /// An output file's hash was requested before every byte of it was written.
    #[error("{}: bytes from {from} on were never written", .path.display())]
    Unwritten {
        /// The output file.
        path: PathBuf,
        /// The first byte never reported written.
        from: u64,
    },
    /// A parameter value outside the values that make sense.
    #[error("parameter `{name}` = {value} is outside [{lo}, {hi}] ({at})")]
    ParamOutOfRange {
        /// The parameter.
        name: String,
        /// Its value.
        value: f64,
        /// Smallest meaningful value.
        lo: f64,
        /// Largest meaningful value.
        hi: f64,
        /// Where it applies (model and tensor).
        at: String,
    },
    /// A merge produced NaN or infinite values from finite inputs.
    #[error(
        "{method} merge of `{tensor}` produced {what} from finite inputs; no model was written"
    )]
    NonFinite {
        /// The method.
        method: String,
        /// The output tensor.
        tensor: String,
        /// What was produced.
        what: String,
    },
    /// The output location is unusable.
    #[error("output {path}: {reason}")]
    Output {
        /// The requested output path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The run was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// GGUF export or reading failed.
    #[error(transparent)]
    Gguf(#[from] smelt_gguf::GgufError),
}

/// A checkpoint format's error becomes the variant of the same meaning (the messages are the
/// same), so callers match [`Error::Io`] and [`Error::BadCheckpoint`] whichever layer found it.
impl From<smelt_formats::FormatError> for Error {
    fn from(e: smelt_formats::FormatError) -> Self {
        match e {
            smelt_formats::FormatError::Io { path, source } => Error::Io { path, source },
            smelt_formats::FormatError::Malformed { path, reason } => {
                Error::BadCheckpoint { path, reason }
            }
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-checkpoint error for `path`.
    pub fn bad_checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadCheckpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per specific variant: the message keeps its wording, and callers match the
    //! variant rather than the text.
    use super::*;

    #[test]
    fn missing_parameter_names_the_model_when_per_model() {
        let e = Error::MissingParameter {
            name: "weight".into(),
            model: Some("org/b".into()),
            tensor: "lm_head.weight".into(),
            method: "linear".into(),
        };
        assert_eq!(
            e.to_string(),
            "missing required parameter `weight` for model `org/b` for tensor `lm_head.weight` (merge method `linear`)"
        );
        let e = Error::MissingParameter {
            name: "t".into(),
            model: None,
            tensor: "x".into(),
            method: "slerp".into(),
        };
        assert_eq!(
            e.to_string(),
            "missing required parameter `t` for tensor `x` (merge method `slerp`)"
        );
    }

    #[test]
    fn unknown_layer_count() {
        let e = Error::UnknownLayerCount { model: "a".into() };
        assert_eq!(e.to_string(), "cannot tell how many layers model `a` has");
    }

    #[test]
    fn architecture_mismatch() {
        let e = Error::ArchitectureMismatch {
            first: "a".into(),
            first_arch: "LlamaForCausalLM".into(),
            other: "b".into(),
            other_arch: "?".into(),
        };
        assert_eq!(
            e.to_string(),
            "models have different architectures: `a` is LlamaForCausalLM but `b` is ?; pass --allow-crimes to merge them anyway"
        );
    }

    #[test]
    fn base_without_tokenizer() {
        let e = Error::BaseWithoutTokenizer {
            model: "a".into(),
            location: "a bare weights file".into(),
        };
        assert_eq!(
            e.to_string(),
            "the tokenizer options need the tokenizer of model `a` (the base): a bare weights file has no tokenizer.json"
        );
    }

    #[test]
    fn tokenizer_source_without_tokenizer() {
        let e = Error::TokenizerSourceWithoutTokenizer {
            tokenizer_source: "`b`".into(),
        };
        assert_eq!(e.to_string(), "tokenizer source `b` has no tokenizer.json");
    }

    #[test]
    fn vocabulary_ids_not_contiguous() {
        let e = Error::VocabularyIdsNotContiguous {
            tokens: 3,
            token: "<far>".into(),
            id: 5,
            expected: 2,
        };
        assert_eq!(
            e.to_string(),
            "the output vocabulary's ids are not contiguous: 3 tokens, but token \"<far>\" has id 5 (expected 2)"
        );
    }

    #[test]
    fn token_row_source() {
        let e = Error::TokenRowSource {
            tensor: "lm_head.weight".into(),
            reason: "why".into(),
        };
        assert_eq!(e.to_string(), "tensor `lm_head.weight`: why");
    }

    #[test]
    fn gguf_without_config_and_gguf_source_missing() {
        assert_eq!(
            Error::GgufWithoutConfig.to_string(),
            "a GGUF file needs the model's config.json, and the donor model has none"
        );
        let e = Error::GgufSourceMissing {
            gguf_tensor: "token_embd.weight".into(),
            source_tensor: "model.embed_tokens.weight".into(),
        };
        assert_eq!(
            e.to_string(),
            "GGUF tensor token_embd.weight has no source tensor model.embed_tokens.weight"
        );
    }

    #[test]
    fn lock_mismatch_lists_every_difference() {
        let e = Error::LockMismatch {
            differences: vec!["recipe text differs".into(), "seed differs".into()],
        };
        assert_eq!(
            e.to_string(),
            "the merge does not match its lock (--locked):\n  recipe text differs\n  seed differs"
        );
    }

    #[test]
    fn thread_start_and_thread_failed() {
        let e = Error::ThreadStart {
            what: "worker threads".into(),
            reason: "no".into(),
        };
        assert_eq!(e.to_string(), "cannot start worker threads: no");
        let e = Error::ThreadFailed {
            what: "input hashing".into(),
        };
        assert_eq!(e.to_string(), "input hashing failed");
    }

    #[test]
    fn unwritten() {
        let e = Error::Unwritten {
            path: "out/model.safetensors".into(),
            from: 40,
        };
        assert_eq!(
            e.to_string(),
            "out/model.safetensors: bytes from 40 on were never written"
        );
    }
}
