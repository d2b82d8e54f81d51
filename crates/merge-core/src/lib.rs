//! merge-core: the library behind `smelt`.
#![deny(missing_docs)]

pub mod dtype;
pub mod error;
pub mod gguf;
pub mod lora;
pub mod methods;
pub mod torch;

pub use dtype::DType;
pub use error::{Error, Result};
