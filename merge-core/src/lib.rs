//! merge-core: the library behind `smelt`, a mergekit-compatible model merger.
//!
//! The pipeline has five rooms: [`recipe`] (the YAML, strictly parsed) → [`plan`] (what to
//! compute: every output tensor with its inputs and resolved parameters; [`vocab`] plans
//! merged vocabularies) → [`exec`] (when: a rayon pool under a memory budget) → [`methods`]
//! (how: one kernel per merge method) → a sink ([`writer`] for safetensors shards,
//! [`gguf::sink`] for GGUF). [`checkpoint`] opens inputs read-only with memory maps, [`lora`]
//! adds adapters' deltas as tensors are read, [`arch`] knows model layouts, [`output`]
//! assembles the folder atomically ([`partial`] cleans up after interrupted runs), [`lock`]
//! records what was read and written, and [`merge`] ties it all together; [`batch`] runs many
//! recipes as stages of one build, [`convert`] rewrites checkpoints as safetensors and
//! [`gguf::convert_folder`] converts a model folder to GGUF. The library never prints;
//! progress is a callback.
//!
//! The file formats live in crates of their own that know nothing of merging, and this crate
//! depends on them, never the reverse: [`smelt_formats`] (dtypes, safetensors headers and
//! indexes, PyTorch zip checkpoints; [`dtype`] is re-exported from it) and [`smelt_gguf`] (the
//! GGUF container, quantizers, file types, architectures, tokenizer metadata and the HF → GGUF
//! plan).
#![deny(missing_docs)]

pub mod arch;
pub mod batch;
pub mod checkpoint;
pub mod convert;
pub mod error;
pub mod exec;
pub mod gguf;
pub mod lock;
pub mod lora;
pub mod merge;
pub mod methods;
pub mod output;
pub mod partial;
pub mod plan;
pub mod recipe;
pub mod vocab;
pub mod writer;

pub use error::{Error, Result};
pub use smelt_formats::DType;
/// Tensor element types, from [`smelt_formats`] (re-exported: the kernels use them everywhere).
pub use smelt_formats::dtype;
