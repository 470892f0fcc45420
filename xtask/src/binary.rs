//! The start of xtask's two binaries (`qat-pipeline`, `qat-quantize`): logging to stderr and the
//! exit status.

use std::process::ExitCode;

/// Sets up logging (`RUST_LOG`, default `warn`, to stderr), runs `run` and maps its result to the
/// exit status: success, or the error chain on stderr and failure.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
