//! The quantize command's report: `report.json` (these structs) and `report.md`.

use qat_train::data::Normalize;
use serde::Serialize;
use xtask::report::table;

use super::input::NormSource;

/// One quantized (or float) variant in the qat runtime.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
pub struct DeployedRow {
    pub file: String,
    pub runtime: String,
    pub version: String,
    pub top1: f64,
    /// Argmax agreement with the deployed variant in the qat runtime.
    pub agree_qat_runtime: f64,
    /// Whether this runtime is the one the target names (its arithmetic is the target's: the
    /// agreement should be 100 %).
    pub target_runtime: bool,
}

/// The normalization applied to the pixels, `(p/255 − mean_c)/std_c` (its fields `mean` and `std`
/// inline), and where it came from.
#[derive(Debug, Serialize)]
pub struct NormReport {
    #[serde(flatten)]
    pub normalize: Normalize,
    pub source: NormSource,
}

/// Wall-clock seconds of each step.
#[derive(Debug, Default, Serialize)]
pub struct Timings {
    pub import_s: f64,
    pub float_eval_s: f64,
    pub quantize_s: f64,
    pub export_s: f64,
    pub runtimes_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    /// ONNX op types of the model and how many nodes of each.
    pub onnx_ops: Vec<(String, usize)>,
    pub dataset: String,
    pub calibration_images: usize,
    pub eval_images: usize,
    pub target: String,
    pub normalize: NormReport,
    pub rows: Vec<Row>,
    pub files: Vec<String>,
    pub deployed: Vec<DeployedRow>,
    /// Why the deployed files were not run in their runtimes (when they were not).
    pub deployed_skipped: Option<String>,
    pub fidelity_markdown: String,
    pub timings: Timings,
}

impl Report {
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
            self.normalize.normalize.mean,
            self.normalize.normalize.std,
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
                normalize: Normalize {
                    mean: vec![0.5],
                    std: vec![0.25],
                },
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
}
