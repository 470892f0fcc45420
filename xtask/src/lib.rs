//! The parts of xtask that its binaries share: the pipeline's configuration (read by
//! `qat-pipeline`), the report schemas of `qat-pipeline` and `qat-quantize` (written by them, read
//! back as the same typed structs by the smoke checks of `cargo xtask test`), the per-user cache
//! directory, child processes whose failure reports their stderr, and (with `torch`) the start of
//! the two libtorch binaries.

#[cfg(feature = "torch")]
pub mod binary;
pub mod cache;
pub mod config;
pub mod peers_cache;
pub mod process;
pub mod quantize_report;
pub mod report;
