//! `cargo xtask` — the project's task runner (small: one module per subcommand).
//!
//! | command | what |
//! |---|---|
//! | `cargo xtask setup [--data fashion-mnist]` | install libtorch 2.13, the peer runtimes (onnxruntime, LiteRT) and Gloo's headers (for qat-dist) once per machine, and a dataset |
//! | `cargo xtask export --format qat8\|tflite\|onnx --input M.qat8 --out F` | write a model in an interchange format |
//! | `cargo xtask test` | setup, `cargo fmt --check`, clippy `-D warnings`, all tests, the quick pipeline and quantize smoke runs |
//! | `cargo xtask pipeline [--config F] [--quick] [--ablations]` | float → PTQ → QAT → int8 on MNIST, with a report |
//! | `cargo xtask quantize --onnx M.onnx --data DIR [--target T] [--format F] [--mean M --std S] [--qat-epochs N] [--out DIR]` | import a float ONNX model, PTQ (or QAT fine-tuning), every deployed format run in its runtime, a report (docs/import.md) |
//! | `cargo xtask torch-models [--out DIR]` | regenerate the PyTorch-made test models `data/torch-models/*.onnx` |
//! | `cargo xtask bench kernels [--threads N] [--quick]` | int8 kernel GOPS vs f32 (JSON + table) |
//! | `cargo xtask bench train` | training images/s, float vs QAT |
//! | `cargo xtask bench models [--model M.qat8]` | one model in the qat runtime, onnxruntime int8/f32, LiteRT int8 (µs/image, ratios) |
//!
//! The default build of xtask has no libtorch dependency; pipeline code is in the `qat-pipeline`
//! binary (feature `torch`), which xtask builds and runs after setup.

mod bench;
mod cargo;
mod data;
mod export;
mod fuzz;
mod gloo;
mod peers;
mod quantize_smoke;
mod setup;
mod smoke;
mod test;
mod torch_models;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "qat project tasks", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install libtorch 2.13 into the per-user cache (or validate $LIBTORCH).
    Setup {
        /// Print only the libtorch directory (for `export LIBTORCH=$(cargo xtask setup --print-libtorch)`).
        #[arg(long)]
        print_libtorch: bool,
        /// Also install a dataset into the per-user cache (`<cache>/datasets/NAME`).
        #[arg(long, value_enum)]
        data: Option<data::Dataset>,
        /// With `--data`: unpack this Debian package file instead of running `apt-get download`.
        #[arg(long, requires = "data")]
        deb: Option<std::path::PathBuf>,
        /// Print only the peer runtimes' Python (onnxruntime, LiteRT), installing them if needed.
        #[arg(long)]
        print_peers_python: bool,
    },
    /// setup + fmt --check + clippy -D warnings + cargo test --workspace + pipeline and quantize smoke runs.
    Test {
        /// Skip the quick pipeline and quantize smoke runs.
        #[arg(long)]
        no_smoke: bool,
    },
    /// The paper's experiment end to end (arguments go to the pipeline; see `--help` there).
    Pipeline {
        /// Build the pipeline in the dev profile instead of release.
        #[arg(long)]
        debug_build: bool,
        /// Arguments for the pipeline, e.g. `--quick`, `--config configs/default.toml`, `--ablations`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Import a float ONNX model, quantize it post-training and write every deployed format with a
    /// report (arguments go to `qat-quantize`; see `--help` there).
    Quantize {
        /// Arguments, e.g. `--onnx model.onnx --data DIR --out DIR`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate the PyTorch-made ONNX test models (`data/torch-models`, see
    /// `xtask/py/make_torch_models.py`) with setup's torch and the pinned `onnx` package.
    TorchModels(torch_models::TorchModelsArgs),
    /// Check a pipeline report directory (structure and int8-vs-simulation agreement).
    CheckReport {
        /// The report directory (holding report.json).
        dir: std::path::PathBuf,
    },
    /// Write a `.qat8` model as `.qat8`, `.tflite` or ONNX QDQ (`--format`).
    Export(export::ExportArgs),
    /// Mutation-fuzz the .qat8 loader and executor, the FloatGraph readers, configs, checkpoints and IDX/CIFAR files (see qat-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.cmd {
        Cmd::Setup {
            print_peers_python: true,
            ..
        } => peers::ensure_peers(true).map(|python| println!("{}", python.display())),
        Cmd::Setup {
            print_libtorch,
            data,
            deb,
            ..
        } => data
            .map_or(Ok(()), |d| data::ensure(d, deb).map(drop))
            .and_then(|()| setup::ensure_libtorch(print_libtorch))
            .and_then(|dir| gloo::ensure_gloo(print_libtorch).map(|_| dir))
            .and_then(|dir| {
                if print_libtorch {
                    println!("{}", dir.display());
                    return Ok(());
                }
                let python = peers::ensure_peers(false)?;
                eprintln!(
                    "[setup] ready. For plain cargo commands on tch crates: export LIBTORCH={}\n\
                 [setup] for the cross-check tests: export {}={}",
                    dir.display(),
                    peers::PYTHON_ENV,
                    python.display()
                );
                Ok(())
            }),
        Cmd::Test { no_smoke } => test::run(no_smoke),
        Cmd::Pipeline { debug_build, args } => torch_bin("qat-pipeline", debug_build, &args),
        Cmd::Quantize { args } => quantize(&args),
        Cmd::TorchModels(args) => torch_models::run(&args),
        Cmd::CheckReport { dir } => smoke::check_report(&dir),
        Cmd::Export(args) => export::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Bench { what } => bench::run(what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `qat-quantize` with the peer runtimes' Python in `QAT_PEERS_PYTHON` (installed by setup; the
/// written files then run in LiteRT and onnxruntime), unless `--no-runtimes` or already set.
fn quantize(args: &[String]) -> Result<()> {
    let mut env = Vec::new();
    if !args.iter().any(|a| a == "--no-runtimes") && std::env::var_os(peers::PYTHON_ENV).is_none() {
        match peers::ensure_peers(true) {
            Ok(python) => env.push((peers::PYTHON_ENV, python.into_os_string())),
            Err(e) => eprintln!(
                "[quantize] the written files will not run in LiteRT and onnxruntime: {e:#}"
            ),
        }
    }
    torch_bin_env("qat-quantize", false, &env, args)
}

/// Builds and runs one of xtask's libtorch binaries after setup.
fn torch_bin(bin: &str, debug_build: bool, args: &[String]) -> Result<()> {
    torch_bin_env(bin, debug_build, &[], args)
}

/// [`torch_bin`] with extra environment variables for the binary.
fn torch_bin_env(
    bin: &str,
    debug_build: bool,
    env: &[(&str, std::ffi::OsString)],
    args: &[String],
) -> Result<()> {
    let libtorch = setup::ensure_libtorch(false)?;
    let mut cmd = vec!["run"];
    if !debug_build {
        cmd.push("--release");
    }
    cmd.extend(["-p", "xtask", "--features", "torch", "--bin", bin, "--"]);
    cmd.extend(args.iter().map(String::as_str));
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    cargo::run_env(Some(&libtorch), &env, &cmd)
}
