//! `cargo xtask bench …`: benchmarks report GOPS and ratios (never asserted in tests).

use anyhow::Result;
use clap::Subcommand;

use crate::{cargo, peers, setup};

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
    /// One exported model in four engines: the qat runtime, onnxruntime int8 (QDQ) and f32,
    /// LiteRT int8 (XNNPACK); batch 1/64, 1/2 threads; µs per image and ratios
    /// (`target/qat-bench/models/models.{json,md}`).
    Models {
        /// Time this `.qat8` model (default: a MobileNet-v1 for 28×28×1 with random weights).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Seconds per timing round.
        #[arg(long, default_value_t = 0.5)]
        min_time: f64,
    },
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
        BenchCmd::Models { model, min_time } => {
            let python = peers::ensure_peers(false)?;
            let root = cargo::workspace_root().unwrap_or_default();
            let script = root.join("xtask/py/bench_models.py");
            let min_time = min_time.to_string();
            let (python, script) = (python.to_string_lossy(), script.to_string_lossy());
            let mut args = vec![
                "run",
                "--release",
                "-p",
                "qat-export",
                "--example",
                "bench_models",
                "--",
                "--python",
                &python,
                "--script",
                &script,
                "--min-time",
                &min_time,
            ];
            let model = model.map(|m| m.to_string_lossy().into_owned());
            if let Some(m) = model.as_deref() {
                args.extend(["--model", m]);
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
