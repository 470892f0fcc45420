//! Average pools and concat with different input/output params: hand-worked cases, the output
//! grid's own `[qmin, qmax]` clamp, and proptests against a float reference.
//!
//! Tolerance: the rescaling average pool rounds once
//! (`q = clamp(Z_out + round(M'·Σ(q − Z_in)), qmin, qmax)`, `M' = S_in/(S_out·count)`), so it must
//! equal the correctly rounded real value except within `1e−6` of a tie (where the 31-bit
//! multiplier may decide either way), and be within one LSB of the f32 fake-quant simulation
//! everywhere. Concat keeps its `requantize` (TFLite double rounding): within one LSB.

mod common;

use common::{codes_input, unary};
use proptest::prelude::*;
use qat_core::{QuantParams, QuantRange};
use qat_int8_runtime::testing::models::{self, tensor};
use qat_int8_runtime::{Executor, Int8Model, KernelPath, Op, PoolWindow, TensorValue};

fn params(scale: f32, zp: i32, bits: u32) -> QuantParams {
    QuantParams::new(scale, zp, QuantRange::unsigned(bits).unwrap()).unwrap()
}

/// Runs `m` on every supported kernel path with input codes `codes`; asserts that the input
/// codes survive the graph input's quantize step and that all paths agree; returns the output
/// codes.
fn run_codes(m: &Int8Model, in_shape: &[usize], codes: &[u8]) -> Vec<u8> {
    let x = codes_input(in_shape, codes, &m.tensors[0].quant.unwrap());
    let mut first: Option<Vec<u8>> = None;
    for path in KernelPath::supported() {
        let all = Executor::with_path(m, path)
            .unwrap()
            .run_all(x.view())
            .unwrap();
        let TensorValue::U8(xin) = &all[0] else {
            panic!("input is U8")
        };
        assert_eq!(xin.as_slice().unwrap(), codes, "input codes round-trip");
        let TensorValue::U8(y) = all.last().unwrap() else {
            panic!("output is U8")
        };
        let y = y.iter().copied().collect::<Vec<_>>();
        match &first {
            None => first = Some(y),
            Some(f) => assert_eq!(f, &y, "{path} differs from the reference path"),
        }
    }
    first.unwrap()
}

fn avg_pool(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 4]) -> Op {
    models::avg_pool([0, 1], kernel, stride, padding)
}

/// Input codes [[1, 2, 3], [4, 5, 6], [7, 8, 10]], `S_in = 0.1`, `Z_in = 0`.
const X: [u8; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 10];

#[test]
fn padded_avg_pool_rescales_with_one_rounding() {
    // 2×2 windows, stride 2, padding top/left 1 → windows {1}, {2, 3}, {4, 7}, {5, 6, 8, 10}
    // (counts 1, 2, 2, 4). Output S_out = 0.06, Z_out = 7, so M' = S_in/(S_out·count) = (5/3)/count.
    //   {1}:          1·(5/3)/1  = 1.667  → 2  → 9
    //   {2, 3}:       5·(5/3)/2  = 4.167  → 4  → 11
    //   {4, 7}:      11·(5/3)/2  = 9.167  → 9  → 16
    //   {5,6,8,10}:  29·(5/3)/4  = 12.083 → 12 → 19
    // (The old mean-then-requantize path gave 9, 12, 17, 19: 2.5 → 3 → 5, 5.5 → 6 → 10.)
    let m = unary(
        avg_pool([2, 2], [2, 2], [1, 1, 0, 0]),
        params(0.1, 0, 8),
        &[3, 3, 1],
        params(0.06, 7, 8),
        &[2, 2, 1],
    );
    assert_eq!(run_codes(&m, &[3, 3, 1], &X), vec![9, 11, 16, 19]);
}

#[test]
fn global_avg_pool_rescales_with_one_rounding() {
    // Σ(q − Z_in) over the 9 cells with Z_in = 2: 46 − 18 = 28. S_in = 0.1, S_out = 0.04, Z_out = 3:
    // M' = 0.1/(0.04·9) = 0.2778, 28·M' = 7.778 → 8 → 11.
    // (Two roundings: mean 28/9 = 3.11 → 3, ·2.5 = 7.5 → 8 → 11; same here.)
    // S_in = 0.1, S_out = 0.04; the zero points vary.
    let gap = |z_in, shape: &[usize], z_out| {
        let op = Op::GlobalAvgPool {
            input: 0,
            output: 1,
        };
        unary(
            op,
            params(0.1, z_in, 8),
            shape,
            params(0.04, z_out, 8),
            &[1],
        )
    };
    let m = gap(2, &[3, 3, 1], 3);
    assert_eq!(run_codes(&m, &[3, 3, 1], &X), vec![11]);
    // 2×2 global pool, codes 1, 1, 2, 2 with Z_in = 0: Σ = 6, M' = 0.1/(0.04·4) = 0.625,
    // 6·0.625 = 3.75 → 4 (+ Z_out 0). Two roundings gave mean 1.5 → 2, ·2.5 = 5.
    let m = gap(0, &[2, 2, 1], 0);
    assert_eq!(run_codes(&m, &[2, 2, 1], &[1, 1, 2, 2]), vec![4]);
}

#[test]
fn pools_and_concat_clamp_to_the_low_bit_output_grid() {
    // 4-bit output grid [0, 15], S_out = 0.05, Z_out = 3.
    let qo = params(0.05, 3, 4);
    // Avg 2×2 stride 1 on X (S_in = 0.1, Z_in = 0), M' = 0.1/(0.05·4) = 0.5:
    //   Σ = 12 → 6 → 9;  Σ = 16 → 8 → 11;  Σ = 24 → 12 → 15;  Σ = 29 → 14.5 → 15 (ties away)
    //   → 15 + 3 = 18, clamped to qmax = 15 (the old [0, 255] clamp gave 18).
    let m = unary(
        avg_pool([2, 2], [1, 1], [0; 4]),
        params(0.1, 0, 8),
        &[3, 3, 1],
        qo,
        &[2, 2, 1],
    );
    assert_eq!(run_codes(&m, &[3, 3, 1], &X), vec![9, 11, 15, 15]);
    // Concat of the input (S = 0.1, Z = 0) and its 1×1 max pool (same params) into the 4-bit grid:
    // M = 0.1/0.05 = 2, q = 2·q_in + 3: 1 → 5, 2 → 7, …, 6 → 15, 7 → 17 → 15, 10 → 23 → 15.
    let qi = params(0.1, 0, 8);
    let t = |name: &str, shape: &[usize], q| tensor(name, shape, Some(q));
    let tensors = vec![
        t("x", &[3, 3, 1], qi),
        t("p", &[3, 3, 1], qi),
        t("y", &[3, 3, 2], qo),
    ];
    let cat = Op::Concat {
        inputs: vec![0, 1],
        output: 2,
    };
    let copy = models::max_pool([0, 1], [1, 1], [1, 1], [0; 4]);
    let m = models::model("cat4", tensors, vec![copy, cat], 2);
    let want: Vec<u8> = X
        .iter()
        .flat_map(|&q| {
            let c = (2 * q + 3).min(15);
            [c, c]
        })
        .collect();
    assert_eq!(want[..6], [5, 5, 7, 7, 9, 9]);
    assert_eq!(run_codes(&m, &[3, 3, 1], &X), want);
}

/// `round_half_away(y)` and whether `y` is within `1e−6` of a tie.
fn round_exact(y: f64) -> (i64, bool) {
    let near_tie = ((y.abs().fract()) - 0.5).abs() < 1e-6;
    (y.round() as i64, near_tie)
}

/// Random params: scale in `[1e−3, 1)`, `bits` in 2..=8, zero point on the grid.
fn arb_params() -> impl Strategy<Value = QuantParams> {
    (2u32..=8, -3.0f32..0.0, 0.0f64..1.0).prop_map(|(bits, log_s, zf)| {
        let qmax = (1i32 << bits) - 1;
        params(10f32.powf(log_s), (zf * qmax as f64).round() as i32, bits)
    })
}

#[derive(Debug, Clone)]
struct PoolCase {
    hwc: [usize; 3],
    window: PoolWindow,
    qi: QuantParams,
    qo: QuantParams,
    codes: Vec<u8>,
}

fn arb_pool() -> impl Strategy<Value = PoolCase> {
    (
        (1usize..=6, 1usize..=6, 1usize..=3),
        (1usize..=3, 1usize..=3, 1usize..=3, 1usize..=3),
        (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        arb_params(),
        arb_params(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "window larger than the padded input",
            |((h, w, c), (kh, kw, sh, sw), (pt, pl, pb, pr), qi, qo, same, seed)| {
                let padding = [pt % kh, pl % kw, pb % kh, pr % kw];
                if h + padding[0] + padding[2] < kh || w + padding[1] + padding[3] < kw {
                    return None;
                }
                let mut s = seed | 1;
                let codes = (0..h * w * c)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        (s % (qi.qmax() as u64 + 1)) as u8
                    })
                    .collect();
                let window = PoolWindow {
                    kernel: [kh, kw],
                    stride: [sh, sw],
                    padding,
                };
                Some(PoolCase {
                    hwc: [h, w, c],
                    window,
                    qi,
                    qo: if same { qi } else { qo },
                    codes,
                })
            },
        )
}

/// Checks one output code against the exact real average and the f32 simulation
/// (`fake_quant_out(mean of dequantized inputs)`, what qat-export simulates).
fn check_average(
    got: u8,
    cells: &[u8],
    qi: &QuantParams,
    qo: &QuantParams,
) -> Result<(), TestCaseError> {
    let n = cells.len() as f64;
    let centered: i64 = cells
        .iter()
        .map(|&q| q as i64 - qi.zero_point() as i64)
        .sum();
    let y = qi.scale() as f64 * centered as f64 / (qo.scale() as f64 * n);
    let (r, near_tie) = round_exact(y);
    let exact = (r + qo.zero_point() as i64).clamp(qo.qmin() as i64, qo.qmax() as i64);
    let got = got as i64;
    prop_assert!(got >= qo.qmin() as i64 && got <= qo.qmax() as i64);
    if near_tie {
        prop_assert!(
            (got - exact).abs() <= 1,
            "tie {y}: got {got}, exact {exact}"
        );
    } else {
        prop_assert_eq!(got, exact, "y = {}", y);
    }
    let mean: f32 =
        cells.iter().map(|&q| qi.dequantize(q as i32)).sum::<f32>() / cells.len() as f32;
    let sim = qo.quantize(mean) as i64;
    prop_assert!((got - sim).abs() <= 1, "simulation {sim}, got {got}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn avg_pool_is_the_rounded_real_average(case in arb_pool()) {
        let PoolCase { hwc: [h, w, c], window, qi, qo, codes } = case;
        let PoolWindow { kernel, stride, padding } = window;
        let ho = (h + padding[0] + padding[2] - kernel[0]) / stride[0] + 1;
        let wo = (w + padding[1] + padding[3] - kernel[1]) / stride[1] + 1;
        let m = unary(avg_pool(kernel, stride, padding), qi, &[h, w, c], qo, &[ho, wo, c]);
        let y = run_codes(&m, &[h, w, c], &codes);
        for oh in 0..ho {
            for ow in 0..wo {
                for ch in 0..c {
                    let mut cells = Vec::new();
                    for i in 0..kernel[0] {
                        for j in 0..kernel[1] {
                            let ih = (oh * stride[0] + i) as isize - padding[0] as isize;
                            let iw = (ow * stride[1] + j) as isize - padding[1] as isize;
                            if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                                cells.push(codes[(ih as usize * w + iw as usize) * c + ch]);
                            }
                        }
                    }
                    check_average(y[(oh * wo + ow) * c + ch], &cells, &qi, &qo)?;
                }
            }
        }
    }

    #[test]
    fn global_avg_pool_is_the_rounded_real_average(case in arb_pool()) {
        let PoolCase { hwc: [h, w, c], qi, qo, codes, .. } = case;
        let m = unary(Op::GlobalAvgPool { input: 0, output: 1 }, qi, &[h, w, c], qo, &[c]);
        let y = run_codes(&m, &[h, w, c], &codes);
        for ch in 0..c {
            let cells: Vec<u8> = (0..h * w).map(|p| codes[p * c + ch]).collect();
            check_average(y[ch], &cells, &qi, &qo)?;
        }
    }

    #[test]
    fn concat_rescales_into_the_output_grid(
        q1 in arb_params(), q2 in arb_params(), qo in arb_params(), seed in any::<u64>(),
    ) {
        // Concat of x (params q1) with a 1×1 average pool of x rescaled to q2.
        let (h, w, c) = (2, 3, 2);
        let t = |name: &str, c: usize, q| tensor(name, &[h, w, c], Some(q));
        let ops = vec![avg_pool([1, 1], [1, 1], [0; 4]), Op::Concat { inputs: vec![0, 1], output: 2 }];
        let m = models::model("cat", vec![t("x", c, q1), t("p", c, q2), t("y", 2 * c, qo)], ops, 2);
        prop_assume!(Executor::with_path(&m, KernelPath::Reference).is_ok());
        let mut s = seed | 1;
        let codes: Vec<u8> = (0..h * w * c).map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) % (q1.qmax() as u64 + 1)) as u8 }).collect();
        let x = codes_input(&[h, w, c], &codes, &q1);
        let all = Executor::with_path(&m, KernelPath::Reference).unwrap().run_all(x.view()).unwrap();
        let (TensorValue::U8(p), TensorValue::U8(y)) = (&all[1], &all[2]) else { panic!("U8") };
        let (p, y) = (p.as_slice().unwrap(), y.as_slice().unwrap());
        for px in 0..h * w {
            for ch in 0..c {
                for (k, (q, v)) in [(q1, codes[px * c + ch]), (q2, p[px * c + ch])].into_iter().enumerate() {
                    let got = y[px * 2 * c + k * c + ch] as i64;
                    prop_assert!(got >= qo.qmin() as i64 && got <= qo.qmax() as i64);
                    let real = q.scale() as f64 * (v as i64 - q.zero_point() as i64) as f64 / qo.scale() as f64;
                    let want = (real.round() as i64 + qo.zero_point() as i64).clamp(qo.qmin() as i64, qo.qmax() as i64);
                    prop_assert!((got - want).abs() <= 1, "input {k} code {v}: got {got}, want {want}");
                }
            }
        }
    }
}
