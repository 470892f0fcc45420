//! Executor and reference ops: hand-worked cases and float cross-checks.

mod common;

use common::{Builder, Rng, act, codes_input, unary, zoo_model};
use ndarray::ArrayD;
use qat_core::{QuantParams, QuantRange, fixed_point::QuantizedMultiplier};
use qat_int8_runtime::testing::models::{avg_pool, max_pool, model, qdq, tensor};
use qat_int8_runtime::{
    Clamp, Conv2d, Executor, Int8Model, KernelPath, Op, RunError, Target, TensorValue, Weights,
};

fn params(scale: f32, zp: i32) -> QuantParams {
    QuantParams::new(scale, zp, QuantRange::unsigned(8).unwrap()).unwrap()
}

/// One conv on a U8 input (no Quantize): input codes go straight in.
fn single_conv(input_hw: [usize; 2], padding: [usize; 4]) -> Int8Model {
    let qi = params(0.1, 2);
    let qo = params(0.05, 100);
    let [h, w] = input_hw;
    let ho = h + padding[0] + padding[2] - 1;
    let wo = w + padding[1] + padding[3] - 1;
    let conv = Conv2d {
        input: 0,
        output: 1,
        // 2×2 kernel [[1, 2], [0, −1]]
        weights: Weights::Int8 {
            data: vec![1, 2, 0, -1],
            scales: vec![0.025],
        },
        weight_shape: [1, 2, 2, 1],
        bias: vec![10],
        stride: [1, 1],
        padding,
        dilation: [1, 1],
        groups: 1,
        multipliers: vec![QuantizedMultiplier::from_f64(0.5).unwrap()], // 0.1·0.025/0.05
        clamp: Clamp { lo: 0, hi: 255 },
    };
    unary(Op::Conv2d(conv), qi, &[h, w, 1], qo, &[ho, wo, 1])
}

/// Input codes [[3,4,5],[6,7,8],[9,10,11]] with Z_in = 2 are the centered values 1..9.
fn hand_input() -> ArrayD<f32> {
    // U8 graph input: the executor quantizes f32 with S = 0.1, Z = 2, so r = 0.1·(q − 2).
    let codes = [3, 4, 5, 6, 7, 8, 9, 10, 11];
    ArrayD::from_shape_vec(
        vec![1, 3, 3, 1],
        codes.iter().map(|&q| 0.1 * (q - 2) as f32).collect(),
    )
    .unwrap()
}

/// The output codes of `single_conv` (3×3 input, `padding`) on [`hand_input`], per supported
/// kernel path.
fn hand_conv_on_every_path(padding: [usize; 4]) -> Vec<(KernelPath, Vec<u8>)> {
    let model = single_conv([3, 3], padding);
    let run = |path| {
        let mut e = Executor::with_path(&model, path).unwrap();
        e.run_u8(hand_input().view()).unwrap()[0]
            .iter()
            .copied()
            .collect()
    };
    KernelPath::supported().map(|p| (p, run(p))).collect()
}

#[test]
fn hand_worked_conv_no_padding() {
    // acc(0,0) = 1·1 + 2·2 + 0·4 − 1·5 = 0, + bias 10 = 10, ·0.5 = 5, + Z_out 100 = 105
    // acc(0,1) = 2 + 6 − 6 = 2 → 12 → 6 → 106;  acc(1,0) = 4 + 10 − 8 = 6 → 16 → 8 → 108
    // acc(1,1) = 5 + 12 − 9 = 8 → 18 → 9 → 109
    for (path, y) in hand_conv_on_every_path([0; 4]) {
        assert_eq!(y, [105, 106, 108, 109], "{path}");
    }
}

#[test]
fn hand_worked_conv_zero_point_padding() {
    // Padding 1 all round: padded cells hold Z_in = 2 (real 0) and contribute nothing.
    // out(0,0): only w(1,1) = −1 sees x(0,0) = 1 → −1 + 10 = 9 → 4.5 rounds up (SRDHM) → 5 → 105
    // out(3,3): only w(0,0) = 1 sees x(2,2) = 9 → 19 → 9.5 → 10 → 110
    // out(0,3): only w(1,0) = 0 sees x(0,2) → 10 → 5 → 105
    for (path, y) in hand_conv_on_every_path([1; 4]) {
        assert_eq!(y.len(), 16);
        assert_eq!((y[0], y[15], y[3]), (105, 110, 105), "{path}");
        // interior matches the unpadded result
        assert_eq!((y[5], y[6], y[9], y[10]), (105, 106, 108, 109), "{path}");
    }
}

#[test]
fn pools_hand_worked() {
    let q = params(0.1, 0);
    let x = [1u8, 2, 3, 4, 5, 6, 7, 8, 10];
    let run = |m: &Int8Model| {
        let y = Executor::new(m)
            .unwrap()
            .run_u8(codes_input(&[3, 3, 1], &x, &q).view())
            .unwrap();
        y[0].as_slice().unwrap().to_vec()
    };
    // Avg 2×2 stride 1, no padding, same params: (1+2+4+5+2)/4 = 3 (3.0), (2+3+5+6+2)/4 = 4,
    // (4+5+7+8+2)/4 = 6, (5+6+8+10+2)/4 = 7 (7.25 → 7)
    let pool = |op| unary(op, q, &[3, 3, 1], q, &[2, 2, 1]);
    let m = pool(avg_pool([0, 1], [2, 2], [1, 1], [0; 4]));
    assert_eq!(run(&m), [3, 4, 6, 7]);
    // Padded avg: corner window sees only x(0,0) → 1 (padding excluded from the count). The
    // `qat` target's uint8 average (ties up).
    let padded = pool(avg_pool([0, 1], [2, 2], [2, 2], [1, 1, 0, 0]));
    let m = Int8Model {
        rounding: Target::Qat,
        ..padded.clone()
    };
    // windows: {1}, {2,3} → 2.5 → 3, {4,7} → 5.5 → 6, {5,6,8,10} → 7.25 → 7
    assert_eq!(run(&m), [1, 3, 6, 7]);
    // The `tflite` target is LiteRT's int8 average of `q − 128`, ties away from zero:
    // {2,3} → (−251 − 1)/2 = −126 → 2, {4,7} → (−245 − 1)/2 = −123 → 5.
    assert_eq!(run(&padded), [1, 2, 5, 7]);
    // Max 2×2 stride 1
    let m = pool(max_pool([0, 1], [2, 2], [1, 1], [0; 4]));
    assert_eq!(run(&m), [5, 6, 8, 10]);
    // Global average with requantization to S = 0.2, Z = 10, one rounding:
    // M' = 0.1/(0.2·9) = 1/18, Σ(q − 0) = 46 → 46/18 = 2.56 → 3, + 10 = 13
    let qo = params(0.2, 10);
    let gap = Op::GlobalAvgPool {
        input: 0,
        output: 1,
    };
    assert_eq!(run(&unary(gap, q, &[3, 3, 1], qo, &[1])), [13]);
}

/// Runs `m` (`a → 1×1 average pool → b`, then `y = combine(a, b)`) on one sample of shape
/// `shape` whose codes are `codes`: the codes of `a`, `b` and `y`.
fn rescale_and_combine(m: &Int8Model, shape: &[usize], codes: &[u8]) -> [Vec<u8>; 3] {
    let q = m.tensors[0].quant.unwrap();
    let all = Executor::new(m)
        .unwrap()
        .run_all(codes_input(shape, codes, &q).view())
        .unwrap();
    std::array::from_fn(|i| match &all[i] {
        TensorValue::U8(t) => t.iter().copied().collect(),
        other => panic!("tensor {i} is not U8: {other:?}"),
    })
}

#[test]
fn add_matches_float_within_one_lsb() {
    let (qa, qb, qo) = (params(0.02, 30), params(0.05, 200), params(0.04, 128));
    let t = |name: &str, q| tensor(name, &[16, 16, 1], Some(q));
    // a = input codes; b = a rescaled to other params by a 1×1 average pool; y = a + b.
    let add = Op::Add {
        a: 0,
        b: 1,
        output: 2,
        clamp: Clamp { lo: 0, hi: 255 },
    };
    let rescale = avg_pool([0, 1], [1, 1], [1, 1], [0; 4]);
    let m = model(
        "add",
        vec![t("a", qa), t("b", qb), t("y", qo)],
        vec![rescale, add],
        2,
    );
    let codes: Vec<u8> = (0..=255).collect();
    let [a, b, y] = rescale_and_combine(&m, &[16, 16, 1], &codes);
    assert_eq!(a, codes);
    for ((&ca, &cb), &cy) in a.iter().zip(b.iter()).zip(y.iter()) {
        let want = qo.quantize(qa.dequantize(ca as i32) + qb.dequantize(cb as i32));
        assert!(
            (cy as i32 - want).abs() <= 1,
            "a {ca} b {cb}: got {cy}, float says {want}"
        );
    }
}

#[test]
fn concat_rescales_within_one_lsb() {
    let (q1, q2, qo) = (params(0.02, 10), params(0.03, 100), params(0.05, 60));
    let t = |name: &str, c, q| tensor(name, &[2, 2, c], Some(q));
    let cat = Op::Concat {
        inputs: vec![0, 1],
        output: 2,
    };
    let rescale = avg_pool([0, 1], [1, 1], [1, 1], [0; 4]);
    let m = model(
        "cat",
        vec![t("a", 3, q1), t("b", 3, q2), t("y", 6, qo)],
        vec![rescale, cat],
        2,
    );
    let [a, b, y] = rescale_and_combine(&m, &[2, 2, 3], &Rng(5).u8s(12));
    for p in 0..4 {
        for c in 0..3 {
            let wa = qo.quantize(q1.dequantize(a[p * 3 + c] as i32));
            let wb = qo.quantize(q2.dequantize(b[p * 3 + c] as i32));
            assert!((y[p * 6 + c] as i32 - wa).abs() <= 1);
            assert!((y[p * 6 + 3 + c] as i32 - wb).abs() <= 1);
            // the 1×1 avg pool rescales a → b within one LSB as well
            assert!(
                (b[p * 3 + c] as i32 - q2.quantize(q1.dequantize(a[p * 3 + c] as i32))).abs() <= 1
            );
        }
    }
}

#[test]
fn quantize_dequantize_use_qat_core_rounding() {
    let q = act(-1.0, 1.0);
    let m = qdq(&[5], q, Target::Tflite);
    let xs = [-2.0f32, -0.5, 0.0, 0.3, 7.0];
    let x = ArrayD::from_shape_vec(vec![1, 5], xs.to_vec()).unwrap();
    let mut e = Executor::new(&m).unwrap();
    let y = e.run(x.view()).unwrap();
    for (&r, &got) in xs.iter().zip(y[0].iter()) {
        assert_eq!(got, q.fake_quant(r));
    }
    let codes = e.run_u8(x.view()).unwrap();
    assert_eq!(
        codes[0].as_slice().unwrap(),
        xs.map(|r| q.quantize(r) as u8).as_slice()
    );
}

#[test]
fn zoo_runs_on_every_path_identically_and_batch_independent() {
    for rounding in Target::ALL {
        zoo_on_every_path(rounding);
    }
}

fn zoo_on_every_path(rounding: Target) {
    let m = Int8Model {
        rounding,
        ..zoo_model()
    };
    if rounding == Target::Xnnpack {
        // The zoo's average pool rescales; LiteRT runs TFLite's int8 pool, which cannot.
        let e = Executor::new(&m).map(drop).unwrap_err();
        assert!(e.to_string().contains("average pool"), "{e}");
        return;
    }
    let n = 3;
    let x = ArrayD::from_shape_vec(vec![n, 8, 8, 3], Rng(11).f32s(n * 192, -1.2, 1.2)).unwrap();
    let want = Executor::with_path(&m, KernelPath::Reference)
        .unwrap()
        .run_all(x.view())
        .unwrap();
    for path in KernelPath::supported() {
        let mut e = Executor::with_path(&m, path).unwrap();
        assert_eq!(e.run_all(x.view()).unwrap(), want, "{path} {rounding}");
        // running again (buffers reused) and one sample at a time give the same values
        assert_eq!(
            e.run_all(x.view()).unwrap(),
            want,
            "{path} {rounding} second run"
        );
        let one = e
            .run_u8(x.slice(ndarray::s![1..2, .., .., ..]).into_dyn())
            .unwrap();
        let all = e.run_u8(x.view()).unwrap();
        assert_eq!(
            one[0].as_slice().unwrap(),
            all[0]
                .slice(ndarray::s![1..2, ..])
                .as_standard_layout()
                .as_slice()
                .unwrap()
        );
    }
    // Every op produced something non-trivial: the codes of the FC output are not all equal.
    let TensorValue::U8(fc) = &want[m.tensors.len() - 2] else {
        panic!()
    };
    assert!(fc.iter().any(|&c| c != fc[[0, 0]]));
}

#[test]
fn bad_input_shape_is_an_error() {
    let m = zoo_model();
    let mut e = Executor::new(&m).unwrap();
    let x = ArrayD::<f32>::zeros(vec![1, 8, 8, 4]);
    assert!(matches!(e.run(x.view()), Err(RunError::InputShape { .. })));
    let x = ArrayD::<f32>::zeros(vec![8, 8, 3]);
    assert!(matches!(e.run(x.view()), Err(RunError::InputShape { .. })));
}

#[test]
fn builder_fc_layer_runs() {
    let mut b = Builder::new(1);
    let x = b.tensor("x", &[6], Some(act(0.0, 1.0)));
    let y = b.fc("fc", x, 3, act(-2.0, 2.0));
    let m = b.finish("fc", x, vec![y]);
    let input = ArrayD::from_shape_vec(vec![2, 6], Rng(2).f32s(12, 0.0, 1.0)).unwrap();
    let r = Executor::with_path(&m, KernelPath::Reference)
        .unwrap()
        .run(input.view())
        .unwrap();
    for path in KernelPath::supported() {
        assert_eq!(
            Executor::with_path(&m, path)
                .unwrap()
                .run(input.view())
                .unwrap(),
            r
        );
    }
}

/// The two roundings differ on the zoo (some codes move by one LSB, never more in the first
/// layer), and the model's field is what the executor honours.
#[test]
fn rounding_modes_differ_by_at_most_one_lsb_per_layer() {
    let x = ArrayD::from_shape_vec(vec![4, 8, 8, 3], Rng(5).f32s(4 * 192, -1.2, 1.2)).unwrap();
    let run = |rounding| {
        let m = Int8Model {
            rounding,
            ..zoo_model()
        };
        Executor::with_path(&m, KernelPath::Reference)
            .unwrap()
            .run_all(x.view())
            .unwrap()
    };
    let (g, s) = (run(Target::Tflite), run(Target::Qat));
    // tensor 2 is conv1's output: same input codes, so the modes differ by at most one LSB there
    let (TensorValue::U8(a), TensorValue::U8(b)) = (&g[2], &s[2]) else {
        panic!("conv1 output is U8")
    };
    assert!(
        a.iter()
            .zip(b)
            .all(|(&p, &q)| (p as i32 - q as i32).abs() <= 1)
    );
    assert_ne!(
        g, s,
        "double and single rounding agree everywhere on the zoo"
    );
}

/// The executor runs the model it is given: borrowed (no copy) or shared through an `Arc`.
#[test]
fn executor_borrows_or_shares_the_model() {
    let m = zoo_model();
    let e = Executor::new(&m).unwrap();
    assert!(
        std::ptr::eq(e.model(), &m),
        "Executor::new copied the model"
    );
    let shared = std::sync::Arc::new(zoo_model());
    let e = Executor::from_arc(std::sync::Arc::clone(&shared), KernelPath::Portable).unwrap();
    assert!(std::ptr::eq(e.model(), &*shared));
    assert_eq!(std::sync::Arc::strong_count(&shared), 2);
    drop(e);
    assert_eq!(std::sync::Arc::strong_count(&shared), 1);
}
