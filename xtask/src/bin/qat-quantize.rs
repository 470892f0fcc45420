//! `qat-quantize`: bring your own float ONNX model, quantize it post-training, and write every
//! deployed format with a report (built and run by `cargo xtask quantize`; see
//! `xtask/src/quantize/mod.rs` and docs/import.md).

#[path = "../quantize/mod.rs"]
mod quantize;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match quantize::run(&quantize::Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
