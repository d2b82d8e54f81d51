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
    /// The plan cannot be built from this recipe and these models.
    #[error("{0}")]
    Plan(String),
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
