//! Exported models in their official runtimes: `.tflite` in LiteRT (reference kernels, optimized
//! builtin kernels, the default XNNPACK delegate) and ONNX QDQ in onnxruntime, compared code by
//! code — every intermediate tensor a runtime exposes — with the qat runtime on the same input.
//!
//! Needs the peer runtimes: `QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python)`.
//! Without it every test here prints why it is skipped and passes. `QAT_CROSSCHECK_KEEP=DIR`
//! keeps the case files. `cargo test -p qat-export --test crosscheck -- --nocapture` prints the
//! tables.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{GenOptions, batch, random_cnn, rng};
use ndarray::ArrayD;
use qat_export::crosscheck::{CrosscheckResult, expected_codes, run_harness, write_case};
use qat_export::ir::{FloatOp, WeightQuant, WeightScheme};
use qat_export::onnx::{OnnxOptions, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{ExportOptions, Format, PtqConfig, ptq};
use qat_int8_runtime::{Executor, Int8Model, Op, Rounding};

/// The peers' Python and the harness script, or `None` (with the reason printed).
fn peers(test: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(python) = std::env::var_os("QAT_PEERS_PYTHON") else {
        eprintln!(
            "SKIPPED {test}: QAT_PEERS_PYTHON is not set \
             (export QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python))"
        );
        return None;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../xtask/py/crosscheck.py");
    Some((PathBuf::from(python), script))
}

/// A random CNN quantized to `bits` (weights symmetric per channel — per tensor on the fully
/// connected layers when `fc_per_tensor` — and activations), requantizing with `rounding`, and
/// a test batch whose inputs lie exactly on the input grid (every runtime quantizes them to the
/// same codes: no ties).
fn random_model(
    seed: u64,
    bits: u32,
    rounding: Rounding,
    fc_per_tensor: bool,
    opts: &GenOptions,
) -> (Int8Model, ArrayD<f32>) {
    let mut g = random_cnn(seed, opts);
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
            rounding,
            ..ExportOptions::default()
        },
        ..PtqConfig::default()
    };
    let mut model = ptq(&g, cal.iter().map(|b| b.view()), &cfg)
        .expect("ptq")
        .to_int8_model();
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
    (model, x)
}

/// The case directory: temporary, or kept for inspection.
enum Kept {
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
fn crosscheck(
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

/// Equal codes per (runtime, our rounding) over many models: element-weighted share, smallest
/// per-tensor share, largest |Δ|, and the equal share of the graph outputs.
#[derive(Default)]
struct Tally(BTreeMap<(String, &'static str), [f64; 6]>);

impl Tally {
    fn add(&mut self, rounding: Rounding, res: &CrosscheckResult, outputs: &[String]) {
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

    /// `(all-tensor share, smallest tensor share, max |Δ|, output share)`.
    fn get(&self, rt: &str, rounding: Rounding) -> (f64, f64, f64, f64) {
        let e = self.0[&(rt.to_string(), rounding.name())];
        (e[0] / e[1], e[2], e[3], e[4] / e[5])
    }

    fn print(&self, what: &str) {
        eprintln!(
            "{what}\n  runtime         vs qat rounding | equal, all tensors | smallest tensor | max |Δ| | equal, outputs"
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

/// Runs `seeds` random models of `bits` through `format` with both roundings (the exported
/// file is the same: the rounding is the runtime's, not the format's). Models the writer refuses
/// are counted and skipped. `each(model, result)` sees every run.
fn tally(
    seeds: std::ops::Range<u64>,
    bits: u32,
    fc_per_tensor: bool,
    format: Format,
    opts: &GenOptions,
    peers: &(PathBuf, PathBuf),
    mut each: impl FnMut(&Int8Model, &CrosscheckResult),
) -> (Tally, Vec<String>) {
    let (mut t, mut refused) = (Tally::default(), Vec::new());
    for seed in seeds {
        for rounding in [Rounding::Gemmlowp, Rounding::Single] {
            let (model, x) = random_model(seed, bits, rounding, fc_per_tensor, opts);
            let refusal = match format {
                Format::Tflite => to_tflite(&model, &TfliteOptions::default()).err(),
                Format::Onnx => to_onnx_qdq(&model, &OnnxOptions::default()).err(),
            };
            if let Some(e) = refusal {
                if rounding == Rounding::Gemmlowp {
                    refused.push(format!("{}: {e}", model.name));
                }
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

/// TFLite tensors computed by a per-channel `FULLY_CONNECTED` and everything downstream: LiteRT's
/// reference kernel computes per-channel fully connected layers in f64 (see
/// `per_channel_fully_connected_in_litert_reference_kernels`).
fn after_per_channel_fc(bytes: &[u8]) -> Vec<String> {
    use qat_export::tflite::schema::BuiltinOperator;
    let m = qat_export::tflite::read(bytes).expect("read back");
    let codes = m.operator_codes.unwrap_or_default();
    let g = &m.subgraphs.expect("subgraphs")[0];
    let tensors = g.tensors.clone().unwrap_or_default();
    let mut tainted = vec![false; tensors.len()];
    for op in g.operators.clone().unwrap_or_default() {
        let (ins, outs) = (
            op.inputs.unwrap_or_default(),
            op.outputs.unwrap_or_default(),
        );
        let per_channel_fc = codes[op.opcode_index as usize].builtin_code
            == BuiltinOperator::FullyConnected
            && tensors[ins[1] as usize]
                .quantization
                .as_ref()
                .and_then(|q| q.scale.as_ref())
                .is_some_and(|s| s.len() > 1);
        if per_channel_fc || ins.iter().any(|&i| i >= 0 && tainted[i as usize]) {
            outs.iter().for_each(|&o| tainted[o as usize] = true);
        }
    }
    (0..tensors.len())
        .filter(|&i| tainted[i])
        .filter_map(|i| tensors[i].name.clone())
        .collect()
}

/// LiteRT's reference kernels are TFLite's arithmetic: with gemmlowp's double rounding the qat
/// runtime computes every tensor bit for bit (8 and 4 bits; convs, depthwise, grouped, padded,
/// strided and dilated; adds; max pools; per-tensor fully connected layers), except what a
/// per-channel fully connected layer computes (pinned in
/// `per_channel_fully_connected_in_litert_reference_kernels`). Average pools are left out here:
/// `average_pool_ties_below_the_zero_code`.
#[test]
fn tflite_reference_kernels_equal_gemmlowp_rounding() {
    let Some(peers) = peers("tflite_reference_kernels_equal_gemmlowp_rounding") else {
        return;
    };
    let opts = GenOptions {
        pools_and_concat: false,
        ..GenOptions::default()
    };
    for bits in [8, 4] {
        let (mut checked, mut excluded) = (0, 0);
        let (t, refused) = tally(
            0..10,
            bits,
            true,
            Format::Tflite,
            &opts,
            &peers,
            |model, res| {
                if model.rounding != Rounding::Gemmlowp {
                    return;
                }
                let file = to_tflite(model, &TfliteOptions::default()).expect("tflite");
                let skip = after_per_channel_fc(&file.bytes);
                for (name, t) in &res.runtimes["litert_ref"].tensors {
                    if skip.contains(name) {
                        excluded += 1;
                        continue;
                    }
                    checked += 1;
                    assert_eq!(
                        t.equal,
                        Some(1.0),
                        "{}: tensor {name} in litert_ref: {t:?}",
                        model.name
                    );
                }
            },
        );
        t.print(&format!(
            "TFLite, W{bits}A{bits}, 10 random CNNs (no average pools), fully connected per tensor"
        ));
        eprintln!(
            "  {checked} tensors bit-exact in litert_ref; {excluded} after a per-channel fully connected layer; refused: {refused:?}"
        );
        assert!(refused.is_empty() && checked > 30);
    }
}

#[test]
fn measure_random_cnns() {
    let Some(peers) = peers("measure_random_cnns") else {
        return;
    };
    for bits in [8, 4] {
        for format in [Format::Tflite, Format::Onnx] {
            let (t, refused) = tally(
                0..12,
                bits,
                false,
                format,
                &GenOptions::default(),
                &peers,
                |_, _| {},
            );
            t.print(&format!(
                "{format}, W{bits}A{bits}, 12 random CNNs, all per channel"
            ));
            eprintln!("  refused: {refused:#?}");
        }
    }
}
