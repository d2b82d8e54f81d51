//! smelt-hub: models from the Hugging Face Hub for smelt.
//!
//! A hub id in a recipe (`org/name`, `org/name@revision`) that is neither a local path nor in
//! the local cache is downloaded into the standard cache layout ([`cache`]), so that
//! transformers, huggingface-cli and mergekit share it with smelt. Only what a merge needs is
//! fetched ([`select`]); downloads run a few at a time, resume an interrupted file with a
//! `Range` request and check every LFS file's sha256 against its ETag before it enters the
//! cache ([`client`], [`fetch`]).
//!
//! Why `ureq` rather than the `hf-hub` crate: hf-hub's blocking API neither resumes a partial
//! blob with `Range` nor checks the sha256 of what it wrote, and it decides itself which
//! files to fetch one call at a time; smelt needs all three under its control, and needs
//! every missing model listed (with sizes) before the first byte is downloaded. The Hub's file
//! API is small enough to speak directly with a maintained blocking HTTP client.
//!
//! The library never prints: progress is a callback.
#![deny(missing_docs)]

pub mod cache;
pub mod client;
pub mod config;
mod error;
pub mod fetch;
pub mod select;

pub use config::HubConfig;
pub use error::HubError;
pub use fetch::{Need, Progress, RepoPlan, download, missing, needs, needs_at, plan};
