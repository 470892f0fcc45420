//! The pipeline's report: typed serde structs, written by `qat-pipeline` as `report.json` (with
//! `report.md` rendered from them) and read back as the same structs by the smoke check.

mod markdown;

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use qat_export::{
    FidelityReport,
    analysis::{MixedPrecision, SensitivityTable, WeightAnalysis},
    fidelity::NodeMatch,
};
use serde::{Deserialize, Serialize};

/// Everything the pipeline measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Run id (directory name).
    pub run_id: String,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Wall-clock seconds of the whole run.
    pub duration_s: f64,
    /// CPU model and threads.
    pub machine: String,
    /// The configuration used (as TOML text).
    pub config: String,
    /// The data the run used.
    pub dataset: DatasetInfo,
    /// Main table.
    pub results: Vec<ResultRow>,
    /// Agreement between the integer models and their fake-quant models.
    pub agreement: AgreementSummary,
    /// The exported models emitted with each requantization rounding mode.
    pub rounding: Vec<RoundingRow>,
    /// Model sizes in bytes.
    pub size: ModelSize,
    /// Latencies.
    pub latency: Vec<Latency>,
    /// Per-layer fidelity from qat-export (int8 vs simulation) of the 8-bit export.
    pub fidelity: FidelityReport,
    /// The same for the low-bit export.
    pub fidelity_low_bit: FidelityReport,
    /// libtorch fake quant vs the export's simulation, per node.
    pub torch_vs_simulation: TorchVsSimulation,
    /// Bit-width sweep (the default run's two points, more with `--ablations`).
    pub bit_sweep: Vec<BitPoint>,
    /// The other studies' rows (with `--ablations`).
    pub ablations: Vec<AblationRow>,
    /// Why PTQ loses accuracy, per layer of the float model (BN folded as the export folds it).
    pub causes: Option<WeightAnalysis>,
    /// The accuracy each fix buys: PTQ per tensor → PTQ per channel → QAT, at 8 and at the low bit width.
    pub fixes: Vec<FixStep>,
    /// Per-layer sensitivity (`--study sensitivity`): accuracy drop in points on the validation split.
    pub sensitivity: Option<SensitivityTable>,
    /// Mixed precision (`--study mixed-precision`).
    pub mixed_precision: Option<MixedPrecisionResult>,
    /// The exported formats run by their own runtimes on the test split (empty, with the reason,
    /// when the peer runtimes are not installed).
    #[serde(default)]
    pub deployed: Deployed,
    /// Targets.
    pub targets: Vec<TargetCheck>,
    /// Training curves.
    pub curves: Curves,
    /// Which plots were drawn, or why none were.
    pub plots: PlotStatus,
}

/// The dataset of a run and the size of each split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// Name (`mnist-10k`, `fashion-mnist`, …) and where it was loaded from.
    pub name: String,
    /// Directory it was loaded from.
    pub dir: String,
    /// Training images used.
    pub train: usize,
    /// Training images held out for the sensitivity study (never trained on).
    pub validation: usize,
    /// Test images.
    pub test: usize,
}

/// One row of the main table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultRow {
    /// Stable key (`float`, `ptq_per_tensor`, `ptq_per_channel`, `qat_fake_quant`, `qat_int8`, …).
    pub name: String,
    /// Human label.
    pub label: String,
    /// Top-1 accuracy on the test split, in [0, 1].
    pub accuracy: f64,
    /// Weight bits (None for float).
    pub weight_bits: Option<u32>,
    /// Activation bits (None for float).
    pub act_bits: Option<u32>,
    /// How it was computed: "libtorch f32", "libtorch fake quant", "qat-int8-runtime".
    pub engine: String,
}

/// Argmax agreement of the integer models with their fake-quant (libtorch) models on the test split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreementSummary {
    /// The 8-bit export.
    pub int8_vs_fake_quant: f64,
    /// The low-bit export.
    pub low_bit_int8_vs_fake_quant: f64,
    /// Test images compared.
    pub test_images: usize,
    /// Requantization rounding of the exported models.
    pub rounding: String,
}

/// Model sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSize {
    /// Float parameters × 4 bytes.
    pub float32_parameters_bytes: usize,
    /// The saved 8-bit `.qat8` file.
    pub qat8_file_bytes: usize,
    /// `float32_parameters_bytes / qat8_file_bytes` (0 when the file is empty).
    pub ratio: f64,
}

/// A measured latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// "f32 (libtorch)", "int8 (<kernel path>)", "onnxruntime int8 (QDQ)" or "onnxruntime f32".
    pub path: String,
    /// Threads used.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
    /// Median microseconds per image.
    pub us_per_image: f64,
    /// Accuracy of that model (for the latency-vs-accuracy plot).
    pub accuracy: f64,
    /// A peer runtime's row only: the qat runtime's µs per image on the same model, batch and
    /// threads, timed with the peer's protocol (best of rounds, alternated with the peer), so
    /// that `qat_us_per_image / us_per_image` is the qat / peer ratio.
    #[serde(default)]
    pub qat_us_per_image: Option<f64>,
    /// Why the row was not measured (peer runtimes not installed, export refused, runtime
    /// failed); `us_per_image` is then 0 and the row is not plotted.
    #[serde(default)]
    pub skipped: Option<String>,
}

/// The trained models vs the export's simulation, node by node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TorchVsSimulation {
    /// The 8-bit model.
    pub main: Vec<NodeMatch>,
    /// The low-bit model.
    pub low_bit: Vec<NodeMatch>,
}

/// One point of the bit-width sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitPoint {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// PTQ (per-channel) accuracy.
    pub ptq: Option<f64>,
    /// QAT accuracy (fake quant).
    pub qat: f64,
    /// QAT accuracy of the exported integer model.
    pub qat_int8: Option<f64>,
}

/// A variant of an ablation study.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationRow {
    /// Study ("activation", "BN folding", "weight granularity").
    pub study: String,
    /// Variant.
    pub variant: String,
    /// Float accuracy of the variant's model.
    pub float: Option<f64>,
    /// PTQ accuracy.
    pub ptq: Option<f64>,
    /// QAT accuracy (fake quant).
    pub qat: f64,
}

/// One step of the ladder of fixes at one bit width.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixStep {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// "PTQ per tensor", "PTQ per channel", "QAT".
    pub method: String,
    /// Top-1 on the test split.
    pub accuracy: f64,
    /// Points gained over the previous step (None for the first).
    pub gain: Option<f64>,
}

/// The mixed-precision study: the search over the sensitivity table and measured accuracies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedPrecisionResult {
    /// The Pareto front (predicted drop vs packed weight bytes) and the point chosen within the
    /// uniform low-bit model's bytes.
    pub search: MixedPrecision,
    /// Test top-1 (percent) of the chosen assignment after PTQ.
    pub chosen_ptq: Option<f64>,
    /// The chosen assignment QAT-trained (from the float model, the low-bit run's schedule) and
    /// exported: test top-1 (percent) of its fake-quant model and of the integer model.
    #[serde(default)]
    pub chosen_qat: Option<QatPoint>,
    /// Uniform widths for comparison.
    pub uniform: Vec<UniformPoint>,
}

/// A uniform-width point next to the mixed-precision front.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformPoint {
    /// Weight bits of every layer.
    pub weight_bits: u32,
    /// Activation bits of every layer.
    pub act_bits: u32,
    /// Cost (packed weight bytes).
    pub cost: f64,
    /// Drop predicted from the sensitivity table (points).
    pub predicted_drop: f64,
    /// Measured test top-1 (percent) after PTQ.
    pub ptq: f64,
    /// The same widths QAT-trained and exported (test top-1, percent).
    #[serde(default)]
    pub qat: Option<QatPoint>,
}

/// A QAT-trained configuration of the mixed-precision study.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatPoint {
    /// Test top-1 (percent) of the fake-quant (libtorch) model.
    pub fake_quant: f64,
    /// Test top-1 (percent) of the exported integer model in qat-int8-runtime.
    pub int8: f64,
    /// Median µs per image of the integer model in qat-int8-runtime (batch 1, one thread).
    #[serde(default)]
    pub int8_us: Option<f64>,
}

/// A target, and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCheck {
    /// What.
    pub what: String,
    /// Target as text.
    pub target: String,
    /// Measured value as text.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// Loss/accuracy curves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curves {
    /// (global step, loss) of float training.
    pub float_loss: Vec<(usize, f64)>,
    /// (global step, loss) of QAT fine-tuning (steps continue after float).
    pub qat_loss: Vec<(usize, f64)>,
    /// (epoch, test accuracy) of float training.
    pub float_acc: Vec<(usize, f64)>,
    /// (epoch, test accuracy) of QAT, epochs continuing after float.
    pub qat_acc: Vec<(usize, f64)>,
}

/// The plots of a report. Plots need a system font; a machine without one still gets the whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlotStatus {
    /// Files written (relative to the report directory).
    pub written: Vec<String>,
    /// Why plots were not drawn (None: all drawn).
    pub skipped: Option<String>,
}

/// One exported model emitted with one requantization rounding mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundingRow {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// `"single"` or `"gemmlowp"`.
    pub rounding: String,
    /// Whether this is the mode the saved `.qat8` uses.
    pub exported: bool,
    /// Test accuracy of the integer model (None: the rounding's target refused the model).
    pub int8_acc: Option<f64>,
    /// Argmax agreement with the fake-quant (libtorch) model (None: refused).
    pub agreement: Option<f64>,
    /// Why the rounding's target refused to export the model (e.g. TFLite's average pool cannot
    /// rescale).
    pub refused: Option<String>,
}

/// The deployed table: each exported model, written in a deployable format and run by that
/// format's own runtime on the test split, against the simulation of the target that runtime
/// computes (qat-int8-runtime running the model planned for that target).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployed {
    /// Why no row was measured (peer runtimes not installed), `None` when measured.
    pub skipped: Option<String>,
    /// The target the models were trained for (`None`: the float fake-quant forward).
    pub trained_for: Option<String>,
    /// One row per model, format and runtime.
    pub rows: Vec<DeployedRow>,
}

/// One exported model in one runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployedRow {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// `tflite` or `onnx` (QDQ).
    pub format: String,
    /// The runtime configuration: `litert_ref` (LiteRT, `BUILTIN_REF` kernels), `litert_xnnpack`
    /// (LiteRT's default, the XNNPACK delegate), `onnxruntime` (all graph optimizations).
    pub runtime: String,
    /// The target whose arithmetic that runtime computes (the simulation it is compared with).
    pub target: String,
    /// Test images run.
    pub images: usize,
    /// Top-1 of the simulation (qat-int8-runtime, the model planned for `target`).
    pub simulated_top1: Option<f64>,
    /// Top-1 in the runtime.
    pub top1: Option<f64>,
    /// Share of images whose argmax equals the simulation's.
    pub argmax_agreement: Option<f64>,
    /// Share of equal output codes (logits) with the simulation.
    pub equal_codes: Option<f64>,
    /// Share of equal codes over every tensor the runtime exposes (element-weighted; LiteRT's
    /// reference kernels expose the intermediates, the XNNPACK delegate and onnxruntime only the
    /// outputs).
    #[serde(default)]
    pub tensors_equal: Option<f64>,
    /// Tensors compared for `tensors_equal`.
    #[serde(default)]
    pub tensors_compared: usize,
    /// Why there is no measurement: the target refused the plan, the format refused the model, or
    /// the runtime failed.
    pub refused: Option<String>,
}

/// A share in [0, 1] as a percentage with two decimals.
///
/// ```
/// assert_eq!(xtask::report::pct(0.9785), "97.85%");
/// ```
pub fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Appends the Markdown table `head` (its heading, header and separator lines) and one line per
/// row: `| cell | … |`.
///
/// ```
/// let mut s = String::new();
/// let rows = [("float", 0.99), ("int8", 0.985)];
/// xtask::report::table(&mut s, "| model | top-1 |\n|---|---|", &rows, |&(m, a)| {
///     vec![m.to_string(), xtask::report::pct(a)]
/// });
/// assert_eq!(s, "| model | top-1 |\n|---|---|\n| float | 99.00% |\n| int8 | 98.50% |\n");
/// ```
pub fn table<T>(s: &mut String, head: &str, rows: &[T], cells: impl Fn(&T) -> Vec<String>) {
    let _ = writeln!(s, "{head}");
    for r in rows {
        let _ = writeln!(s, "| {} |", cells(r).join(" | "));
    }
}

impl Report {
    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        fs::write(dir.join("report.json"), json).context("cannot write report.json")?;
        fs::write(dir.join("report.md"), self.markdown()).context("cannot write report.md")?;
        Ok(())
    }

    /// Reads `report.json` from `dir` as the typed report.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("report.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("missing {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pipeline report", path.display()))
    }

    /// The row named `name` of the main table.
    pub fn result(&self, name: &str) -> Option<&ResultRow> {
        self.results.iter().find(|r| r.name == name)
    }
}
