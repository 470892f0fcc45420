//! A two-layer network worked by hand: every number export must produce, and the integer
//! outputs, are derived in the comments and asserted exactly.
//!
//! Network: x[2] → fc1 (2→2, ReLU, per-channel symmetric int8) → fc2 (2→2, per-tensor symmetric
//! int8) → output. Ranges are chosen so that every scale is a power of two (exact in f32).
//!
//! * input range [−2, 1.984375]: width 255/64 → S_x = 1/64, Z_x = 2·64 = 128.
//! * fc1 weights [[1.984375, −0.5], [0.25, −0.9921875]]:
//!   row 0 max |w| = 127/64 → S_w0 = 1/64, codes [127, −32];
//!   row 1 max |w| = 127/128 → S_w1 = 1/128, codes [32, −127].
//! * fc1 range [−1, 6.96875]: width 255/32 → S_1 = 1/32, Z_1 = 32. ReLU clamp [Z_1, 255] = [32, 255].
//! * fc1 bias [0.25, −0.125]: b/(S_x·S_w) = 0.25·4096 = 1024, −0.125·8192 = −1024.
//! * fc1 multipliers S_x·S_w/S_1: (1/64)(1/64)·32 = 2^−7 → (M0 = 2^30, shift −6);
//!   (1/64)(1/128)·32 = 2^−8 → (2^30, −7).
//! * fc2 weights [[0.49609375, 0.125], [−0.25, 0.0625]], per tensor: max |w| = 127/256 →
//!   S_w = 1/256, codes [[127, 32], [−64, 16]].
//! * fc2 range [−2, 1.984375] → S_2 = 1/64, Z_2 = 128; no activation: clamp [0, 255].
//! * fc2 bias [0.0625, −0.03125] / (S_1·S_w = 1/8192) = [512, −256].
//! * fc2 multiplier (1/32)(1/256)·64 = 2^−7 → (2^30, −6), one (per tensor).
//!
//! Sample A, x = [0.5, −1.0]: codes [160, 64], centered [32, −64].
//!   fc1 acc0 = 127·32 + (−32)(−64) + 1024 = 7136; 7136·2^−7 = 55.75 → 56; + 32 = 88.
//!   fc1 acc1 = 32·32 + (−127)(−64) − 1024 = 8128; 8128·2^−8 = 31.75 → 32; + 32 = 64.
//!   fc2 input centered [56, 32]: acc0 = 127·56 + 32·32 + 512 = 8648; ·2^−7 = 67.5625 → 68 → 196.
//!   acc1 = −64·56 + 16·32 − 256 = −3328; ·2^−7 = −26 → 102.
//!   outputs: (196 − 128)/64 = 1.0625, (102 − 128)/64 = −0.40625.
//! Sample B, x = [−1.0, 0.5]: codes [64, 160], centered [−64, 32].
//!   fc1 acc0 = −8128 − 1024 + 1024 = −8128 → −63.5 → −64 (half away from zero) → −32 → ReLU 32.
//!   fc1 acc1 = −2048 − 4064 − 1024 = −7136 → −27.875 → −28 → 4 → ReLU 32.
//!   fc2 input centered [0, 0]: acc = bias: 512·2^−7 = 4 → 132; −256·2^−7 = −2 → 126.
//!   outputs: 0.0625, −0.03125.

use ndarray::ArrayD;
use qat_export::ir::{Activation, Linear, WeightQuant, WeightScheme};
use qat_export::simulate::simulate_codes;
use qat_export::{ExportOptions, FloatGraph, QuantPlan};
use qat_int8_runtime::{Clamp, Executor, Op, TensorValue, Weights};

fn graph() -> FloatGraph {
    let mut g = FloatGraph::new("hand");
    let x = g.input("x", &[2]);
    let fc1 = g.linear(
        "fc1",
        x,
        Linear::new(vec![1.984375, -0.5, 0.25, -0.9921875], [2, 2])
            .with_bias(vec![0.25, -0.125])
            .with_activation(Activation::Relu),
    );
    let fc2 = g.linear(
        "fc2",
        fc1,
        Linear::new(vec![0.49609375, 0.125, -0.25, 0.0625], [2, 2])
            .with_bias(vec![0.0625, -0.03125])
            .with_weight_quant(WeightQuant {
                scheme: WeightScheme::SymmetricPerTensor,
                bits: 8,
            }),
    );
    g.output("y", fc2);
    g.set_range(x, -2.0, 1.984375).unwrap();
    g.set_range(fc1, -1.0, 6.96875).unwrap();
    g.set_range(fc2, -2.0, 1.984375).unwrap();
    g
}

fn mult(m: &qat_core::fixed_point::QuantizedMultiplier) -> (i32, i32) {
    (m.multiplier(), m.shift())
}

#[test]
fn exports_the_hand_computed_numbers() {
    let plan = QuantPlan::new(&graph(), &ExportOptions::default()).unwrap();
    let p = &plan.act_params;
    assert_eq!((p[0].scale(), p[0].zero_point()), (1.0 / 64.0, 128));
    assert_eq!((p[1].scale(), p[1].zero_point()), (1.0 / 32.0, 32));
    assert_eq!((p[2].scale(), p[2].zero_point()), (1.0 / 64.0, 128));

    let model = plan.to_int8_model().unwrap();
    model.validate().unwrap();
    let fcs: Vec<_> = model
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::FullyConnected(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(fcs.len(), 2);
    assert_eq!(
        fcs[0].weights,
        Weights::Int8 {
            data: vec![127, -32, 32, -127],
            scales: vec![1.0 / 64.0, 1.0 / 128.0]
        }
    );
    assert_eq!(fcs[0].bias, vec![1024, -1024]);
    let m: Vec<_> = fcs[0].multipliers.iter().map(mult).collect();
    assert_eq!(m, vec![(1 << 30, -6), (1 << 30, -7)]);
    assert_eq!(fcs[0].clamp, Clamp { lo: 32, hi: 255 });

    assert_eq!(
        fcs[1].weights,
        Weights::Int8 {
            data: vec![127, 32, -64, 16],
            scales: vec![1.0 / 256.0]
        }
    );
    assert_eq!(fcs[1].bias, vec![512, -256]);
    let m: Vec<_> = fcs[1].multipliers.iter().map(mult).collect();
    assert_eq!(m, vec![(1 << 30, -6)]);
    assert_eq!(fcs[1].clamp, Clamp { lo: 0, hi: 255 });

    // Run the integer model and check every tensor's codes.
    let x = ArrayD::from_shape_vec(vec![2, 2], vec![0.5, -1.0, -1.0, 0.5]).unwrap();
    let mut exec = Executor::new(&model).unwrap();
    let vals = exec.run_all(x.view()).unwrap();
    let t = plan.node_tensors();
    let codes = |i: usize| match &vals[t[i]] {
        TensorValue::U8(a) => a.iter().copied().collect::<Vec<u8>>(),
        TensorValue::F32(_) => panic!("node {i} is F32"),
    };
    assert_eq!(codes(0), vec![160, 64, 64, 160]);
    assert_eq!(codes(1), vec![88, 64, 32, 32]);
    assert_eq!(codes(2), vec![196, 102, 132, 126]);
    let y = exec.run(x.view()).unwrap();
    assert_eq!(
        y[0].iter().copied().collect::<Vec<f32>>(),
        vec![1.0625, -0.40625, 0.0625, -0.03125]
    );

    // The simulation gives the same codes.
    let sc = simulate_codes(&plan, x.view()).unwrap();
    assert_eq!(
        sc[1].iter().copied().collect::<Vec<i32>>(),
        vec![88, 64, 32, 32]
    );
    assert_eq!(
        sc[2].iter().copied().collect::<Vec<i32>>(),
        vec![196, 102, 132, 126]
    );
}
