//! The paper's experiment end to end (issue 7): float training → PTQ (per tensor, per channel) →
//! QAT fine-tuning → export → the integer runtime, at 8 bits and at a low bit width, with a report.
//!
//! Every accuracy in the report is measured here, on the test split: float and fake-quant numbers by
//! libtorch, integer numbers by `qat-int8-runtime` running the exported `Int8Model`.

pub mod config;
pub mod plots;
pub mod report;
mod stages;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;

use config::Config;

/// Command-line arguments of `qat-pipeline` (`cargo xtask pipeline -- …`).
#[derive(Debug, Parser)]
#[command(
    name = "qat-pipeline",
    about = "float → PTQ → QAT → int8 on MNIST, with a report"
)]
pub struct Args {
    /// Configuration file (TOML); default `configs/default.toml`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tiny subset and a few steps (smoke test; accuracy is not meaningful).
    #[arg(long)]
    pub quick: bool,
    /// Add the ablation studies (ReLU vs ReLU6, bit sweep, BN correction, granularity).
    #[arg(long)]
    pub ablations: bool,
    /// Output directory (default `target/qat-report/<run-id>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `YYYYmmdd-HHMMSS` in UTC, from the system clock.
fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the pipeline and writes the report; returns the report directory.
pub fn run(args: &Args) -> Result<PathBuf> {
    let started = Instant::now();
    let root = workspace_root();
    let cfg_path = args
        .config
        .clone()
        .unwrap_or_else(|| root.join("configs").join("default.toml"));
    let mut cfg = Config::load(&cfg_path)?;
    if args.quick {
        cfg = cfg.quick();
    }
    let out = match &args.out {
        Some(o) => o.clone(),
        None => root.join("target").join("qat-report").join(run_id()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    tracing::info!(config = %cfg_path.display(), out = %out.display(), quick = args.quick, "pipeline start");
    let report = stages::Pipeline::new(cfg, &root, &out, args)?.run(started)?;
    println!("\n{}", report.results_table());
    println!("report: {}", out.join("report.md").display());
    Ok(out)
}
