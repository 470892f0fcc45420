//! The pipeline's report: `report.json` (machine-readable) and `report.md` (the paper-style table).

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One row of the main table.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A measured latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// "f32 (libtorch)" or "int8 (qat-int8-runtime)".
    pub path: String,
    /// Threads used.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
    /// Median microseconds per image.
    pub us_per_image: f64,
    /// Accuracy of that model (for the latency-vs-accuracy plot).
    pub accuracy: f64,
}

/// One point of the bit-width sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BitPoint {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// PTQ (per-channel) accuracy.
    pub ptq: f64,
    /// QAT accuracy (fake quant).
    pub qat: f64,
    /// QAT accuracy of the exported integer model.
    pub qat_int8: Option<f64>,
}

/// A named comparison of the ablation study.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationRow {
    /// Study ("activation", "bn_correction", "granularity").
    pub study: String,
    /// Variant.
    pub variant: String,
    /// Float accuracy of the variant's model (where a separate float model was trained).
    pub float: Option<f64>,
    /// PTQ accuracy.
    pub ptq: Option<f64>,
    /// QAT accuracy (fake quant).
    pub qat: f64,
}

/// A target from the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Everything the pipeline measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Main table.
    pub results: Vec<ResultRow>,
    /// Agreement between the integer model and its fake-quant simulation.
    pub agreement: serde_json::Value,
    /// The exported models emitted with each requantization rounding mode.
    pub rounding: Vec<RoundingRow>,
    /// Model sizes in bytes.
    pub size: serde_json::Value,
    /// Latencies.
    pub latency: Vec<Latency>,
    /// Per-layer fidelity from qat-export (int8 vs simulation).
    pub fidelity: serde_json::Value,
    /// The same for the low-bit model.
    pub fidelity_low_bit: serde_json::Value,
    /// libtorch fake quant vs the export's simulation, per node (`main`, `low_bit`).
    #[serde(default)]
    pub torch_vs_simulation: serde_json::Value,
    /// Bit-width sweep.
    pub bit_sweep: Vec<BitPoint>,
    /// Ablations (with `--ablations`).
    pub ablations: Vec<AblationRow>,
    /// Targets.
    pub targets: Vec<TargetCheck>,
    /// Training curves.
    pub curves: Curves,
}

/// One exported model emitted with one requantization rounding mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundingRow {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// `"single"` or `"gemmlowp"`.
    pub rounding: String,
    /// Whether this is the mode the saved `.qat8` uses.
    pub exported: bool,
    /// Test accuracy of the integer model.
    pub int8_acc: f64,
    /// Argmax agreement with the fake-quant (libtorch) model.
    pub agreement: f64,
}

/// A share in [0, 1] as a percentage with two decimals.
pub fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

impl Report {
    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path, fidelity_table: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        fs::write(dir.join("report.json"), json).context("cannot write report.json")?;
        fs::write(dir.join("report.md"), self.markdown(fidelity_table))
            .context("cannot write report.md")?;
        Ok(())
    }

    /// The main table as Markdown.
    pub fn results_table(&self) -> String {
        let mut s = String::from(
            "| model | weights | activations | engine | top-1 |\n|---|---|---|---|---|\n",
        );
        for r in &self.results {
            let bits = |b: Option<u32>| b.map_or("float".to_string(), |b| format!("{b}-bit"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.label,
                bits(r.weight_bits),
                bits(r.act_bits),
                r.engine,
                pct(r.accuracy)
            );
        }
        s
    }

    /// The whole report as Markdown.
    pub fn markdown(&self, fidelity_table: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# qat pipeline report `{}`\n", self.run_id);
        let _ = writeln!(
            s,
            "{}; run time {:.0} s{}.\n",
            self.machine,
            self.duration_s,
            if self.quick {
                "; **quick run** (tiny subset, accuracy not meaningful)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "## Accuracy (test split)\n\n{}", self.results_table());
        let _ = writeln!(
            s,
            "## Integer model vs its simulation\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&self.agreement).unwrap_or_default()
        );
        if !self.rounding.is_empty() {
            let _ = writeln!(
                s,
                "## Requantization rounding\n\nThe same exports emitted with one rounding of `acc·M` (`single`, what QAT \
                 simulates) and with TFLite's reference double rounding (`gemmlowp`: SRDHM then a rounding shift).\n\n\
                 | weights | activations | rounding | int8 top-1 | agreement with fake quant |\n|---|---|---|---|---|"
            );
            for r in &self.rounding {
                let _ = writeln!(
                    s,
                    "| {} | {} | {}{} | {} | {} |",
                    r.weight_bits,
                    r.act_bits,
                    r.rounding,
                    if r.exported { " (exported)" } else { "" },
                    pct(r.int8_acc),
                    pct(r.agreement)
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "## Model size\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&self.size).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "## Latency per image (batch 1)\n\n| path | threads | µs/image | top-1 |\n|---|---|---|---|"
        );
        for l in &self.latency {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} |",
                l.path,
                l.threads,
                l.us_per_image,
                pct(l.accuracy)
            );
        }
        if !self.bit_sweep.is_empty() {
            let _ = writeln!(
                s,
                "\n## Bit widths (paper tables 4.7/4.8 style)\n\n| weights | activations | PTQ | QAT (fake quant) | QAT int8 runtime |\n|---|---|---|---|---|"
            );
            for b in &self.bit_sweep {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    b.weight_bits,
                    b.act_bits,
                    pct(b.ptq),
                    pct(b.qat),
                    b.qat_int8.map_or("—".into(), pct)
                );
            }
        }
        if !self.ablations.is_empty() {
            let _ = writeln!(
                s,
                "\n## Ablations\n\n| study | variant | float | PTQ | QAT |\n|---|---|---|---|---|"
            );
            for a in &self.ablations {
                let o = |v: Option<f64>| v.map_or("—".into(), pct);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    a.study,
                    a.variant,
                    o(a.float),
                    o(a.ptq),
                    pct(a.qat)
                );
            }
        }
        let _ = writeln!(
            s,
            "\n## Targets\n\n| target | wanted | measured | met |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(
            s,
            "\n## Per-layer fidelity (int8 runtime vs fake-quant simulation)\n\n{fidelity_table}"
        );
        let _ = writeln!(
            s,
            "\n## Plots\n\n![accuracy vs bits](accuracy_vs_bits.png)\n![latency vs accuracy](latency_vs_accuracy.png)\n![training](training.png)"
        );
        let _ = writeln!(s, "\n## Configuration\n\n```toml\n{}\n```", self.config);
        s
    }
}
