//! smelt-gguf: llama.cpp's GGUF format, with no knowledge of merging.
//!
//! * [`types`]: ggml tensor types; [`quant`]: ggml's reference block quantizers and
//!   dequantizers, bit-exact;
//! * [`file`](mod@file): the GGUF v3 container (planned streaming writer, validating reader);
//! * [`mixture`]: llama.cpp file types (Q4_K_M, ...) and the per-tensor type rules;
//! * [`arch`]: per-architecture names, metadata and tensor transforms;
//! * [`tokenizer`] and [`pretok`]: `tokenizer.*` metadata from a model's tokenizer files;
//! * [`convert`]: the HF → GGUF conversion plan (metadata and ordered tensor infos, from a
//!   config.json, a tensor list and the tokenizer files) and [`convert::encode_tensor`].
//!
//! The crate turns values the caller supplies into GGUF bytes (and reads GGUF files back); it
//! never opens a checkpoint or runs a merge. Keeping it apart from the merge engine lets the
//! format be tested against llama.cpp's reference files, fuzzed and documented on its own,
//! and keeps dependencies one-way: `merge-core` streams merged tensors into it (its GGUF sink
//! and `convert_folder`), never the reverse. Errors are [`GgufError`]s naming the file, key or
//! tensor concerned.
#![deny(missing_docs)]

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
