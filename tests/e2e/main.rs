//! End-to-end tests of the `smelt` binary: one test binary (ripgrep's layout), modules by
//! area. Fixtures live in `tests/fixtures/` (a copy of the public parity set); synthetic
//! checkpoints for error cases are written by `util`.

mod batch;
mod cli;
mod determinism;
mod digests;
mod errors;
mod gguf_run;
mod hub;
mod inputs;
mod interrupt;
mod lock;
mod parity;
mod quantize;
mod recipes;
mod safety;
mod streaming;
mod util;
mod verdicts;
mod vocab;
