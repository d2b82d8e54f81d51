//! GGUF export: ggml tensor types and block quantizers ([`quant`]), the container writer and
//! reader, llama.cpp's per-tensor type mixtures, HF→GGUF names and metadata.

pub mod arch;
pub mod convert;
pub mod error;
pub mod file;
pub mod mixture;
pub mod pretok;
pub mod quant;
pub mod tokenizer;
pub mod types;

pub use error::{GgufError, GgufResult};
pub use file::{
    GgufFile, GgufLayout, GgufValue, GgufValueType, GgufWriter, TensorInfo, TensorSpec,
};
pub use mixture::FileType;
pub use types::GgmlType;
