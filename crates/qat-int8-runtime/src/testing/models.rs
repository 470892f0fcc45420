//! Hand-built models for tests: tensors, pools and the small graphs that this crate's tests,
//! qat-fuzz and qat-export share. Tensor 0 is always the graph input.

use qat_core::QuantParams;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::Target;

use crate::{Clamp, Conv2d, DType, Int8Model, Op, Pool2d, TensorId, TensorInfo, Weights};

/// SplitMix64 (Steele, Lea, Flood 2014): `z = (s += φ); z = (z ⊕ z≫30)·c₁; z = (z ⊕ z≫27)·c₂;
/// z ⊕ z≫31`, a deterministic, dependency-free generator for test data.
///
/// ```
/// use qat_int8_runtime::testing::models::Rng;
/// let (mut a, mut b) = (Rng(7), Rng(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `next_u64() % n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `n` int8 values in `[−127, 127]`.
    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n)
            .map(|_| (self.below(255) as i32 - 127) as i8)
            .collect()
    }
    /// `n` uint8 values.
    pub fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.below(256) as u8).collect()
    }
    /// `n` values in `[lo, hi)` on a grid of `2^24` steps.
    pub fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * (self.below(1 << 24) as f32 / (1 << 24) as f32))
            .collect()
    }
}

/// A tensor: `U8` with `quant` when it has one, `F32` without.
///
/// ```
/// use qat_int8_runtime::{DType, testing::models::tensor};
/// assert_eq!(tensor("x", &[2, 3], None).dtype, DType::F32);
/// ```
pub fn tensor(name: &str, shape: &[usize], quant: Option<QuantParams>) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype: if quant.is_some() {
            DType::U8
        } else {
            DType::F32
        },
        quant,
    }
}

/// A model over `tensors` and `ops` with input tensor 0, the one output `output` and the
/// `Target::Tflite` rounding.
pub fn model(name: &str, tensors: Vec<TensorInfo>, ops: Vec<Op>, output: TensorId) -> Int8Model {
    Int8Model {
        name: name.into(),
        tensors,
        ops,
        input: 0,
        outputs: vec![output],
        rounding: Target::Tflite,
    }
}

/// `x (f32, shape x) → Quantize (q) → xq → op → y`: `op` reads tensor 1 and writes tensor 2.
pub fn quantize_then(
    name: &str,
    x: &[usize],
    q: QuantParams,
    y: TensorInfo,
    op: Op,
    rounding: Target,
) -> Int8Model {
    let quantize = Op::Quantize {
        input: 0,
        output: 1,
    };
    let tensors = vec![tensor("x", x, None), tensor("xq", x, Some(q)), y];
    Int8Model {
        rounding,
        ..model(name, tensors, vec![quantize, op], 2)
    }
}

/// `x (f32) → Quantize (q) → xq → Dequantize → y`, all of shape `shape`.
pub fn qdq(shape: &[usize], q: QuantParams, rounding: Target) -> Int8Model {
    let dequantize = Op::Dequantize {
        input: 1,
        output: 2,
    };
    quantize_then(
        "qdq",
        shape,
        q,
        tensor("y", shape, None),
        dequantize,
        rounding,
    )
}

/// `Op::AvgPool2d` from `input` to `output`: window `k = [kh, kw]`, stride `s = [sh, sw]`,
/// padding `p = [top, left, bottom, right]`.
pub fn avg_pool(io: [TensorId; 2], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> Op {
    Op::AvgPool2d(pool2d(io, k, s, p))
}

/// `Op::MaxPool2d`, arguments as in [`avg_pool`].
pub fn max_pool(io: [TensorId; 2], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> Op {
    Op::MaxPool2d(pool2d(io, k, s, p))
}

fn pool2d([input, output]: [TensorId; 2], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> Pool2d {
    Pool2d {
        input,
        output,
        kernel: k,
        stride: s,
        padding: p,
    }
}

/// `x (f32) → Quantize → xq → op → out → Dequantize → y`: the integer model around one `op`
/// that reads tensor 1 (`in_shape`, `q_in`) and writes tensor 2 (named `out`, `out_shape`,
/// `q_out`); `Target::Tflite` rounding, named `out`.
pub fn one_op(
    op: Op,
    in_shape: &[usize],
    q_in: QuantParams,
    out: &str,
    out_shape: &[usize],
    q_out: QuantParams,
) -> Int8Model {
    let mut m = quantize_then(
        out,
        in_shape,
        q_in,
        tensor(out, out_shape, Some(q_out)),
        op,
        Target::Tflite,
    );
    m.tensors.push(tensor("y", out_shape, None));
    m.ops.push(Op::Dequantize {
        input: 2,
        output: 3,
    });
    m.outputs = vec![3];
    m
}

/// A conv from tensor 1 to tensor 2 with `n` int8 weights of 1 (one scale, 0.01), zero biases
/// for the `weight_shape[0]` output channels, stride and dilation 1, one multiplier 0.01 and
/// the clamp `[0, 255]`: for tests of shapes and limits, where the values do not matter.
pub fn unit_conv(weight_shape: [usize; 4], n: usize, groups: usize, padding: [usize; 4]) -> Conv2d {
    Conv2d {
        input: 1,
        output: 2,
        weights: Weights::Int8 {
            data: vec![1; n],
            scales: vec![0.01],
        },
        weight_shape,
        bias: vec![0; weight_shape[0]],
        stride: [1, 1],
        padding,
        dilation: [1, 1],
        groups,
        multipliers: vec![QuantizedMultiplier::from_f64(0.01).expect("0.01 is a valid multiplier")],
        clamp: Clamp { lo: 0, hi: 255 },
    }
}
