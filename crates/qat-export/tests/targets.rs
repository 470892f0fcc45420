//! Per deployment target: the simulation computes the target's integer model code for code.
//!
//! * Every target: random CNNs (conv, depthwise, linear, residual add, concat, average and max
//!   pools, ReLU/ReLU6; 8 and 4-bit activations) exported for the target and run by the runtime
//!   (reference kernels and the best kernel path) — every node's codes equal the simulation's.
//!   The arithmetic itself is proptested in qat-core against transcriptions of the runtimes' code.
//! * A hand-worked graph whose accumulators land on exact ties pins where the four targets part.

mod common;

use common::{GenOptions, batch, random_cnn, rng};
use ndarray::ArrayD;
use qat_core::{QuantParams, Target};
use qat_export::ir::{Activation, Linear, Pool2d, WeightQuant, WeightScheme};
use qat_export::simulate::{eval_codes, simulate_codes};
use qat_export::{ExportError, ExportOptions, FloatGraph, PtqConfig, QuantPlan, Refusal, ptq};
use qat_int8_runtime::{Executor, KernelPath, TensorValue};

/// Exports `g` for `target` (PTQ on two random batches), runs the reference kernels and the
/// simulation on a third, and compares every node: end to end (the simulation from the graph
/// input) and isolated (the simulated node on the runtime's own input codes), on the reference
/// path and on `path`. Returns (nodes compared, values compared), or `None` when the target
/// refuses the graph.
fn reference_equals_simulation(
    g: &FloatGraph,
    seed: u64,
    target: Target,
    act_bits: u32,
    path: KernelPath,
) -> Option<(usize, usize)> {
    let mut g = g.clone();
    for id in 0..g.nodes.len() {
        g.set_activation_bits(qat_export::NodeId(id), act_bits)
            .expect("bits");
    }
    let shape = g.validate().expect("valid")[0].clone();
    let r = &mut rng(seed ^ 0x7a49);
    let cal = [batch(r, 6, &shape), batch(r, 6, &shape)];
    let mut cfg = PtqConfig::default();
    cfg.export.target = target;
    let plan = match ptq(&g, cal.iter().map(|b| b.view()), &cfg) {
        Ok(plan) => plan,
        Err(qat_export::PtqError::Export(ExportError::Refused { .. })) => return None,
        Err(e) => panic!("ptq for {target}: {e}"),
    };
    let model = plan.to_int8_model().expect("qat8");
    assert_eq!(model.rounding, target);
    let x = batch(r, 5, &shape);
    let mut exec = Executor::with_path(&model, KernelPath::Reference).expect("executor");
    let vals = exec.run_all(x.view()).expect("run");
    let mut fast = Executor::with_path(&model, path).expect("executor");
    let fast_vals = fast.run_all(x.view()).expect("run");
    let sim = simulate_codes(&plan, x.view()).expect("simulate");
    let node_t = plan.node_tensors();
    let (mut nodes, mut values) = (0, 0);
    let mut int_codes: Vec<ArrayD<i32>> = Vec::new();
    for (i, node) in plan.graph.nodes.iter().enumerate() {
        let q = match &vals[node_t[i]] {
            TensorValue::U8(q) => q.mapv(|c| c as i32),
            TensorValue::F32(_) => int_codes[node.inputs[0].0].clone(),
        };
        let ins: Vec<&ArrayD<i32>> = node.inputs.iter().map(|j| &int_codes[j.0]).collect();
        let isolated = eval_codes(&plan, i, &ins, x.view()).expect("eval");
        let what = format!(
            "seed {seed}, target {target}, {act_bits}-bit: node {} ({})",
            node.name,
            node.op.kind()
        );
        assert_eq!(q, isolated, "{what}: isolated");
        assert_eq!(q, sim[i], "{what}: end to end");
        assert_eq!(vals[node_t[i]], fast_vals[node_t[i]], "{what}: {path} path");
        nodes += 1;
        values += q.len();
        int_codes.push(q);
    }
    Some((nodes, values))
}

#[test]
fn every_target_runs_in_the_runtime_equal_to_the_simulation() {
    for target in Target::ALL {
        let (mut nodes, mut values, mut refused) = (0, 0, 0);
        for seed in 0..16 {
            let g = random_cnn(seed, &GenOptions::default());
            for bits in [8, 4] {
                // A plan the target refuses (XNNPACK's ratio limits; tested below) is counted.
                let Some((n, v)) =
                    reference_equals_simulation(&g, seed, target, bits, KernelPath::best())
                else {
                    refused += 1;
                    continue;
                };
                nodes += n;
                values += v;
            }
        }
        assert!(
            nodes > 100 && values > 10_000 && refused < 16,
            "{target}: {nodes} nodes, {values} values, {refused} refused"
        );
    }
}

/// x[2] → fc (2→1, no bias) → output, all scales powers of two: the accumulator times the
/// multiplier lands exactly on `k + ½`.
fn tie_graph(target: Target) -> QuantPlan {
    let mut g = FloatGraph::new("ties");
    let x = g.input("x", &[2]);
    // weights [0.5, 0.25]: per tensor, S_w = 0.5/127 is not a power of two; use codes directly:
    // max |w| = 127/256 → S_w = 1/256, codes [127, 64] for w = [127/256, 64/256].
    let fc = g.linear(
        "fc",
        x,
        Linear::new(vec![127.0 / 256.0, 0.25], [1, 2]).with_weight_quant(WeightQuant {
            scheme: WeightScheme::SymmetricPerTensor,
            bits: 8,
        }),
    );
    g.output("y", fc);
    // input [-2, 1.984375] → S_x = 1/64, Z_x = 128; output [-4, 3.96875] → S = 1/32, Z = 128
    g.set_range(x, -2.0, 1.984375).unwrap();
    g.set_range(fc, -4.0, 3.96875).unwrap();
    let opts = ExportOptions {
        target,
        ..ExportOptions::default()
    };
    QuantPlan::new(&g, &opts).unwrap()
}

#[test]
fn ties_split_the_targets_as_their_runtimes_round() {
    // M = S_x·S_w/S_out = (1/64)(1/256)·32 = 2^−9 (M0 = 2^30, shift −8); weight codes [127, 64].
    // Centred input codes [0, 4], [0, 12], [0, −4], [1, 2]: acc = 256, 768, −256, 255, i.e.
    // 0.5, 1.5, −0.5 and 0.498 output steps.
    let x = ArrayD::from_shape_vec(
        vec![4, 2],
        vec![
            0.0,
            4.0 / 64.0,
            0.0,
            12.0 / 64.0,
            0.0,
            -4.0 / 64.0,
            1.0 / 64.0,
            2.0 / 64.0,
        ],
    )
    .unwrap();
    let codes = |t: Target| -> Vec<i32> {
        let plan = tie_graph(t);
        let fc = plan.graph.find("fc").unwrap().0;
        simulate_codes(&plan, x.view()).unwrap()[fc]
            .iter()
            .copied()
            .collect()
    };
    // one rounding, ties away from zero
    assert_eq!(codes(Target::Qat), vec![129, 130, 127, 128]);
    // LiteRT's reference fully connected: one f64 product, C `round` (ties away from zero)
    assert_eq!(codes(Target::Tflite), vec![129, 130, 127, 128]);
    // ... while its convs round twice: SRDHM rounds 127.5 half-steps up to 128, RDBP then
    // rounds 0.5 up.
    let m = tie_graph(Target::Tflite).layers[1]
        .as_ref()
        .unwrap()
        .multipliers[0];
    let conv_stage =
        [256, 768, -256, 255].map(|acc| Target::Tflite.requantize(acc, m, 128, 0, 255));
    assert_eq!(conv_stage, [129, 130, 127, 129]);
    // f32, ties to even
    assert_eq!(codes(Target::Ort), vec![128, 130, 128, 128]);
    assert_eq!(codes(Target::Xnnpack), vec![128, 130, 128, 128]);
}

#[test]
fn the_input_quantize_follows_the_target() {
    // S_x = 1/64: x = 2.5/64 is an exact tie at centred code 2.5.
    let x = ArrayD::from_shape_vec(vec![1, 2], vec![2.5 / 64.0, -2.5 / 64.0]).unwrap();
    let codes = |t: Target| -> Vec<i32> {
        simulate_codes(&tie_graph(t), x.view()).unwrap()[0]
            .iter()
            .copied()
            .collect()
    };
    assert_eq!(codes(Target::Qat), vec![130, 126]); // ties to even (libtorch)
    assert_eq!(codes(Target::Tflite), vec![131, 125]); // ties away from zero
    assert_eq!(codes(Target::Ort), vec![130, 126]);
    assert_eq!(codes(Target::Xnnpack), vec![130, 126]);
}

#[test]
fn f32_targets_use_the_runtimes_f32_multiplier() {
    for t in [Target::Ort, Target::Xnnpack] {
        let plan = tie_graph(t);
        let lq = plan.layers[1].as_ref().unwrap();
        let (s_in, s_w, s_out) = (1.0f32 / 64.0, lq.weights.params[0].scale(), 1.0f32 / 32.0);
        assert_eq!(lq.multipliers[0].to_f32(), s_in * s_w / s_out, "{t}");
    }
}

/// TFLite's int8 average pool keeps its input's parameters: a pool with its own output range is
/// refused for the TFLite-based targets, and planned for `qat` and `ort`.
#[test]
fn pools_with_their_own_params_are_refused_where_tflite_ignores_them() {
    let mut g = FloatGraph::new("pool");
    let x = g.input("x", &[4, 4, 1]);
    let p = g.avg_pool("pool", x, Pool2d::square(2, 2));
    g.output("y", p);
    g.set_range(x, -1.0, 1.0).unwrap();
    g.set_range(p, -0.5, 0.5).unwrap();
    for target in Target::ALL {
        let opts = ExportOptions {
            target,
            avg_pool_own_params: true,
            ..ExportOptions::default()
        };
        let r = QuantPlan::new(&g, &opts);
        match target {
            Target::Qat | Target::Ort => assert!(r.is_ok(), "{target}: {r:?}"),
            Target::Tflite | Target::Xnnpack => match r {
                Err(ExportError::Refused { refusals }) => {
                    assert!(matches!(&refusals[0], Refusal::Target { node, .. } if node == "pool"));
                    assert!(refusals[0].to_string().contains("average pool"));
                }
                other => panic!("{target}: {other:?}"),
            },
        }
    }
}

#[test]
fn asymmetric_weights_are_refused_for_tflite_kernels() {
    let mut g = FloatGraph::new("w");
    let x = g.input("x", &[2]);
    let fc = g.linear(
        "fc",
        x,
        Linear::new(vec![0.5, -0.25], [1, 2])
            .with_activation(Activation::Relu6)
            .with_weight_quant(WeightQuant {
                scheme: WeightScheme::AsymmetricPerTensor,
                bits: 8,
            }),
    );
    g.output("y", fc);
    g.set_range(x, -1.0, 1.0).unwrap();
    g.set_range(fc, 0.0, 6.0).unwrap();
    for target in Target::ALL {
        let opts = ExportOptions {
            target,
            ..ExportOptions::default()
        };
        let refused = matches!(QuantPlan::new(&g, &opts), Err(ExportError::Refused { .. }));
        assert_eq!(
            refused,
            matches!(target, Target::Tflite | Target::Xnnpack),
            "{target}"
        );
    }
}

/// ReLU6's upper clamp is the code each runtime gives to 6.0: with `6/S = 4.5` in f32, TFLite
/// rounds half away from zero, the others to even (qat's `6·f32(1/S)` is 4.4999996).
#[test]
fn relu6_bound_follows_the_target() {
    let p = QuantParams::new(6.0 / 4.5, 0, qat_core::QuantRange::unsigned(8).unwrap()).unwrap();
    let hi = |t| qat_export::passes::fuse::activation_clamp(Activation::Relu6, &p, t).hi;
    assert_eq!(
        Target::ALL.map(hi),
        [4, 5, 4, 4] // qat, tflite, ort, xnnpack
    );
}
