//! merge-core: the library behind `smelt`, a mergekit-compatible model merger.
//!
//! The pipeline has five rooms: [`recipe`] (the YAML, strictly parsed) → [`plan`] (what to
//! compute: every output tensor with its inputs and resolved parameters) → [`exec`] (when:
//! a rayon pool under a memory budget) → [`methods`] (how: one kernel per merge method) →
//! a sink ([`writer`] for safetensors shards). [`checkpoint`] opens inputs read-only with
//! memory maps, [`arch`] knows model layouts, [`output`] assembles the folder atomically ([`partial`] cleans up after interrupted runs) and
//! [`merge`] ties it all together; [`batch`] runs many recipes as stages of one build. The
//! library never prints; progress is a callback.
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
