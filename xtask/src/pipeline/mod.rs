//! The paper's experiment end to end: float training → PTQ (per tensor, per channel) → QAT
//! fine-tuning → export → the integer runtime, at 8 bits and at a low bit width, with a report.
//!
//! Every accuracy in the report is measured here, on the test split: float and fake-quant numbers by
//! libtorch, integer numbers by `qat-int8-runtime` running the exported `Int8Model`.
//!
//! The configuration ([`xtask::config`]) and the report schema ([`xtask::report`]) live in xtask's
//! library, which the smoke check shares.
//!
//! | file | what |
//! |---|---|
//! | `data.rs` | the dataset, its splits and NHWC/NCHW batches |
//! | `train.rs` | float training and QAT fine-tuning of one [`study::Run`] |
//! | `eval.rs` | PTQ, the integer runtime's accuracy, rounding modes, latency |
//! | `study.rs` | studies as data: a name and variants, each the base run with a few fields changed |
//! | `mixed.rs` | the sensitivity and mixed-precision studies (`--study`) |
//! | `causes.rs` | per-layer causes of PTQ loss and the accuracy each fix buys |
//! | `deployed.rs` | the exported formats run by their own runtimes (LiteRT, onnxruntime) |
//! | `ort_latency.rs` | the latency table's onnxruntime int8 (QDQ) and f32 rows, with qat / peer ratios |
//! | `stages.rs` | [`Pipeline::run`]: the stages in order, and the typed report |
//! | `plots.rs` | PNG/SVG plots of the report |

mod causes;
mod data;
mod deployed;
mod eval;
mod mixed;
mod ort_latency;
pub mod plots;
mod stages;
mod study;
mod train;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::Parser;
use ndarray::ArrayD;
use qat_int8_runtime::Target;
use qat_train::data::{Dataset, Normalize};
use tch::Device;

use xtask::{config::Config, report::DatasetInfo};

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
    /// Optional studies, comma-separated: `sensitivity` (needs `data.validation`), `mixed-precision`
    /// (implies sensitivity).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub study: Vec<OptionalStudy>,
    /// Output directory (default `target/qat-report/<run-id>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Train for this deployment target and export to it: `qat`, `tflite`, `ort`, `xnnpack`
    /// (overrides `qat.target`).
    #[arg(long, value_parser = parse_target)]
    pub target: Option<Target>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse::<Target>().map_err(|e| e.to_string())
}

/// The studies `--study` adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptionalStudy {
    /// Per-layer, per-width accuracy drop on the validation split, as a heat map.
    Sensitivity,
    /// Per-layer widths chosen from the sensitivities within the uniform low-bit model's bytes.
    MixedPrecision,
}

/// Pipeline state shared by the stages: the configuration and the loaded data.
pub struct Pipeline {
    cfg: Config,
    out: PathBuf,
    progress: bool,
    ablations: bool,
    studies: Vec<OptionalStudy>,
    quick: bool,
    device: Device,
    dataset: DatasetInfo,
    train: Dataset,
    test: Dataset,
    normalize: Normalize,
    /// The whole test split as NHWC f32 (normalized), and labels.
    test_nhwc: ArrayD<f32>,
    test_labels: Vec<i64>,
    /// The held-out validation images (NHWC, normalized) and labels, if `data.validation > 0`.
    validation: Option<(ArrayD<f32>, Vec<i64>)>,
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
    if let Some(t) = args.target {
        cfg.qat.target = Some(t);
    }
    let out = match &args.out {
        Some(o) => o.clone(),
        None => root.join("target").join("qat-report").join(run_id()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    tracing::info!(config = %cfg_path.display(), out = %out.display(), quick = args.quick, "pipeline start");
    let report = Pipeline::new(cfg, &root, &out, args)?.run(started)?;
    println!("\n{}", report.results_table());
    println!("report: {}", out.join("report.md").display());
    Ok(out)
}
