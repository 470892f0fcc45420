//! `qat-pipeline`: the paper's experiment end to end (built and run by `cargo xtask pipeline`).

#[path = "../pipeline/mod.rs"]
mod pipeline;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    xtask::binary::main_with(|| {
        qat_train::trainer::tune_allocator();
        pipeline::run(&pipeline::Args::parse()).map(|_| ())
    })
}
