//! The quantize command's report: typed serde structs, written by `qat-quantize` as `report.json`
//! (with `report.md` rendered from them) and read back as the same structs by the quantize smoke
//! check of `cargo xtask test`.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::table;

/// One quantized (or float) variant in the qat runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// e.g. `PTQ W8A8 per-channel`.
    pub name: String,
    /// Top-1 on the evaluated test images.
    pub top1: f64,
    /// Argmax agreement with the imported float model.
    pub agree_float: f64,
    /// Whether this variant is the one written to the deployed files.
    pub deployed: bool,
}

/// One written file in one runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployedRow {
    /// The written file's path.
    pub file: String,
    /// The runtime that ran it: `litert_ref`, `litert_xnnpack` or `onnxruntime`.
    pub runtime: String,
    /// The runtime's version.
    pub version: String,
    /// Top-1 on the evaluated test images.
    pub top1: f64,
    /// Argmax agreement with the deployed variant in the qat runtime.
    pub agree_qat_runtime: f64,
    /// Whether this runtime is the one the target names (its arithmetic is the target's: the
    /// agreement should be 100 %).
    pub target_runtime: bool,
}

/// The normalization applied to the pixels, `(p/255 − mean_c)/std_c`, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormReport {
    /// Mean of `p/255` per channel.
    pub mean: Vec<f32>,
    /// Standard deviation of `p/255` per channel.
    pub std: Vec<f32>,
    /// Where `mean` and `std` came from.
    pub source: NormSource,
}

/// Where the normalization came from; written in snake case.
///
/// ```
/// use xtask::quantize_report::NormSource;
/// assert_eq!(serde_json::to_string(&NormSource::Metadata).unwrap(), r#""metadata""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormSource {
    /// `--mean` / `--std`.
    Flags,
    /// The model's `metadata_props` (`input_mean` / `input_std`).
    Metadata,
    /// The training split's per-channel statistics.
    Dataset,
}

/// Wall-clock seconds of each step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Reading and importing the ONNX model.
    pub import_s: f64,
    /// The imported float model on the evaluated images.
    pub float_eval_s: f64,
    /// Calibration, quantization (and QAT fine-tuning) and the variants' evaluation.
    pub quantize_s: f64,
    /// Writing the deployed files.
    pub export_s: f64,
    /// The deployed files in their runtimes.
    pub runtimes_s: f64,
    /// The whole run.
    pub total_s: f64,
}

/// Everything `qat-quantize` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The ONNX model's path.
    pub model: String,
    /// ONNX op types of the model and how many nodes of each.
    pub onnx_ops: Vec<(String, usize)>,
    /// The dataset directory, its split sizes and image shape.
    pub dataset: String,
    /// Training images used for calibration.
    pub calibration_images: usize,
    /// Test images evaluated.
    pub eval_images: usize,
    /// The deployment target's name (`qat`, `tflite`, `ort`, `xnnpack`).
    pub target: String,
    /// The input normalization.
    pub normalize: NormReport,
    /// The float model and each quantized variant in the qat runtime.
    pub rows: Vec<Row>,
    /// The written files' paths.
    pub files: Vec<String>,
    /// The written files run in their runtimes.
    pub deployed: Vec<DeployedRow>,
    /// Why the deployed files were not run in their runtimes (when they were not).
    pub deployed_skipped: Option<String>,
    /// The deployed variant's per-layer fidelity (int8 vs its simulation), as Markdown.
    pub fidelity_markdown: String,
    /// Wall-clock seconds of each step.
    pub timings: Timings,
}

impl Report {
    /// Reads `report.json` from `dir` as the typed report.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("report.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a qat-quantize report", path.display()))
    }

    /// `report.md`: the header, the variants' table, the deployed files' runs, the timings and
    /// the per-layer fidelity.
    pub fn to_markdown(&self) -> String {
        let pct = |v: f64| format!("{:.2}", 100.0 * v);
        let ops = self
            .onnx_ops
            .iter()
            .map(|(op, n)| format!("{op} × {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut md = format!(
            "# qat-quantize: {}\n\nONNX ops: {ops}.\n\nDataset: {}. Calibration: {} training images (min/max). \
             Evaluated on {} test images. Target: `{}`. Normalization ({:?}): mean {:?}, std {:?}.\n\n",
            self.model,
            self.dataset,
            self.calibration_images,
            self.eval_images,
            self.target,
            self.normalize.source,
            self.normalize.mean,
            self.normalize.std,
        );
        let yes = |b: bool| if b { "yes" } else { "" }.to_string();
        table(
            &mut md,
            "| model (qat runtime) | top-1 % | argmax = float % | deployed |\n|---|---|---|---|",
            &self.rows,
            |r| {
                vec![
                    r.name.clone(),
                    pct(r.top1),
                    pct(r.agree_float),
                    yes(r.deployed),
                ]
            },
        );
        md.push_str(&format!("\nFiles: {}\n\n", self.files.join(", ")));
        md.push_str("## The deployed files in their runtimes\n\n");
        if let Some(why) = &self.deployed_skipped {
            md.push_str(&format!("Not run: {why}.\n"));
        } else {
            table(
                &mut md,
                "| file | runtime | top-1 % | argmax = qat runtime % | the target's runtime |\n|---|---|---|---|---|",
                &self.deployed,
                |d| {
                    vec![
                        d.file.clone(),
                        format!("{} {}", d.runtime, d.version),
                        pct(d.top1),
                        pct(d.agree_qat_runtime),
                        yes(d.target_runtime),
                    ]
                },
            );
        }
        let t = &self.timings;
        md.push_str(&format!(
            "\nTime: import {:.2} s, float evaluation {:.2} s, quantization and evaluation {:.2} s, \
             export {:.2} s, runtimes {:.2} s, total {:.2} s.\n\n\
             ## Per-layer fidelity (deployed model vs its simulation)\n\n{}\n",
            t.import_s,
            t.float_eval_s,
            t.quantize_s,
            t.export_s,
            t.runtimes_s,
            t.total_s,
            self.fidelity_markdown
        ));
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(deployed_skipped: Option<String>) -> Report {
        Report {
            model: "m.onnx".into(),
            onnx_ops: vec![("Conv".into(), 2), ("Gemm".into(), 1)],
            dataset: "mnist".into(),
            calibration_images: 64,
            eval_images: 100,
            target: "qat".into(),
            normalize: NormReport {
                mean: vec![0.5],
                std: vec![0.25],
                source: NormSource::Flags,
            },
            rows: vec![
                Row {
                    name: "float".into(),
                    top1: 0.9912,
                    agree_float: 1.0,
                    deployed: false,
                },
                Row {
                    name: "PTQ W8A8 per-channel".into(),
                    top1: 0.9898,
                    agree_float: 0.995,
                    deployed: true,
                },
            ],
            files: vec!["m.qat8".into(), "m.tflite".into()],
            deployed: vec![DeployedRow {
                file: "m.tflite".into(),
                runtime: "LiteRT".into(),
                version: "2.3.0".into(),
                top1: 0.9898,
                agree_qat_runtime: 1.0,
                target_runtime: true,
            }],
            deployed_skipped,
            fidelity_markdown: "(fidelity)".into(),
            timings: Timings::default(),
        }
    }

    #[test]
    fn markdown_has_one_table_row_per_variant_and_per_deployed_file() {
        let md = report(None).to_markdown();
        assert!(md.contains(
            "| model (qat runtime) | top-1 % | argmax = float % | deployed |\n|---|---|---|---|\n\
             | float | 99.12 | 100.00 |  |\n| PTQ W8A8 per-channel | 98.98 | 99.50 | yes |\n\nFiles:"
        ), "{md}");
        assert!(
            md.contains(
                "|---|---|---|---|---|\n| m.tflite | LiteRT 2.3.0 | 98.98 | 100.00 | yes |\n\nTime:"
            ),
            "{md}"
        );
        let md = report(Some("no peers".into())).to_markdown();
        assert!(md.contains("Not run: no peers.\n\nTime:"), "{md}");
        assert!(!md.contains("| m.tflite"), "{md}");
    }

    #[test]
    fn the_json_reads_back_as_the_same_report_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = report(Some("no peers".into()));
        let json = serde_json::to_string_pretty(&r).unwrap();
        // The normalization's keys sit side by side, as the report has always written them.
        let compact = serde_json::to_string(&r).unwrap();
        assert!(
            compact.contains(r#""normalize":{"mean":[0.5],"std":[0.25],"source":"flags"}"#),
            "{compact}"
        );
        fs::write(dir.path().join("report.json"), &json).unwrap();
        assert_eq!(Report::read(dir.path()).unwrap(), r);
        let extra = json.replacen("\"top1\"", "\"top5\": 1.0, \"top1\"", 1);
        fs::write(dir.path().join("report.json"), extra).unwrap();
        let err = format!("{:#}", Report::read(dir.path()).unwrap_err());
        assert!(err.contains("unknown field `top5`"), "{err}");
    }
}
