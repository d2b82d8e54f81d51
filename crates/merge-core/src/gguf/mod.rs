//! GGUF export: ggml tensor types and block quantizers ([`quant`]), the container writer and
//! reader, llama.cpp's per-tensor type mixtures, HF→GGUF names and metadata.

pub mod error;
pub mod file;
pub mod types;

pub use error::{GgufError, GgufResult};
pub use file::{
    GgufFile, GgufLayout, GgufValue, GgufValueType, GgufWriter, TensorInfo, TensorSpec,
};
pub use types::GgmlType;
