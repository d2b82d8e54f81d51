//! smelt-formats: the checkpoint formats smelt reads, with no knowledge of merging.
//!
//! * [`dtype`]: tensor element types ([`DType`]) and the slice conversions between their
//!   little-endian bytes and `f32` (round to nearest even, as PyTorch does);
//! * [`safetensors`]: a safetensors file's header (every tensor's dtype, shape and absolute
//!   byte range, fully validated) and a sharded model's `model.safetensors.index.json`;
//! * [`torch`]: PyTorch checkpoints (`pytorch_model.bin`): the ZIP container and a restricted
//!   unpickler that never runs pickled code.
//!
//! Everything here parses bytes or text that come from untrusted files and locates tensor data
//! without copying it: callers (smelt's `merge-core`) memory-map the files and read tensors in
//! place. The crate is separate from the merge engine so that its parsers can be fuzzed,
//! tested and documented on their own (`fuzz/` depends on it alone for these targets), and so
//! that the engine's dependencies point one way: `merge-core` uses this crate, never the
//! reverse. Errors are [`FormatError`]s naming the file concerned.
#![deny(missing_docs)]

pub mod dtype;
pub mod error;
pub mod safetensors;
pub mod torch;

pub use dtype::DType;
pub use error::{FormatError, FormatResult};
