//! GGUF export: everything between a Hugging Face model folder and a llama.cpp GGUF file.
//!
//! * [`types`]: ggml tensor types; [`quant`]: ggml's reference block quantizers;
//! * [`file`](mod@file): the GGUF v3 container (planned streaming writer, validating reader);
//! * [`mixture`]: llama.cpp file types (Q4_K_M, ...) and the per-tensor type rules;
//! * [`arch`]: per-architecture names, metadata and tensor transforms;
//! * [`tokenizer`] and [`pretok`]: `tokenizer.*` metadata;
//! * [`convert`]: the conversion plan and [`convert::convert_folder`].

pub mod arch;
pub mod convert;
pub mod error;
pub mod file;
pub mod mixture;
pub mod pretok;
pub mod quant;
pub mod sink;
pub mod tokenizer;
pub mod types;

pub use error::{GgufError, GgufResult};
pub use file::{
    GgufFile, GgufLayout, GgufValue, GgufValueType, GgufWriter, TensorInfo, TensorSpec,
};
pub use mixture::FileType;
pub use types::GgmlType;
