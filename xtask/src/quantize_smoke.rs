//! The quantize smoke run of `cargo xtask test`: `qat-quantize` (dev profile) on the PyTorch-made,
//! MNIST-trained CNN for the `tflite` target, then checks of its `report.json` (read as the typed
//! [`Report`]): the target, the float and PTQ rows, the normalization taken from the model's
//! metadata, every written file run in its runtimes, and LiteRT's reference kernels (the `tflite`
//! target's runtime) agreeing with the qat runtime on every image.

use std::{ffi::OsStr, path::Path};

use anyhow::{Result, bail, ensure};
use xtask::quantize_report::{NormSource, Report};

use crate::{cargo, peers};

/// The model and dataset of the smoke run (committed in the repository).
const MODEL: &str = "data/torch-models/mnist_cnn-opset13.onnx";
const DATA: &str = "data/mnist-10k";

/// Images evaluated: enough for a stable top-1 on the trained CNN, quick in the dev profile.
const EVAL: &str = "1000";

pub fn run(libtorch: &Path, python: &Path) -> Result<()> {
    let out = cargo::run_smoke_bin(
        libtorch,
        &[(peers::PYTHON_ENV, python.as_os_str() as &OsStr)],
        "qat-quantize",
        "qat-quantize",
        &[
            "--onnx", MODEL, "--data", DATA, "--target", "tflite", "--eval", EVAL,
        ],
    )?;
    check(&out)
}

fn check(dir: &Path) -> Result<()> {
    check_report(&Report::read(dir)?)?;
    eprintln!(
        "[quantize smoke] {} checked",
        dir.join("report.json").display()
    );
    Ok(())
}

fn check_report(r: &Report) -> Result<()> {
    ensure!(r.target == "tflite", "target {}, expected tflite", r.target);
    ensure!(
        r.normalize.source == NormSource::Metadata,
        "the normalization did not come from the model's metadata_props: {:?}",
        r.normalize
    );
    let [float, ptq @ ..] = r.rows.as_slice() else {
        bail!("no rows");
    };
    ensure!(
        r.rows.len() == 3,
        "{} rows, expected float and two PTQ",
        r.rows.len()
    );
    // The CNN's torch float top-1 on this split is 92.75 %; PTQ at 8 bits keeps it.
    let float = float.top1;
    ensure!(float > 0.85, "float top-1 {float}");
    for row in ptq {
        ensure!(
            row.top1 >= float - 0.02,
            "{}: top-1 {} vs float {float}",
            row.name,
            row.top1
        );
    }
    let deployed: Vec<&str> = r
        .rows
        .iter()
        .filter(|row| row.deployed)
        .map(|row| row.name.as_str())
        .collect();
    ensure!(
        r.rows.last().is_some_and(|row| row.deployed) && deployed.len() == 1,
        "deployed rows {deployed:?}, expected the last one only"
    );
    ensure!(
        r.deployed.len() == 3,
        "{} runtime runs of the written files (LiteRT ref, LiteRT XNNPACK, onnxruntime expected): {:?}",
        r.deployed.len(),
        r.deployed_skipped
    );
    for d in &r.deployed {
        if d.target_runtime {
            ensure!(
                d.agree_qat_runtime == 1.0,
                "{} in {}: argmax agreement {} with the qat runtime",
                d.file,
                d.runtime,
                d.agree_qat_runtime
            );
        }
        ensure!(
            d.top1 >= float - 0.02,
            "{} in {}: top-1 {}",
            d.file,
            d.runtime,
            d.top1
        );
    }
    ensure!(
        r.deployed.iter().any(|d| d.target_runtime),
        "no run in the tflite target's runtime"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde_json::json;

    use super::*;

    /// A report like the smoke run's: JSON with every key `qat-quantize` writes, read as the
    /// typed report.
    fn good() -> Report {
        let run = |runtime: &str, own: bool| {
            json!({"file": "model.tflite", "runtime": runtime, "version": "1", "top1": 0.926,
                   "agree_qat_runtime": 1.0, "target_runtime": own})
        };
        let row = |name: &str, top1: f64, deployed: bool| {
            json!({"name": name, "top1": top1,
                   "agree_float": 0.99, "deployed": deployed})
        };
        serde_json::from_value(json!({
            "model": MODEL, "onnx_ops": [["Conv", 3], ["Gemm", 2]], "dataset": DATA,
            "calibration_images": 512, "eval_images": 1000, "target": "tflite",
            "normalize": {"mean": [0.1307], "std": [0.3081], "source": "metadata"},
            "rows": [row("float", 0.925, false), row("ptq t", 0.925, false),
                     row("ptq c", 0.926, true)],
            "files": ["model.tflite", "model.onnx"],
            "deployed": [run("litert_ref", true), run("litert_xnnpack", false),
                         run("onnxruntime", false)],
            "deployed_skipped": null, "fidelity_markdown": "",
            "timings": {"import_s": 0.1, "float_eval_s": 0.2, "quantize_s": 0.3, "export_s": 0.1,
                        "runtimes_s": 0.8, "total_s": 1.5},
        }))
        .expect("the smoke report's keys")
    }

    /// [`check`] on `report.json` written from the good report with `edit` applied.
    fn check_with(edit: impl FnOnce(&mut Report)) -> Result<()> {
        let mut r = good();
        edit(&mut r);
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("report.json"), serde_json::to_string(&r)?)?;
        check(dir.path())
    }

    /// What an error must mention, and how the report is broken.
    type Broken = (&'static str, fn(&mut Report));

    #[test]
    fn the_smoke_check_accepts_a_good_report_and_refuses_bad_ones() {
        check_with(|_| {}).unwrap();
        // Another runtime than the target's may disagree on a few near-ties.
        check_with(|r| r.deployed[1].agree_qat_runtime = 0.99).unwrap();
        let bad: [Broken; 10] = [
            ("agreement", |r| r.deployed[0].agree_qat_runtime = 0.999),
            ("metadata", |r| r.normalize.source = NormSource::Dataset),
            ("float top-1", |r| r.rows[0].top1 = 0.5),
            ("ptq c", |r| r.rows[2].top1 = 0.8),
            ("runtime runs", |r| {
                r.deployed.clear();
                r.deployed_skipped = Some("no peers".into());
            }),
            ("top-1", |r| r.deployed[2].top1 = 0.1),
            ("target ort", |r| r.target = "ort".into()),
            ("2 rows", |r| {
                r.rows.remove(1);
            }),
            ("deployed rows", |r| r.rows[1].deployed = true),
            ("tflite target's runtime", |r| {
                r.deployed[0].target_runtime = false
            }),
        ];
        for (what, edit) in bad {
            let err = format!("{:#}", check_with(edit).unwrap_err());
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn a_report_of_another_shape_is_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_string(&good()).unwrap();
        for (edited, what) in [
            (
                json.replace("\"agree_float\"", "\"agree\""),
                "unknown field `agree`",
            ),
            (
                json.replace("\"eval_images\":1000,", ""),
                "missing field `eval_images`",
            ),
        ] {
            assert_ne!(edited, json, "{what}: the edit changed nothing");
            fs::write(dir.path().join("report.json"), edited).unwrap();
            let err = format!("{:#}", check(dir.path()).unwrap_err());
            assert!(err.contains(what), "{what}: {err}");
        }
    }
}
