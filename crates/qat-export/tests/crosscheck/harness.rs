//! The cross-check harness of the tests: the peers' Python, a graph quantized and exported for a
//! target, the case run in every runtime, and the tally of equal codes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use qat_core::Target;
use qat_export::FloatGraph;
use qat_export::crosscheck::{CrosscheckResult, expected_codes, run_harness, write_case};
use qat_export::ir::{FloatOp, WeightQuant, WeightScheme};
use qat_export::onnx::{OnnxOptions, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{ExportOptions, Format, PtqConfig, ptq};
use qat_int8_runtime::{Executor, Int8Model, Op};

use crate::common::{batch, rng};

/// The peers' Python and the harness script, or `None` (with the reason printed).
pub fn peers(test: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(python) = std::env::var_os("QAT_PEERS_PYTHON") else {
        // Written to the process's stderr, past the test harness's capture: a skip is never silent.
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: QAT_PEERS_PYTHON is not set \
             (export QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python))"
        );
        return None;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../xtask/py/crosscheck.py");
    Some((PathBuf::from(python), script))
}

/// The graph `g` quantized to `bits` (weights symmetric per channel — per tensor on the fully
/// connected layers when `fc_per_tensor` — and activations), planned for `target`, and
/// a test batch whose inputs lie exactly on the input grid (every runtime quantizes them to the
/// same codes: no ties).
pub fn random_model(
    g: &FloatGraph,
    seed: u64,
    bits: u32,
    target: Target,
    fc_per_tensor: bool,
) -> Result<(Int8Model, ArrayD<f32>), String> {
    let mut g = g.clone();
    let wq = |scheme| WeightQuant { scheme, bits };
    for node in &mut g.nodes {
        match &mut node.op {
            FloatOp::Conv2d(c) => c.weight_quant = wq(WeightScheme::SymmetricPerChannel),
            FloatOp::Linear(l) if fc_per_tensor => {
                l.weight_quant = wq(WeightScheme::SymmetricPerTensor)
            }
            FloatOp::Linear(l) => l.weight_quant = wq(WeightScheme::SymmetricPerChannel),
            _ => {}
        }
    }
    let shape = g.validate().expect("valid")[0].clone();
    let r = &mut rng(seed ^ 0xc0de);
    let cal = [batch(r, 8, &shape), batch(r, 8, &shape)];
    let cfg = PtqConfig {
        activation_bits: Some(bits),
        export: ExportOptions {
            target,
            ..ExportOptions::default()
        },
        ..PtqConfig::default()
    };
    // A graph the target's runtime cannot compute (XNNPACK's ratio limits) is refused.
    let plan = ptq(&g, cal.iter().map(|b| b.view()), &cfg).map_err(|e| e.to_string())?;
    let mut model = plan
        .to_int8_model()
        .expect("every target runs in the .qat8 runtime");
    model.name = format!("{}-w{bits}a{bits}", model.name);
    let q = model
        .ops
        .iter()
        .find_map(|op| match op {
            Op::Quantize { output, .. } => model.tensors[*output].quant,
            _ => None,
        })
        .expect("quantized input");
    let x = batch(r, 16, &shape).mapv(|v| q.dequantize(q.quantize(v)));
    Ok((model, x))
}

/// The case directory: temporary, or kept for inspection.
pub enum Kept {
    Temp(tempfile::TempDir),
    Dir(PathBuf),
}

impl Kept {
    fn path(&self) -> &Path {
        match self {
            Kept::Temp(t) => t.path(),
            Kept::Dir(d) => d,
        }
    }
}

/// Exports `model` (deployable + debug copy), writes the case with our runtime's codes on `x`
/// and runs the harness; every runtime must load and run it and expose every tensor.
pub fn crosscheck(
    model: &Int8Model,
    x: &ArrayD<f32>,
    format: Format,
    peers: &(PathBuf, PathBuf),
) -> CrosscheckResult {
    let values = Executor::new(model)
        .expect("executor")
        .run_all(x.view())
        .expect("run");
    let export = |expose_all_tensors: bool| match format {
        Format::Tflite => {
            let opts = TfliteOptions {
                expose_all_tensors,
                ..TfliteOptions::default()
            };
            to_tflite(model, &opts).expect("tflite")
        }
        Format::Onnx => to_onnx_qdq(model, &OnnxOptions { expose_all_tensors }).expect("onnx"),
    };
    let (deploy, debug) = (export(false), export(true));
    let expected = expected_codes(model, &deploy, &values).expect("expected");
    let dir = match std::env::var_os("QAT_CROSSCHECK_KEEP") {
        Some(keep) => {
            let name = format!(
                "{}-{}-{}",
                model.name,
                model.rounding.name(),
                format.extension()
            );
            let d = PathBuf::from(keep).join(name);
            std::fs::create_dir_all(&d).expect("keep dir");
            Kept::Dir(d)
        }
        None => Kept::Temp(tempfile::tempdir().expect("tempdir")),
    };
    let input = &deploy.mapping(model.input).expect("input").name;
    write_case(
        dir.path(),
        format,
        &deploy.bytes,
        Some(&debug.bytes),
        input,
        x.view(),
        &expected,
    )
    .expect("case");
    let res = run_harness(&peers.0, &peers.1, dir.path(), 1).expect("harness");
    for (rt, r) in &res.runtimes {
        assert!(r.error.is_none(), "{} in {rt}: {:?}", model.name, r.error);
        assert_ne!(
            r.debug_outputs_equal,
            Some(false),
            "{} in {rt}: exposing tensors changed the outputs",
            model.name
        );
        for (t, v) in &r.tensors {
            assert!(
                v.error.is_none(),
                "{} in {rt}: tensor {t}: {:?}",
                model.name,
                v.error
            );
        }
    }
    res
}

/// Equal codes per (runtime, our target) over many models: element-weighted share, smallest
/// per-tensor share, largest |Δ|, and the equal share of the graph outputs.
#[derive(Default)]
pub struct Tally(BTreeMap<(String, &'static str), [f64; 6]>);

impl Tally {
    pub fn add(&mut self, rounding: Target, res: &CrosscheckResult, outputs: &[String]) {
        for (rt, r) in &res.runtimes {
            let e = self
                .0
                .entry((rt.clone(), rounding.name()))
                .or_insert([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
            for (name, t) in &r.tensors {
                if let (Some(eq), Some(n)) = (t.equal, t.elements) {
                    e[0] += eq * n as f64;
                    e[1] += n as f64;
                    e[2] = e[2].min(eq);
                    e[3] = e[3].max(t.max_abs_diff.unwrap_or(0.0));
                    if outputs.contains(name) {
                        e[4] += eq * n as f64;
                        e[5] += n as f64;
                    }
                }
            }
        }
    }

    pub fn print(&self, what: &str) {
        eprintln!(
            "{what}\n  runtime         vs qat target     | equal, all tensors | smallest tensor | max |Δ| | equal, outputs"
        );
        for ((rt, rounding), e) in &self.0 {
            eprintln!(
                "  {rt:<15} {rounding:<17} | {:.5} | {:.4} | {} | {:.5}",
                e[0] / e[1],
                e[2],
                e[3],
                e[4] / e[5]
            );
        }
    }
}

/// Runs the graphs `graph(seed)` of `seeds` at `bits`, planned for each of `targets` through `format` (the
/// exported files differ only where the targets' plans do: multipliers are the runtime's, not the
/// format's). Models a target or the writer refuses are counted and skipped. `each(model,
/// result)` sees every run.
#[allow(clippy::too_many_arguments)]
pub fn tally(
    seeds: std::ops::Range<u64>,
    bits: u32,
    fc_per_tensor: bool,
    format: Format,
    graph: impl Fn(u64) -> FloatGraph,
    targets: &[Target],
    peers: &(PathBuf, PathBuf),
    mut each: impl FnMut(&Int8Model, &CrosscheckResult),
) -> (Tally, Vec<String>) {
    let (mut t, mut refused) = (Tally::default(), Vec::new());
    for seed in seeds {
        for &rounding in targets {
            let (model, x) = match random_model(&graph(seed), seed, bits, rounding, fc_per_tensor) {
                Ok(m) => m,
                Err(e) => {
                    refused.push(format!("seed {seed} for {rounding}: {e}"));
                    continue;
                }
            };
            let refusal = match format {
                Format::Tflite => to_tflite(&model, &TfliteOptions::default()).err(),
                Format::Onnx => to_onnx_qdq(&model, &OnnxOptions::default()).err(),
            };
            if let Some(e) = refusal {
                refused.push(format!("{} for {rounding}: {e}", model.name));
                continue;
            }
            let res = crosscheck(&model, &x, format, peers);
            let outputs: Vec<String> = model
                .outputs
                .iter()
                .map(|&o| model.tensors[o].name.clone())
                .collect();
            t.add(rounding, &res, &outputs);
            each(&model, &res);
        }
    }
    (t, refused)
}
