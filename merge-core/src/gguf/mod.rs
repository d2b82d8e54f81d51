//! The merge engine's GGUF route. The format itself (container, quantizers, file types,
//! architectures, tokenizer metadata, the HF → GGUF conversion plan) is the [`smelt_gguf`]
//! crate; here is what needs the engine:
//!
//! * [`sink`]: [`sink::GgufSink`], the `TensorSink` that quantizes a merge plan's output tensors
//!   straight into a GGUF file (`smelt run --gguf`), and [`sink::Tee`];
//! * [`convert_folder`]: a model folder, opened as a checkpoint, to a GGUF file
//!   (`smelt quantize`).

mod folder;
pub mod sink;

pub use folder::{ConvertReport, convert_folder};
