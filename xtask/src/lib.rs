//! The parts of xtask that both of its binaries use: the pipeline's configuration (read by
//! `qat-pipeline`), its report schema (written by `qat-pipeline`, read back as the same typed structs
//! by the smoke check of `cargo xtask test`), and the per-user cache directory.

pub mod cache;
pub mod config;
pub mod peers_cache;
pub mod report;
