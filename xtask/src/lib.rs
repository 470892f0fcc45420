//! The parts of xtask that both of its binaries use: the pipeline's configuration (read by
//! `qat-pipeline`), its report schema (written by `qat-pipeline`, read back as the same typed structs
//! by the smoke check of `cargo xtask test`), the per-user cache directory, child processes whose failure reports their stderr, and (with `torch`) the
//! start of the two binaries.

#[cfg(feature = "torch")]
pub mod binary;
pub mod cache;
pub mod config;
pub mod peers_cache;
pub mod process;
pub mod report;
