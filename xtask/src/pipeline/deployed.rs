//! The deployed table: each trained model planned for the target of a deployment runtime, written
//! in that runtime's format (`.tflite`, ONNX QDQ), and run by the runtime itself on the test split
//! through the cross-check harness (`xtask/py/crosscheck.py`, the peers venv of `cargo xtask
//! setup`): top-1, argmax agreement with the simulation of that target (qat-int8-runtime), the
//! share of equal output codes, and of equal codes over every intermediate tensor the runtime
//! exposes (LiteRT's preserved tensors without a delegate) — a cross-check on real digits. The
//! written models stay in `deployed/<model>-<runtime>/` of the report directory.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use ndarray::{ArrayD, Axis};
use qat_export::crosscheck::{self, npy::Npy};
use qat_export::onnx::{OnnxOptions, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{ExportError, ExportOptions, Format, QuantPlan};
use qat_int8_runtime::{Executor, Int8Model, Target};
use xtask::report::{Deployed, DeployedRow, pct};

use super::{Pipeline, eval::agreement, study::Run, train::QatOutcome};

/// (format, the harness's runtime configuration, the target whose arithmetic it computes).
const RUNS: [(Format, &str, Target); 3] = [
    (Format::Tflite, "litert_ref", Target::Tflite),
    (Format::Tflite, "litert_xnnpack", Target::Xnnpack),
    (Format::Onnx, "onnxruntime", Target::Ort),
];

impl Pipeline {
    /// The deployed table of the trained models `(run, outcome)`; empty, with the reason, when the
    /// peer runtimes are not installed.
    pub(super) fn deployed(&self, models: &[(&Run, &QatOutcome)]) -> Result<Deployed> {
        let trained_for = self.cfg.qat.target.map(|t| t.name().to_string());
        let Some(python) = xtask::peers_cache::find_python() else {
            let why = "the peer runtimes are not installed (`cargo xtask setup`, or set QAT_PEERS_PYTHON)";
            eprintln!("[pipeline] deployed table skipped: {why}");
            return Ok(Deployed {
                skipped: Some(why.into()),
                trained_for,
                rows: Vec::new(),
            });
        };
        let script = super::workspace_root()
            .join("xtask")
            .join("py")
            .join("crosscheck.py");
        let mut rows = Vec::new();
        for (run, out) in models {
            for (format, runtime, target) in RUNS {
                let row = self
                    .deployed_row(&python, &script, run, out, (format, runtime, target))
                    .with_context(|| format!("{} in {runtime}", run.bits_name()))?;
                eprintln!(
                    "[pipeline] deployed {} {} in {runtime}: top-1 {} (simulated {}), agreement {}, \
                     equal output codes {}, all {} exposed tensors {}{}",
                    run.bits_name(),
                    format.extension(),
                    row.top1.map_or("—".into(), pct),
                    row.simulated_top1.map_or("—".into(), pct),
                    row.argmax_agreement.map_or("—".into(), pct),
                    row.equal_codes.map_or("—".into(), pct),
                    row.tensors_compared,
                    row.tensors_equal.map_or("—".into(), pct),
                    row.refused
                        .as_ref()
                        .map_or(String::new(), |r| format!(" (refused: {r})"))
                );
                rows.push(row);
            }
        }
        Ok(Deployed {
            skipped: None,
            trained_for,
            rows,
        })
    }

    fn deployed_row(
        &self,
        python: &Path,
        script: &Path,
        run: &Run,
        out: &QatOutcome,
        (format, runtime, target): (Format, &str, Target),
    ) -> Result<DeployedRow> {
        let mut row = DeployedRow {
            weight_bits: run.weight_bits,
            act_bits: run.act_bits,
            format: format.extension().into(),
            runtime: runtime.into(),
            target: target.name().into(),
            images: self.test_labels.len(),
            simulated_top1: None,
            top1: None,
            argmax_agreement: None,
            equal_codes: None,
            tensors_equal: None,
            tensors_compared: 0,
            refused: None,
        };
        let opts = ExportOptions {
            target,
            ..out.plan.options
        };
        let model = match QuantPlan::new(&out.plan.graph, &opts).and_then(|p| p.to_int8_model()) {
            Ok(m) => m,
            Err(e @ ExportError::Refused { .. }) => {
                row.refused = Some(e.to_string());
                return Ok(row);
            }
            Err(e) => return Err(e).context("export"),
        };
        let (sim_acc, sim_pred) = self.eval_int8(&model)?;
        row.simulated_top1 = Some(sim_acc);
        let exported = match format {
            Format::Tflite => to_tflite(&model, &TfliteOptions::default()),
            Format::Onnx => to_onnx_qdq(&model, &OnnxOptions::default()),
        };
        let exported = match exported {
            Ok(x) => x,
            Err(e) => {
                row.refused = Some(e.to_string());
                return Ok(row);
            }
        };
        let dir = self
            .out
            .join("deployed")
            .join(format!("{}-{runtime}", run.bits_name().to_lowercase()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let expected = tensor_codes(&model, &exported, &self.test_nhwc)?;
        let output_names: Vec<String> = expected
            .iter()
            .filter(|e| e.output)
            .map(|e| e.name.clone())
            .collect();
        let input = &exported
            .mapping(model.input)
            .ok_or_else(|| anyhow!("the exported file has no input"))?
            .name;
        crosscheck::write_case(
            &dir,
            format,
            &exported.bytes,
            None,
            input,
            self.test_nhwc.view(),
            &expected,
        )?;
        restrict_manifest(&dir, runtime)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let res = crosscheck::run_harness(python, script, &dir, threads)?;
        let r = res
            .runtimes
            .get(runtime)
            .ok_or_else(|| anyhow!("the harness did not run {runtime}"))?;
        if let Some(e) = &r.error {
            row.refused = Some(format!("{runtime} failed: {e}"));
            return Ok(row);
        }
        row.tensors_equal = r.equal_overall();
        row.tensors_compared = r.tensors.values().filter(|t| t.equal.is_some()).count();
        row.equal_codes = output_names
            .iter()
            .map(|n| r.tensors.get(n).and_then(|t| t.equal))
            .collect::<Option<Vec<f64>>>()
            .and_then(|v| v.into_iter().reduce(f64::min));
        let logits = std::fs::read(dir.join("outputs").join(format!("{runtime}.npy")))
            .with_context(|| format!("{runtime} wrote no outputs"))?;
        let (shape, data) = crosscheck::npy::read(&logits)?;
        let Npy::F32(v) = data else {
            return Err(anyhow!("{runtime}: logits are not f32"));
        };
        let n = self.test_labels.len();
        anyhow::ensure!(
            shape.first() == Some(&n) && !v.is_empty(),
            "{runtime}: logits of shape {shape:?} for {n} images"
        );
        let classes = v.len() / n;
        let pred: Vec<i64> = v.chunks(classes).map(argmax).collect();
        let correct = pred
            .iter()
            .zip(&self.test_labels)
            .filter(|(p, y)| p == y)
            .count();
        row.top1 = Some(correct as f64 / n as f64);
        row.argmax_agreement = Some(agreement(&sim_pred, &pred));
        // Keep the model files, the manifest and the result; the inputs and codes are large.
        for big in ["expected", "outputs"] {
            let _ = std::fs::remove_dir_all(dir.join(big));
        }
        let _ = std::fs::remove_file(dir.join("input.npy"));
        Ok(row)
    }
}

/// Our runtime's codes of every tensor of the exported file on `x` (in the file's type and
/// layout), computed batch by batch.
fn tensor_codes(
    model: &Int8Model,
    exported: &qat_export::Exported,
    x: &ArrayD<f32>,
) -> Result<Vec<crosscheck::Expected>> {
    let mut exec = Executor::new(model).context("cannot plan the integer model")?;
    let mut parts: Vec<Vec<crosscheck::Expected>> = Vec::new();
    let n = x.shape()[0];
    for s in (0..n).step_by(256) {
        let e = (s + 256).min(n);
        let values = exec
            .run_all(x.slice_axis(Axis(0), (s..e).into()).into_dyn())
            .context("integer inference failed")?;
        parts.push(crosscheck::expected_codes(model, exported, &values)?);
    }
    let mut out = parts
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("no test images"))?;
    for (k, o) in out.iter_mut().enumerate() {
        o.shape[0] = n;
        o.data = concat(parts.iter().map(|p| &p[k].data))?;
    }
    Ok(out)
}

/// `a` followed by `b`.
fn joined<T: Clone>(mut a: Vec<T>, b: &[T]) -> Vec<T> {
    a.extend_from_slice(b);
    a
}

fn concat<'a>(parts: impl Iterator<Item = &'a Npy>) -> Result<Npy> {
    let mut acc: Option<Npy> = None;
    for p in parts {
        acc = Some(match (acc, p) {
            (None, p) => p.clone(),
            (Some(Npy::I8(a)), Npy::I8(b)) => Npy::I8(joined(a, b)),
            (Some(Npy::U8(a)), Npy::U8(b)) => Npy::U8(joined(a, b)),
            (Some(Npy::I32(a)), Npy::I32(b)) => Npy::I32(joined(a, b)),
            (Some(Npy::F32(a)), Npy::F32(b)) => Npy::F32(joined(a, b)),
            _ => return Err(anyhow!("batches of different code types")),
        });
    }
    acc.ok_or_else(|| anyhow!("no batches"))
}

/// Runs only `runtime` and saves its logits (the harness's optional manifest keys).
fn restrict_manifest(dir: &Path, runtime: &str) -> Result<()> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)?;
    let mut m: serde_json::Value = serde_json::from_str(&text)?;
    m["runtimes"] = serde_json::json!([runtime]);
    m["save_outputs"] = serde_json::json!(true);
    std::fs::write(&path, serde_json::to_string_pretty(&m)?)?;
    Ok(())
}

fn argmax(row: &[f32]) -> i64 {
    let mut best = (0i64, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i as i64, v);
        }
    }
    best.0
}
