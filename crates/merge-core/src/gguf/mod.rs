//! GGUF export: ggml tensor types and block quantizers ([`quant`]), the container writer and
//! reader, llama.cpp's per-tensor type mixtures, HF→GGUF names and metadata.

pub mod quant;
pub mod types;

pub use types::GgmlType;
