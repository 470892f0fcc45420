//! `cargo xtask bench …`: benchmarks report GOPS and ratios (never asserted in tests).

use anyhow::Result;
use clap::Subcommand;

use crate::{cargo, setup};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// int8 kernels per path (reference, portable, AVX2, AVX-512 VNNI) against an f32 baseline.
    Kernels {
        /// Threads (default: all).
        #[arg(long)]
        threads: Option<usize>,
        /// Fewer repetitions, smaller budget.
        #[arg(long)]
        quick: bool,
    },
    /// Training images/s, float vs QAT (MobileNet-v1 on MNIST, batch 64).
    Train,
}

pub fn run(what: BenchCmd) -> Result<()> {
    match what {
        BenchCmd::Kernels { threads, quick } => {
            // The runtime has no libtorch dependency: no setup needed.
            let json = "target/qat-bench/kernels.json";
            let threads = threads.map(|t| t.to_string());
            let mut args = vec![
                "run",
                "--release",
                "-p",
                "qat-int8-runtime",
                "--example",
                "bench_kernels",
                "--",
                "--json",
                json,
            ];
            if let Some(t) = threads.as_deref() {
                args.extend(["--threads", t]);
            }
            if quick {
                args.push("--quick");
            }
            cargo::run(None, &args)
        }
        BenchCmd::Train => {
            let libtorch = setup::ensure_libtorch(false)?;
            cargo::run(
                Some(&libtorch),
                &[
                    "run",
                    "--release",
                    "-p",
                    "qat-train",
                    "--example",
                    "bench_train",
                ],
            )
        }
    }
}
