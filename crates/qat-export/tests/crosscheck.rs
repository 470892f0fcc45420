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
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{GenOptions, batch, codes_of, one_op_model, random_cnn, rng};
use ndarray::ArrayD;
use qat_core::Target;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::{QuantParams, QuantRange};
use qat_export::crosscheck::npy::Npy;
use qat_export::crosscheck::{
    CrosscheckResult, Expected, Kind, expected_codes, run_harness, write_case,
};
use qat_export::ir::{FloatOp, WeightQuant, WeightScheme};
use qat_export::onnx::{OnnxOptions, float_to_onnx, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{ExportOptions, Format, PtqConfig, ptq};
use qat_int8_runtime::testing::reference;
use qat_int8_runtime::{Clamp, Executor, FullyConnected, Int8Model, Op, Weights};

/// The peers' Python and the harness script, or `None` (with the reason printed).
fn peers(test: &str) -> Option<(PathBuf, PathBuf)> {
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

/// A random CNN quantized to `bits` (weights symmetric per channel — per tensor on the fully
/// connected layers when `fc_per_tensor` — and activations), planned for `target`, and
/// a test batch whose inputs lie exactly on the input grid (every runtime quantizes them to the
/// same codes: no ties).
fn random_model(
    seed: u64,
    bits: u32,
    target: Target,
    fc_per_tensor: bool,
    opts: &GenOptions,
) -> Result<(Int8Model, ArrayD<f32>), String> {
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

/// Equal codes per (runtime, our target) over many models: element-weighted share, smallest
/// per-tensor share, largest |Δ|, and the equal share of the graph outputs.
#[derive(Default)]
struct Tally(BTreeMap<(String, &'static str), [f64; 6]>);

impl Tally {
    fn add(&mut self, rounding: Target, res: &CrosscheckResult, outputs: &[String]) {
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

    fn print(&self, what: &str) {
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

/// Runs `seeds` random models of `bits` planned for each of `targets` through `format` (the
/// exported files differ only where the targets' plans do: multipliers are the runtime's, not the
/// format's). Models a target or the writer refuses are counted and skipped. `each(model,
/// result)` sees every run.
#[allow(clippy::too_many_arguments)]
fn tally(
    seeds: std::ops::Range<u64>,
    bits: u32,
    fc_per_tensor: bool,
    format: Format,
    opts: &GenOptions,
    targets: &[Target],
    peers: &(PathBuf, PathBuf),
    mut each: impl FnMut(&Int8Model, &CrosscheckResult),
) -> (Tally, Vec<String>) {
    let (mut t, mut refused) = (Tally::default(), Vec::new());
    for seed in seeds {
        for &rounding in targets {
            let (model, x) = match random_model(seed, bits, rounding, fc_per_tensor, opts) {
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

/// LiteRT's reference kernels are TFLite's arithmetic: with the `tflite` target the qat runtime
/// computes every tensor bit for bit (8 and 4 bits; convs, depthwise, grouped, padded, strided
/// and dilated; adds; max pools; fully connected layers per tensor and per channel, which
/// LiteRT's reference kernel requantizes in `f64`). Average pools are left out here:
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
        for fc_per_tensor in [true, false] {
            let mut checked = 0;
            let (t, refused) = tally(
                0..8,
                bits,
                fc_per_tensor,
                Format::Tflite,
                &opts,
                &[Target::Tflite, Target::Qat],
                &peers,
                |model, res| {
                    if model.rounding != Target::Tflite {
                        return;
                    }
                    for (name, t) in &res.runtimes["litert_ref"].tensors {
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
                "TFLite, W{bits}A{bits}, 8 random CNNs (no average pools), fully connected per {}",
                if fc_per_tensor { "tensor" } else { "channel" }
            ));
            eprintln!("  {checked} tensors bit-exact in litert_ref; refused: {refused:?}");
            assert!(refused.is_empty() && checked > 30);
        }
    }
}

/// Every runtime against the target that names it, on random CNNs (convs, depthwise, grouped,
/// strided, dilated, residual adds, concats, average and max pools, global pools, fully connected;
/// everything per channel) at W8A8 and W4A4: LiteRT's default (XNNPACK delegate) computes every
/// tensor of an `xnnpack` model bit for bit, onnxruntime (all graph optimizations) every tensor
/// of an `ort` model, LiteRT's reference kernels every tensor of a `tflite` model. Prints the
/// shares of every runtime against every target with `--nocapture`.
#[test]
fn every_runtime_equals_its_target() {
    let Some(peers) = peers("every_runtime_equals_its_target") else {
        return;
    };
    let own: [(&str, Target); 4] = [
        ("litert_ref", Target::Tflite),
        ("litert_xnnpack", Target::Xnnpack),
        ("onnxruntime", Target::Ort),
        ("onnxruntime_x64prec", Target::Ort),
    ];
    for bits in [8, 4] {
        for format in [Format::Tflite, Format::Onnx] {
            let mut checked = 0;
            let (t, refused) = tally(
                0..8,
                bits,
                false,
                format,
                &GenOptions::default(),
                &Target::ALL,
                &peers,
                |model, res| {
                    for (rt, r) in &res.runtimes {
                        if !own.contains(&(rt.as_str(), model.rounding)) {
                            continue;
                        }
                        for (name, t) in &r.tensors {
                            checked += 1;
                            assert_eq!(
                                t.equal,
                                Some(1.0),
                                "{} ({}): tensor {name} in {rt}: {t:?}",
                                model.name,
                                model.rounding
                            );
                        }
                    }
                },
            );
            t.print(&format!(
                "{format}, W{bits}A{bits}, 8 random CNNs, all per channel"
            ));
            eprintln!("  {checked} tensors bit-exact in their own runtime; refused: {refused:#?}");
            assert!(checked > 50, "{checked}");
        }
    }
}

/// Writes a case whose expected values for the tensor `name` are `expected` (int8 codes in the
/// file's layout) and runs the harness.
fn check_against(
    model: &Int8Model,
    x: &ArrayD<f32>,
    name: &str,
    shape: Vec<usize>,
    expected: Vec<i8>,
    peers: &(PathBuf, PathBuf),
) -> CrosscheckResult {
    let file = to_tflite(model, &TfliteOptions::default()).expect("tflite");
    let debug = TfliteOptions {
        expose_all_tensors: true,
        ..TfliteOptions::default()
    };
    let debug = to_tflite(model, &debug).expect("tflite");
    let exp = Expected {
        name: name.into(),
        shape,
        data: Npy::I8(expected),
        output: false,
        kind: Kind::Codes,
        dequantize: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = &file.mapping(model.input).expect("input").name;
    write_case(
        dir.path(),
        Format::Tflite,
        &file.bytes,
        Some(&debug.bytes),
        input,
        x.view(),
        &[exp],
    )
    .expect("case");
    let res = run_harness(&peers.0, &peers.1, dir.path(), 1).expect("harness");
    eprintln!("{}", res.to_table());
    res
}

/// TFLite's int8 average pool rounds the mean of `q − 128` half away from zero
/// (`(Σ ± n/2)/n`, C division); the `qat` target rounds the mean of `q` half up. They differ on
/// ties below code 128, which ReLU outputs (zero point 0) hit all the time: LiteRT's reference
/// kernel computes TFLite's formula on every window, as the runtime does for a `tflite` model,
/// and the `qat` target differs exactly on the negative ties.
#[test]
fn average_pool_ties_below_the_zero_code() {
    let q = QuantParams::new(0.1, 0, QuantRange::unsigned(8).unwrap()).unwrap();
    let pool = Op::AvgPool2d {
        input: 1,
        output: 2,
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0; 4],
    };
    let model = one_op_model(pool, &[4, 4, 1], q, "avg", &[2, 2, 1], q);
    // Codes 0..=30 and 120..=140: windows below and above the zero code.
    let r = &mut rng(7);
    let n = 64;
    let codes: Vec<u8> = (0..n * 16)
        .map(|i| {
            if i < n * 8 {
                r.int(0, 30) as u8
            } else {
                r.int(120, 140) as u8
            }
        })
        .collect();
    let x = ArrayD::from_shape_vec(
        vec![n, 4, 4, 1],
        codes.iter().map(|&c| q.dequantize(c as i32)).collect(),
    )
    .unwrap();
    let ours = codes_of(&model, &x, 2);
    let qat_model = Int8Model {
        rounding: qat_core::Target::Qat,
        ..model.clone()
    };
    let qat = codes_of(&qat_model, &x, 2);
    let (mut tflite, mut negative_ties) = (Vec::new(), 0);
    for s in 0..n {
        for (oy, ox) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let sum: i32 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|(dy, dx)| codes[s * 16 + (2 * oy + dy) * 4 + 2 * ox + dx] as i32 - 128)
                .sum();
            let v = if sum > 0 {
                (sum + 2) / 4
            } else {
                (sum - 2) / 4
            };
            let (ours_v, qat_v) = (
                ours[s * 4 + oy * 2 + ox] as i32 - 128,
                qat[s * 4 + oy * 2 + ox] as i32 - 128,
            );
            assert_eq!(ours_v, v, "the tflite target is TFLite's formula");
            let tie = sum.rem_euclid(4) == 2;
            if tie && sum < 0 {
                negative_ties += 1;
                assert_eq!(qat_v, v + 1, "qat rounds the negative tie up");
            } else {
                assert_eq!(qat_v, v, "same off negative ties");
            }
            tflite.push(v as i8);
        }
    }
    assert!(negative_ties > 10, "{negative_ties}");
    let Some(peers) = peers("average_pool_ties_below_the_zero_code") else {
        return;
    };
    let res = check_against(&model, &x, "avg", vec![n, 2, 2, 1], tflite, &peers);
    assert_eq!(res.runtimes["litert_ref"].tensors["avg"].equal, Some(1.0));
}

/// LiteRT's reference kernel for a fully connected layer computes
/// `round(acc · (f64) S_in·S_w[c]/S_out)` in f64, ties away from zero — not the fixed-point
/// multiplier of its convs (gemmlowp's double rounding differs on a few outputs). The qat
/// runtime's `tflite` target computes that formula, and LiteRT equals it on every output.
#[test]
fn per_channel_fully_connected_in_litert_reference_kernels() {
    let (qi, qo) = (
        QuantParams::new(0.02, 128, QuantRange::unsigned(8).unwrap()).unwrap(),
        QuantParams::new(0.03, 120, QuantRange::unsigned(8).unwrap()).unwrap(),
    );
    let (cout, cin) = (8, 24);
    let r = &mut rng(11);
    let data: Vec<i8> = (0..cout * cin)
        .map(|_| (r.int(0, 254) as i32 - 127) as i8)
        .collect();
    let scales: Vec<f32> = (0..cout).map(|_| r.real(0.002, 0.02)).collect();
    let fc = FullyConnected {
        input: 1,
        output: 2,
        weights: Weights::Int8 {
            data,
            scales: scales.clone(),
        },
        weight_shape: [cout, cin],
        bias: (0..cout).map(|_| r.int(0, 2000) as i32 - 1000).collect(),
        multipliers: scales
            .iter()
            .map(|&s| {
                QuantizedMultiplier::from_f64(qi.scale() as f64 * s as f64 / qo.scale() as f64)
                    .unwrap()
            })
            .collect(),
        clamp: Clamp { lo: 0, hi: 255 },
    };
    let model = one_op_model(
        Op::FullyConnected(fc.clone()),
        &[cin],
        qi,
        "fc",
        &[cout],
        qo,
    );
    let n = 256;
    let codes: Vec<u8> = (0..n * cin).map(|_| r.int(0, 255) as u8).collect();
    let x = ArrayD::from_shape_vec(
        vec![n, cin],
        codes.iter().map(|&c| qi.dequantize(c as i32)).collect(),
    )
    .unwrap();
    let ours = codes_of(&model, &x, 2);
    let (mut f64_rounded, mut gemmlowp_differs) = (Vec::new(), 0);
    for s in 0..n {
        let mut acc = vec![0i32; cout];
        reference::fully_connected_acc(
            &codes[s * cin..(s + 1) * cin],
            qi.zero_point(),
            &fc,
            &mut acc,
        );
        for (c, &a) in acc.iter().enumerate() {
            let m = qi.scale() as f64 * scales[c] as f64 / qo.scale() as f64;
            let v = ((a as f64 * m).round() as i32 + qo.zero_point()).clamp(0, 255);
            assert_eq!(v, ours[s * cout + c] as i32, "sample {s} channel {c}");
            let fixed = qat_core::target::Target::Tflite.requantize(
                a,
                fc.multipliers[c],
                qo.zero_point(),
                0,
                255,
            );
            gemmlowp_differs += (v != fixed) as usize;
            f64_rounded.push((v - 128) as i8);
        }
    }
    assert!(gemmlowp_differs > 0, "the pin needs a difference");
    let Some(peers) = peers("per_channel_fully_connected_in_litert_reference_kernels") else {
        return;
    };
    let res = check_against(&model, &x, "fc", vec![n, cout], f64_rounded, &peers);
    eprintln!(
        "gemmlowp rounding differs from the f64 formula on {gemmlowp_differs} of {} outputs",
        n * cout
    );
    assert_eq!(res.runtimes["litert_ref"].tensors["fc"].equal, Some(1.0));
}

/// The float export in onnxruntime (f32) against qat's float interpreter (f64 accumulation).
#[test]
fn float_onnx_matches_the_float_interpreter() {
    let Some(peers) = peers("float_onnx_matches_the_float_interpreter") else {
        return;
    };
    for seed in 0..6 {
        let g = random_cnn(seed, &GenOptions::default());
        let shape = g.validate().unwrap()[0].clone();
        let x = batch(&mut rng(seed), 8, &shape);
        let vals = qat_export::interp::run(&g, x.view(), None).unwrap();
        let file = float_to_onnx(&g).unwrap();
        let expected: Vec<Expected> = g
            .output_ids()
            .into_iter()
            .map(|id| {
                let v = &vals[id.0];
                Expected {
                    name: g.nodes[id.0].name.clone(),
                    shape: v.shape().to_vec(),
                    data: Npy::F32(v.iter().copied().collect()),
                    output: true,
                    kind: Kind::Float,
                    dequantize: None,
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write_case(
            dir.path(),
            Format::Onnx,
            &file.bytes,
            None,
            &file.input,
            x.view(),
            &expected,
        )
        .unwrap();
        let res = run_harness(&peers.0, &peers.1, dir.path(), 1).unwrap();
        for (rt, r) in &res.runtimes {
            assert!(r.error.is_none(), "{rt}: {:?}", r.error);
            for (t, v) in &r.tensors {
                let rel = v.max_rel_diff.unwrap_or(f64::NAN);
                eprintln!(
                    "seed {seed} {rt} {t}: max |Δ| {:?}, relative {rel:.2e}",
                    v.max_abs_diff
                );
                assert!(rel < 1e-4, "seed {seed} {rt} {t}: {v:?}");
            }
        }
    }
}
