//! The latency table's peer rows: onnxruntime int8 (the trained model exported as ONNX QDQ for the
//! `ort` target) and onnxruntime f32 (the float model as plain ONNX), timed at batch 1 by the
//! whole-model bench script (`xtask/py/bench_models.py`, the peers venv of `cargo xtask setup`),
//! alternated with the qat runtime timed by the same protocol (best of rounds of mean call
//! time), so that each peer row carries a like-for-like qat / peer ratio. When the peer runtimes
//! are missing, an export is refused or the script fails, the rows say why instead of failing the
//! run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::Axis;
use qat_export::onnx::{OnnxOptions, float_to_onnx, to_onnx_qdq};
use qat_export::{ExportOptions, QuantPlan};
use qat_int8_runtime::{Executor, Int8Model, Target};
use qat_train::{convert, models::Net};
use xtask::report::Latency;

use super::{Pipeline, train::QatOutcome};

/// Timing rounds per measurement (the best round is kept).
const ROUNDS: usize = 3;

/// One peer engine: the bench script's name (it reads `model.onnx` for `ort_int8` and
/// `model.float.onnx` for `ort_f32`), the report's path, the model's accuracy.
struct Engine {
    key: &'static str,
    path: &'static str,
    accuracy: f64,
    /// `Err(why)` when the model could not be written or its top-1 is unknown.
    ready: std::result::Result<(), String>,
}

impl Pipeline {
    /// The onnxruntime int8 (QDQ) and f32 rows for each of `threads` at batch 1. `ort_top1` is
    /// the deployed stage's top-1 of the QDQ model in onnxruntime (`None` when not measured).
    pub(super) fn ort_latency(
        &self,
        out: &QatOutcome,
        float_net: &Net,
        float_acc: f64,
        ort_top1: Option<f64>,
        threads: &[usize],
    ) -> Result<Vec<Latency>> {
        let dir = self.out.join("latency");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let int8 = write_int8(out, &dir.join("model.onnx")).and_then(|()| {
            ort_top1.map(|_| ()).ok_or_else(|| {
                "onnxruntime's top-1 was not measured (see the deployed table)".to_string()
            })
        });
        let float = convert::convert_unchecked(float_net)
            .map_err(|e| format!("cannot convert the float model: {e}"))
            .and_then(|g| float_to_onnx(&g).map_err(|e| format!("float ONNX refused: {e}")))
            .and_then(|f| {
                std::fs::write(dir.join("model.float.onnx"), f.bytes).map_err(|e| e.to_string())
            });
        let mut engines = [
            Engine {
                key: "ort_int8",
                path: "onnxruntime int8 (QDQ)",
                accuracy: ort_top1.unwrap_or(0.0),
                ready: int8,
            },
            Engine {
                key: "ort_f32",
                path: "onnxruntime f32",
                accuracy: float_acc,
                ready: float,
            },
        ];
        let python = xtask::peers_cache::find_python();
        if python.is_none() {
            let why = "the peer runtimes are not installed (`cargo xtask setup`, or set QAT_PEERS_PYTHON)";
            eprintln!("[pipeline] onnxruntime latency skipped: {why}");
            for e in &mut engines {
                e.ready = Err(why.into());
            }
        }
        let keys: Vec<&str> = engines
            .iter()
            .filter(|e| e.ready.is_ok())
            .map(|e| e.key)
            .collect();
        let min_time = if self.quick { 0.2 } else { 0.5 };
        let shape: Vec<String> = self.test_nhwc.shape()[1..]
            .iter()
            .map(|d| d.to_string())
            .collect();
        let mut rows = Vec::new();
        for &t in threads {
            // qat, the peers, qat again: the better qat time is kept, so that load that varies
            // over the run does not favour either side.
            let mut measured = None;
            if let (Some(python), false) = (&python, keys.is_empty()) {
                let q1 = time_qat(&out.model, &self.test_nhwc, t, min_time)?;
                let peers = run_script(python, &dir, &shape, &keys, t, min_time);
                let q2 = time_qat(&out.model, &self.test_nhwc, t, min_time)?;
                measured = Some((q1.min(q2), peers));
            }
            for e in &engines {
                let mut row = Latency {
                    path: e.path.into(),
                    threads: t,
                    batch: 1,
                    us_per_image: 0.0,
                    accuracy: e.accuracy,
                    qat_us_per_image: None,
                    skipped: e.ready.clone().err(),
                };
                if let (None, Some((qat, peers))) = (&row.skipped, &measured) {
                    match peers.as_ref().map(|p| cell(p, e.key, t)) {
                        Ok(Some(us)) => {
                            row.us_per_image = us;
                            row.qat_us_per_image = Some(*qat);
                        }
                        Ok(None) => row.skipped = Some(format!("{} has no {t}-thread cell", e.key)),
                        Err(why) => row.skipped = Some(why.clone()),
                    }
                }
                eprintln!(
                    "[pipeline] latency {} ×{t}: {}",
                    e.path,
                    match (&row.skipped, row.qat_us_per_image) {
                        (Some(why), _) => format!("not measured ({why})"),
                        (None, q) => format!(
                            "{:.1} µs/image (qat {:.1} µs/image, same protocol)",
                            row.us_per_image,
                            q.unwrap_or(f64::NAN)
                        ),
                    }
                );
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

/// The trained model planned for onnxruntime's arithmetic and written as ONNX QDQ to `path`.
fn write_int8(out: &QatOutcome, path: &Path) -> std::result::Result<(), String> {
    let opts = ExportOptions {
        target: Target::Ort,
        ..out.plan.options
    };
    let model = QuantPlan::new(&out.plan.graph, &opts)
        .and_then(|p| p.to_int8_model())
        .map_err(|e| format!("export for onnxruntime refused: {e}"))?;
    let onnx = to_onnx_qdq(&model, &OnnxOptions::default())
        .map_err(|e| format!("ONNX QDQ refused: {e}"))?;
    std::fs::write(path, onnx.bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs the bench script on `dir` for `engines` at batch 1 and `threads`; its JSON, or why not.
fn run_script(
    python: &Path,
    dir: &Path,
    shape: &[String],
    engines: &[&str],
    threads: usize,
    min_time: f64,
) -> std::result::Result<serde_json::Value, String> {
    let script = super::workspace_root()
        .join("xtask")
        .join("py")
        .join("bench_models.py");
    let json = dir.join("peers.json");
    let _ = std::fs::remove_file(&json);
    let res = Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg("--shape")
        .args(shape)
        .args(["--batches", "1", "--threads", &threads.to_string()])
        .args(["--min-time", &min_time.to_string()])
        .args(["--rounds", &ROUNDS.to_string()])
        .arg("--engines")
        .args(engines)
        .arg("--out")
        .arg(&json)
        .output()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    if !res.status.success() {
        let err = String::from_utf8_lossy(&res.stderr);
        let tail: String = err.lines().last().unwrap_or("").chars().take(200).collect();
        return Err(format!("bench_models.py failed ({}): {tail}", res.status));
    }
    let text = std::fs::read(&json).map_err(|e| format!("bench_models.py wrote no JSON: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("bench_models.py JSON: {e}"))
}

/// µs per image of `engine` at batch 1 and `threads` in the script's JSON.
fn cell(peers: &serde_json::Value, engine: &str, threads: usize) -> Option<f64> {
    peers["engines"][engine]["cells"]
        .as_array()?
        .iter()
        .find(|c| c["batch"] == 1 && c["threads"] == threads)?["us_per_image"]
        .as_f64()
}

/// Best-of-[`ROUNDS`] mean call time (µs) of the qat runtime on the first image of `x`, batch 1,
/// on `threads` threads: the bench script's protocol.
fn time_qat(
    model: &Int8Model,
    x: &ndarray::ArrayD<f32>,
    threads: usize,
    min_time: f64,
) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let x = x.slice_axis(Axis(0), (0..1).into()).into_dyn();
    pool.install(|| {
        let mut exec = Executor::new(model).context("cannot plan the integer model")?;
        exec.run(x.view())?;
        let mut best = f64::INFINITY;
        for _ in 0..ROUNDS {
            let (start, mut calls) = (Instant::now(), 0usize);
            while start.elapsed().as_secs_f64() < min_time {
                exec.run(x.view())?;
                calls += 1;
            }
            best = best.min(start.elapsed().as_secs_f64() / calls as f64);
        }
        Ok(best * 1e6)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_reads_the_batch_1_cell_of_the_threads_asked() {
        let peers = serde_json::json!({"engines": {"ort_int8": {"version": "1", "cells": [
            {"batch": 1, "threads": 1, "us_per_image": 120.5, "calls": 9},
            {"batch": 64, "threads": 2, "us_per_image": 7.0, "calls": 3},
            {"batch": 1, "threads": 2, "us_per_image": 80.25, "calls": 9}
        ]}}});
        assert_eq!(cell(&peers, "ort_int8", 1), Some(120.5));
        assert_eq!(cell(&peers, "ort_int8", 2), Some(80.25));
        assert_eq!(cell(&peers, "ort_int8", 4), None);
        assert_eq!(cell(&peers, "ort_f32", 1), None);
    }

    #[test]
    fn a_latency_row_of_an_older_report_still_reads() {
        let old = r#"{"path": "int8 (avx512-vnni)", "threads": 1, "batch": 1,
                      "us_per_image": 119.0, "accuracy": 0.99}"#;
        let row: Latency = serde_json::from_str(old).unwrap();
        assert_eq!((row.qat_us_per_image, row.skipped), (None, None));
        assert_eq!(row.us_per_image, 119.0);
    }
}
