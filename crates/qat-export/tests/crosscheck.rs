//! Exported models in their official runtimes: `.tflite` in LiteRT (reference kernels, optimized
//! builtin kernels, the default XNNPACK delegate) and ONNX QDQ in onnxruntime, compared code by
//! code — every intermediate tensor a runtime exposes — with the qat runtime on the same input.
//!
//! Needs the peer runtimes: `QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python)`.
//! Without it every test here prints why it is skipped and passes. `QAT_CROSSCHECK_KEEP=DIR`
//! keeps the case files. `cargo test -p qat-export --test crosscheck -- --nocapture` prints the
//! tables.

mod common;
#[path = "crosscheck/harness.rs"]
mod harness;
#[path = "crosscheck/zoo.rs"]
mod zoo;

use std::path::PathBuf;

use common::{GenOptions, batch, codes_of, one_op_model, random_cnn, rng};
use harness::{peers, tally};
use ndarray::ArrayD;
use qat_core::Target;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::{QuantParams, QuantRange};
use qat_export::Format;
use qat_export::crosscheck::npy::Npy;
use qat_export::crosscheck::{CrosscheckResult, Expected, Kind, run_harness, write_case};
use qat_export::onnx::float_to_onnx;
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_int8_runtime::testing::models::avg_pool;
use qat_int8_runtime::testing::reference;
use qat_int8_runtime::{Clamp, FullyConnected, Int8Model, Op, Weights};

/// LiteRT's reference kernels are TFLite's arithmetic: with the `tflite` target the qat runtime
/// computes every tensor bit for bit (8 and 4 bits; convs, depthwise, grouped, padded, strided
/// and dilated; adds; max pools; fully connected layers per tensor and per channel, which
/// LiteRT's reference kernel requantizes in `f64`). Average pools are left out here:
/// `average_pool_ties_below_the_zero_code`.
#[test]
fn tflite_reference_kernels_equal_the_tflite_target() {
    let Some(peers) = peers("tflite_reference_kernels_equal_the_tflite_target") else {
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
                |seed| random_cnn(seed, &opts),
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
    own_runtimes_equal(
        "every_runtime_equals_its_target",
        0..8,
        |seed| random_cnn(seed, &GenOptions::default()),
        "8 random CNNs, all per channel",
    );
}

/// The zoo's architectures (LeNet, MobileNet-v1, MobileNet-v2 with residual adds, the CIFAR
/// ResNet; `tests/crosscheck/zoo.rs`) with random weights and batch norm, every weight per
/// channel, at W8A8 and W4A4: every tensor equal in the runtime of its target.
#[test]
fn zoo_models_equal_their_targets_runtimes() {
    own_runtimes_equal(
        "zoo_models_equal_their_targets_runtimes",
        0..4,
        |i| zoo::all(7)[i as usize].clone(),
        "LeNet, MobileNet-v1, MobileNet-v2, ResNet",
    );
}

/// Each graph of `seeds` planned for every target at W8A8 and W4A4, exported to both formats:
/// LiteRT's reference kernels equal `tflite` on every tensor, LiteRT's default (XNNPACK) equals
/// `xnnpack`, onnxruntime (all graph optimizations, both configurations) equals `ort`; prints
/// every runtime against every target. Without the peers, skipped (with a note) as `test`.
fn own_runtimes_equal(
    test: &str,
    seeds: std::ops::Range<u64>,
    graph: impl Fn(u64) -> qat_export::FloatGraph + Copy,
    what: &str,
) {
    let Some(peers) = peers(test) else {
        return;
    };
    let peers = &peers;
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
                seeds.clone(),
                bits,
                false,
                format,
                graph,
                &Target::ALL,
                peers,
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
            t.print(&format!("{format}, W{bits}A{bits}, {what}"));
            eprintln!("  {checked} tensors bit-exact in their own runtime; refused: {refused:#?}");
            assert!(checked > 20, "{checked}");
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
    let pool = avg_pool([1, 2], [2, 2], [2, 2], [0; 4]);
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
