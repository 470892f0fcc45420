//! The written `.tflite` and `.onnx` files in their own runtimes (LiteRT's reference kernels,
//! LiteRT's default XNNPACK delegate, onnxruntime) through `xtask/py/run_deployed.py`, with the
//! peers' Python (`QAT_PEERS_PYTHON`, which `cargo xtask quantize` sets from the setup's cache).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use qat_export::crosscheck::npy::{self, Npy};
use qat_train::data::{Dataset, Normalize};
use serde::{Deserialize, Serialize};
use xtask::process::output_ok;

use super::input::{bar, nhwc_batch};

/// The predictions of one written file in one runtime.
#[derive(Debug, Serialize)]
pub struct DeployedRun {
    /// The file.
    pub file: String,
    /// `litert_ref`, `litert_xnnpack` or `onnxruntime`.
    pub runtime: String,
    /// The runtime's version.
    pub version: String,
    /// Predicted classes over the evaluated images.
    #[serde(skip)]
    pub predictions: Vec<usize>,
}

#[derive(Deserialize)]
struct Output {
    version: String,
    predictions: Vec<usize>,
}

/// The runtime whose arithmetic `target` is (docs/targets.md); `qat` names none of them.
pub fn target_runtime(target: qat_core::Target) -> Option<&'static str> {
    match target {
        qat_core::Target::Tflite => Some("litert_ref"),
        qat_core::Target::Xnnpack => Some("litert_xnnpack"),
        qat_core::Target::Ort => Some("onnxruntime"),
        qat_core::Target::Qat => None,
    }
}

/// The peers' Python, or why the deployed files are not run.
pub fn peers_python() -> Result<PathBuf, String> {
    match std::env::var_os("QAT_PEERS_PYTHON") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Err(
            "QAT_PEERS_PYTHON is not set (cargo xtask quantize sets it when `cargo xtask setup` \
             installed the peer runtimes)"
                .into(),
        ),
    }
}

/// Runs every written `.tflite` / `.onnx` of `files` over the first `n` test images.
pub fn run_all(
    python: &Path,
    files: &[PathBuf],
    ds: &Dataset,
    n: usize,
    norm: &Normalize,
    work: &Path,
) -> Result<Vec<DeployedRun>> {
    let jobs: Vec<(&PathBuf, &str)> = files
        .iter()
        .flat_map(|f| {
            let runtimes: &[&str] = match f.extension().and_then(|e| e.to_str()) {
                Some("tflite") => &["litert_ref", "litert_xnnpack"],
                Some("onnx") => &["onnxruntime"],
                _ => &[],
            };
            runtimes.iter().map(move |r| (f, *r))
        })
        .collect();
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let x = nhwc_batch(ds, 0..n, norm);
    let images = work.join("images.npy");
    npy::write(&images, x.shape(), &Npy::F32(x.iter().copied().collect()))
        .with_context(|| format!("cannot write {}", images.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/run_deployed.py");
    let progress = bar("deployed files in runtimes", jobs.len(), "runs");
    let mut runs = Vec::new();
    for (file, runtime) in jobs {
        progress.set_message(runtime.to_string());
        let out = work.join(format!("preds-{runtime}.json"));
        output_ok(
            Command::new(python)
                .arg(&script)
                .arg("--model")
                .arg(file)
                .args(["--runtime", runtime, "--input"])
                .arg(&images)
                .arg("--out")
                .arg(&out),
            || format!("cannot run {}", python.display()),
            |_| format!("{} in {runtime}", file.display()),
        )?;
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("cannot read {}", out.display()))?;
        let o: Output =
            serde_json::from_str(&text).with_context(|| format!("{}", out.display()))?;
        if o.predictions.len() != n {
            bail!(
                "{} in {runtime}: {} predictions for {n} images",
                file.display(),
                o.predictions.len()
            );
        }
        runs.push(DeployedRun {
            file: file.display().to_string(),
            runtime: runtime.to_string(),
            version: o.version,
            predictions: o.predictions,
        });
        progress.inc(1);
    }
    progress.finish();
    let _ = std::fs::remove_file(&images);
    Ok(runs)
}
