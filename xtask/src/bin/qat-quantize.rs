//! `qat-quantize`: bring your own float ONNX model, quantize it post-training, and write every
//! deployed format with a report (built and run by `cargo xtask quantize`; see
//! `xtask/src/quantize/mod.rs` and docs/import.md).

#[path = "../quantize/mod.rs"]
mod quantize;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xtask::binary::main_with(|| quantize::run(&quantize::Args::parse()))
}
