//! Cross-checks of an exported model in its official runtimes: the case files the Python
//! harness (`xtask/py/crosscheck.py`) reads, and its result.
//!
//! A *case* is a directory:
//!
//! | file | what |
//! |---|---|
//! | `manifest.json` | format, model files, input, and one entry per compared tensor |
//! | `model.tflite` / `model.onnx` | the deployable model ([`Exported::bytes`]) |
//! | `model.debug.*` | optional: the same model with every quantized tensor a graph output |
//! | `input.npy` | the f32 input batch, NHWC (the qat runtime's layout) |
//! | `expected/NNN.npy` | what our runtime computed for that tensor, in the file's dtype and layout |
//!
//! [`expected_codes`] turns our runtime's [`TensorValue`]s into expected codes through the
//! [`TensorMapping`](crate::interchange::TensorMapping)s of an export (int8 = code − 128 for TFLite, NCHW for ONNX); [`write_case`]
//! writes the directory; [`run_harness`] runs the harness with a Python that has numpy,
//! ai-edge-litert and onnxruntime (`cargo xtask setup --print-peers-python`) and parses its
//! JSON into a [`CrosscheckResult`]: per runtime, per tensor, the share of equal codes and the
//! largest difference.

pub mod npy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use qat_int8_runtime::{DType, Int8Model, Op, TensorValue};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::interchange::{CodeType, Exported, Format, Layout};
use npy::Npy;

/// Why a cross-check could not be prepared or run.
#[derive(Debug, Error)]
pub enum CrosscheckError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A malformed `.npy` file.
    #[error("npy: {0}")]
    Npy(String),
    /// Our runtime's values do not match the export's tensor map.
    #[error("tensor {tensor}: {why}")]
    Values {
        /// Runtime tensor.
        tensor: usize,
        /// What is inconsistent.
        why: String,
    },
    /// The harness failed or wrote no valid result.
    #[error("harness: {0}")]
    Harness(String),
}

impl CrosscheckError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How a tensor is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Integer codes, exactly.
    Codes,
    /// Float values (the float export): max |Δ| and max |Δ| / max |expected|.
    Float,
}

/// Maps a float runtime value back to codes: `clamp(round(y/scale) + zero_point, qmin, qmax)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dequantize {
    /// Scale of the codes.
    pub scale: f32,
    /// Zero point, in the file's code type.
    pub zero_point: i32,
    /// Smallest code of the file's type.
    pub qmin: i32,
    /// Largest code.
    pub qmax: i32,
}

/// One compared tensor: its name in the file and the values our side expects.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Name in the file.
    pub name: String,
    /// Shape, batch first, in the file's layout.
    pub shape: Vec<usize>,
    /// Expected elements (codes in the file's type, or f32).
    pub data: Npy,
    /// Whether it is a graph output of the deployable file.
    pub output: bool,
    /// How to compare.
    pub kind: Kind,
    /// For a float runtime value that stands for codes: how to map it back.
    pub dequantize: Option<Dequantize>,
}

fn file_layout(arr: ArrayD<u8>, layout: Layout) -> ArrayD<u8> {
    match (layout, arr.ndim()) {
        (Layout::Nchw, 4) => arr.permuted_axes(vec![0, 3, 1, 2]),
        _ => arr,
    }
}

fn to_file_codes(arr: ArrayD<u8>, layout: Layout, dtype: CodeType) -> (Vec<usize>, Npy) {
    let arr = file_layout(arr, layout);
    let shape = arr.shape().to_vec();
    let data = match dtype {
        CodeType::I8 => Npy::I8(arr.iter().map(|&c| (c as i32 - 128) as i8).collect()),
        CodeType::U8 | CodeType::F32 => Npy::U8(arr.iter().copied().collect()),
    };
    (shape, data)
}

/// The expected codes of every tensor of `exported` from our runtime's values
/// (`Executor::run_all` on the same input): each U8 tensor in the file's code type and layout;
/// each F32 graph output written by a `Dequantize` as the codes of that op's input, with the
/// [`Dequantize`] parameters to map the runtime's float output back to codes. The F32 graph
/// input is not compared.
pub fn expected_codes(
    model: &Int8Model,
    exported: &Exported,
    values: &[TensorValue],
) -> Result<Vec<Expected>, CrosscheckError> {
    let mut out = Vec::new();
    for m in &exported.tensors {
        let bad = |why: &str| CrosscheckError::Values {
            tensor: m.tensor,
            why: why.to_string(),
        };
        let info = model
            .tensors
            .get(m.tensor)
            .ok_or_else(|| bad("no such tensor"))?;
        let (source, dequantize) = match info.dtype {
            DType::U8 => (m.tensor, None),
            DType::F32 => {
                let Some(src) = model.ops.iter().find_map(|op| match op {
                    Op::Dequantize { input, output } if *output == m.tensor => Some(*input),
                    _ => None,
                }) else {
                    continue; // the graph input
                };
                let q = model.tensors[src]
                    .quant
                    .ok_or_else(|| bad("Dequantize input has no params"))?;
                // The float output stands for the codes of its source tensor, in the file's type.
                let code = exported
                    .mapping(src)
                    .map(|s| s.dtype)
                    .ok_or_else(|| bad("the Dequantize input is not in the file"))?;
                let (qmin, qmax) = code.code_range();
                let d = Dequantize {
                    scale: q.scale(),
                    zero_point: q.zero_point() + code.offset(),
                    qmin,
                    qmax,
                };
                (src, Some((d, code)))
            }
        };
        let TensorValue::U8(arr) = values.get(source).ok_or_else(|| bad("no value"))? else {
            return Err(bad("expected uint8 codes from the runtime"));
        };
        let dtype = dequantize.map_or(m.dtype, |(_, c)| c);
        let (shape, data) = to_file_codes(arr.clone(), m.layout, dtype);
        out.push(Expected {
            name: m.name.clone(),
            shape,
            data,
            output: m.graph_output,
            kind: Kind::Codes,
            dequantize: dequantize.map(|(d, _)| d),
        });
    }
    Ok(out)
}

/// Writes a case directory (see the [module docs](self)): `model.<ext>`, optionally
/// `model.debug.<ext>`, `input.npy` under the file's input name, `expected/*.npy` and
/// `manifest.json`.
pub fn write_case(
    dir: &Path,
    format: Format,
    model: &[u8],
    debug: Option<&[u8]>,
    input_name: &str,
    input: ArrayViewD<'_, f32>,
    expected: &[Expected],
) -> Result<(), CrosscheckError> {
    let ext = format.extension();
    let exp_dir = dir.join("expected");
    std::fs::create_dir_all(&exp_dir).map_err(|e| CrosscheckError::io(&exp_dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| CrosscheckError::io(&p, e))
    };
    let model_file = format!("model.{ext}");
    write(&model_file, model)?;
    let debug_file = match debug {
        Some(bytes) => {
            let f = format!("model.debug.{ext}");
            write(&f, bytes)?;
            Some(f)
        }
        None => None,
    };
    let x = input.as_standard_layout();
    npy::write(
        &dir.join("input.npy"),
        x.shape(),
        &Npy::F32(x.iter().copied().collect()),
    )?;
    let mut tensors = Vec::with_capacity(expected.len());
    for (i, e) in expected.iter().enumerate() {
        let file = format!("expected/{i:03}.npy");
        npy::write(&dir.join(&file), &e.shape, &e.data)?;
        tensors.push(serde_json::json!({
            "name": e.name, "expected": file, "output": e.output,
            "kind": e.kind, "dequantize": e.dequantize,
        }));
    }
    let manifest = serde_json::json!({
        "format": ext, "model": model_file, "debug_model": debug_file,
        "input": {"name": input_name, "file": "input.npy"},
        "tensors": tensors,
    });
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| CrosscheckError::Harness(format!("manifest: {e}")))?;
    write("manifest.json", text.as_bytes())
}

/// One tensor's comparison in one runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorResult {
    /// Elements compared.
    pub elements: Option<usize>,
    /// Share of equal codes (codes only).
    pub equal: Option<f64>,
    /// Largest |Δ| (codes, or float).
    pub max_abs_diff: Option<f64>,
    /// Largest |Δ| / max |expected| (float only).
    pub max_rel_diff: Option<f64>,
    /// Where the value came from: `deploy` (a graph output), `preserved` (LiteRT's preserved
    /// intermediates) or `debug` (the debug model's outputs).
    pub source: Option<String>,
    /// Why it could not be compared (not exposed, shape mismatch, …).
    pub error: Option<String>,
}

/// One runtime's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeResult {
    /// Package version.
    pub version: Option<String>,
    /// Why the runtime failed as a whole (load or run error).
    pub error: Option<String>,
    /// Op histogram of what ran (LiteRT op names incl. `DELEGATE`; onnxruntime's kernels after
    /// graph optimization, e.g. `QLinearConv`).
    #[serde(default)]
    pub ops: BTreeMap<String, usize>,
    /// Whether the debug model's graph outputs equal the deployable model's.
    pub debug_outputs_equal: Option<bool>,
    /// Per tensor name.
    #[serde(default)]
    pub tensors: BTreeMap<String, TensorResult>,
}

impl RuntimeResult {
    /// The smallest equal-code share over the tensors compared (`None` if none was).
    pub fn min_equal(&self) -> Option<f64> {
        self.tensors
            .values()
            .filter_map(|t| t.equal)
            .min_by(|a, b| a.total_cmp(b))
    }

    /// The equal-code share over all compared elements (element-weighted).
    pub fn equal_overall(&self) -> Option<f64> {
        let (eq, n) =
            self.tensors
                .values()
                .fold((0.0, 0usize), |(eq, n), t| match (t.equal, t.elements) {
                    (Some(e), Some(k)) => (eq + e * k as f64, n + k),
                    _ => (eq, n),
                });
        (n > 0).then(|| eq / n as f64)
    }

    /// The largest |Δ| over the tensors compared.
    pub fn max_abs_diff(&self) -> Option<f64> {
        self.tensors
            .values()
            .filter_map(|t| t.max_abs_diff)
            .max_by(|a, b| a.total_cmp(b))
    }
}

/// The harness's result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrosscheckResult {
    /// `tflite` or `onnx`.
    pub format: String,
    /// numpy version.
    pub numpy: Option<String>,
    /// Per runtime (`litert_ref`, `litert_builtin`, `litert_xnnpack`, `onnxruntime`).
    pub runtimes: BTreeMap<String, RuntimeResult>,
}

impl CrosscheckResult {
    /// A table: one row per runtime and tensor (equal share, max |Δ|, elements, source).
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        for (rt, r) in &self.runtimes {
            let version = r.version.as_deref().unwrap_or("?");
            s.push_str(&format!("{rt} ({version})"));
            if let Some(e) = &r.error {
                s.push_str(&format!(": FAILED {e}\n"));
                continue;
            }
            s.push_str(&format!(
                ": overall equal {:.4}, min {:.4}, max |Δ| {}, debug outputs equal {:?}\n",
                r.equal_overall().unwrap_or(f64::NAN),
                r.min_equal().unwrap_or(f64::NAN),
                r.max_abs_diff().unwrap_or(f64::NAN),
                r.debug_outputs_equal
            ));
            for (name, t) in &r.tensors {
                match &t.error {
                    Some(e) => s.push_str(&format!("  {name:<24} {e}\n")),
                    None => s.push_str(&format!(
                        "  {name:<24} equal {:>7} max|Δ| {:>10} n {:>7} {}\n",
                        t.equal.map_or("-".into(), |e| format!("{e:.4}")),
                        t.max_abs_diff.map_or("-".into(), |d| format!("{d}")),
                        t.elements.unwrap_or(0),
                        t.source.as_deref().unwrap_or("")
                    )),
                }
            }
        }
        s
    }
}

/// Runs `python script case_dir --threads N` and parses `case_dir/result.json`.
pub fn run_harness(
    python: &Path,
    script: &Path,
    case_dir: &Path,
    threads: usize,
) -> Result<CrosscheckResult, CrosscheckError> {
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(case_dir)
        .args(["--threads", &threads.max(1).to_string()])
        .output()
        .map_err(|e| CrosscheckError::io(python, e))?;
    if !out.status.success() {
        return Err(CrosscheckError::Harness(format!(
            "{} exited with {}: {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = case_dir.join("result.json");
    let text = std::fs::read_to_string(&path).map_err(|e| CrosscheckError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| CrosscheckError::Harness(format!("{}: {e}", path.display())))
}
