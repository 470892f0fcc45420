//! Reference kernels: obvious loops, one output element at a time, always compiled and never
//! optimized.
//!
//! They follow the paper's §2.3–2.4 literally and are the ground truth every optimized kernel is
//! tested against; no optimized code ever stands in for them. All functions work on one sample
//! (no batch dimension), NHWC activations, OHWI weights. Accumulation is int32 with wrapping adds;
//! the validated reduction limit (`K ≤ 2^16`) keeps `Σ q1·q2` of int8 weights in range, and
//! wrapping makes every algebraically equal evaluation order (row/column-sum expansion, packed
//! GEMM, SIMD) give the same bits.

use qat_core::QuantParams;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::Target;

use super::add::{AddParams, Rescale};
use super::pool::{AvgPoolRescale, PoolGeom};
use crate::model::{Clamp, Conv2d, FullyConnected, Weights};

/// Weight code `q2` and its zero point `Z2` for output channel `co`, element `i` of the op's
/// weight array.
#[inline]
fn weight(w: &Weights, co: usize, i: usize) -> (i32, i32) {
    match w {
        Weights::Int8 { data, .. } => (data[i] as i32, 0),
        Weights::Uint8 {
            data, zero_points, ..
        } => {
            let z = if zero_points.len() == 1 {
                zero_points[0]
            } else {
                zero_points[co]
            };
            (data[i] as i32, z)
        }
    }
}

/// The multiplier of output channel `c` (one shared or one per channel).
#[inline]
pub fn channel_multiplier(ms: &[QuantizedMultiplier], c: usize) -> QuantizedMultiplier {
    if ms.len() == 1 { ms[0] } else { ms[c] }
}

/// Paper eq. 7–8 for one output: with `N` the reduction length,
/// `Σ (q1 − Z1)(q2 − Z2) = N·Z1·Z2 − Z1·a2 − Z2·ā1 + Σ q1·q2`, `a2 = Σ q2` (column sum of the
/// weights), `ā1 = Σ q1` (row sum of the activations). Wrapping int32.
#[inline]
fn zero_point_expansion(n: usize, z1: i32, z2: i32, a2: i32, a1: i32, dot: i32) -> i32 {
    (n as i32)
        .wrapping_mul(z1)
        .wrapping_mul(z2)
        .wrapping_sub(z1.wrapping_mul(a2))
        .wrapping_sub(z2.wrapping_mul(a1))
        .wrapping_add(dot)
}

/// Conv2d int32 accumulators (bias included) for one sample:
/// `acc[oh, ow, co] = bias[co] + Σ_{i,j,ci} (x[ih, iw, ci] − Z_in)·(w[co, i, j, ci] − Z_w[co])`,
/// `ih = oh·s_h − pad_top + i·d_h`, `iw = ow·s_w − pad_left + j·d_w`; out-of-bounds positions hold
/// `Z_in` (real 0.0), computed through the eq. 7–8 expansion with row and column sums.
///
/// `acc` has `Ho·Wo·C_out` elements.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_acc(
    input: &[u8],
    in_hwc: [usize; 3],
    zp_in: i32,
    conv: &Conv2d,
    out_hwc: [usize; 3],
    acc: &mut [i32],
) {
    let [h, w, cin] = in_hwc;
    let [ho, wo, cout] = out_hwc;
    let [_, kh, kw, cig] = conv.weight_shape;
    let cog = cout / conv.groups;
    let n = kh * kw * cig;
    for oh in 0..ho {
        for ow in 0..wo {
            for co in 0..cout {
                let g = co / cog;
                let (mut dot, mut a1, mut a2, mut z2) = (0i32, 0i32, 0i32, 0i32);
                for i in 0..kh {
                    for j in 0..kw {
                        let ih = (oh * conv.stride[0] + i * conv.dilation[0]) as isize
                            - conv.padding[0] as isize;
                        let iw = (ow * conv.stride[1] + j * conv.dilation[1]) as isize
                            - conv.padding[1] as isize;
                        let inside = ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w;
                        for ci in 0..cig {
                            let q1 = if inside {
                                input[(ih as usize * w + iw as usize) * cin + g * cig + ci] as i32
                            } else {
                                zp_in
                            };
                            let (q2, z) =
                                weight(&conv.weights, co, ((co * kh + i) * kw + j) * cig + ci);
                            z2 = z;
                            dot = dot.wrapping_add(q1 * q2);
                            a1 = a1.wrapping_add(q1);
                            a2 = a2.wrapping_add(q2);
                        }
                    }
                }
                acc[(oh * wo + ow) * cout + co] =
                    zero_point_expansion(n, zp_in, z2, a2, a1, dot).wrapping_add(conv.bias[co]);
            }
        }
    }
}

/// Paper §2.4 output stage over a buffer of accumulators whose last axis is the channel:
/// `q = clamp(round(M[c]·acc) + Z_out, lo, hi)` with qat-core's [`Target::requantize`]
/// (`rounding`: the model's target).
pub fn requantize_channels(
    acc: &[i32],
    ms: &[QuantizedMultiplier],
    zp_out: i32,
    clamp: Clamp,
    channels: usize,
    rounding: Target,
    out: &mut [u8],
) {
    for (i, (&a, o)) in acc.iter().zip(out.iter_mut()).enumerate() {
        let m = channel_multiplier(ms, i % channels);
        *o = rounding.requantize(a, m, zp_out, clamp.lo as i32, clamp.hi as i32) as u8;
    }
}

/// Conv2d for one sample: [`conv2d_acc`] then `requantize_channels` (qat-core's
/// `Target::requantize` per element).
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    input: &[u8],
    in_hwc: [usize; 3],
    zp_in: i32,
    conv: &Conv2d,
    out_hwc: [usize; 3],
    zp_out: i32,
    rounding: Target,
    out: &mut [u8],
) {
    let mut acc = vec![0i32; out.len()];
    conv2d_acc(input, in_hwc, zp_in, conv, out_hwc, &mut acc);
    requantize_channels(
        &acc,
        &conv.multipliers,
        zp_out,
        conv.clamp,
        out_hwc[2],
        rounding,
        out,
    );
}

/// Fully connected int32 accumulators (paper eq. 7–8, bias included):
/// `acc[co] = bias[co] + Σ_k (x[k] − Z_in)(w[co, k] − Z_w[co])`.
pub fn fully_connected_acc(input: &[u8], zp_in: i32, fc: &FullyConnected, acc: &mut [i32]) {
    let [cout, cin] = fc.weight_shape;
    for (co, a) in acc.iter_mut().enumerate().take(cout) {
        let (mut dot, mut a1, mut a2, mut z2) = (0i32, 0i32, 0i32, 0i32);
        for (k, &x) in input.iter().enumerate().take(cin) {
            let (q2, z) = weight(&fc.weights, co, co * cin + k);
            z2 = z;
            dot = dot.wrapping_add(x as i32 * q2);
            a1 = a1.wrapping_add(x as i32);
            a2 = a2.wrapping_add(q2);
        }
        *a = zero_point_expansion(cin, zp_in, z2, a2, a1, dot).wrapping_add(fc.bias[co]);
    }
}

/// Fully connected for one sample: [`fully_connected_acc`] then `requantize_channels`, or, with
/// `reals` (the `f64` scales of a target that requantizes fully connected layers in `f64`, one
/// per output channel), qat-core's `requantize_real` per element.
pub fn fully_connected(
    input: &[u8],
    zp_in: i32,
    fc: &FullyConnected,
    zp_out: i32,
    rounding: Target,
    reals: Option<&[f64]>,
    out: &mut [u8],
) {
    let mut acc = vec![0i32; out.len()];
    fully_connected_acc(input, zp_in, fc, &mut acc);
    if let Some(reals) = reals {
        let (lo, hi) = (fc.clamp.lo as i32, fc.clamp.hi as i32);
        for (i, (&a, o)) in acc.iter().zip(out.iter_mut()).enumerate() {
            let eff = reals[i % fc.weight_shape[0].max(1)];
            *o = qat_core::target::requantize_real(a, eff, zp_out, lo, hi) as u8;
        }
        return;
    }
    requantize_channels(
        &acc,
        &fc.multipliers,
        zp_out,
        fc.clamp,
        fc.weight_shape[0],
        rounding,
        out,
    );
}

/// The elementwise add in the model's target ([`AddParams`]: qat-core's `AddStage`, clamp
/// included).
pub fn add(a: &[u8], b: &[u8], p: &AddParams, out: &mut [u8]) {
    for ((&x, &y), o) in a.iter().zip(b).zip(out.iter_mut()) {
        *o = p.stage.apply(x as i32, y as i32) as u8;
    }
}

/// Requantizes codes from one tensor's params to another's (concat inputs) in the model's
/// target ([`Rescale`]: qat-core's `RescaleStage`; a copy for identical params).
pub fn rescale(input: &[u8], r: &Rescale, out: &mut [u8]) {
    if r.stage.is_identity() {
        out.copy_from_slice(input);
        return;
    }
    for (&x, o) in input.iter().zip(out.iter_mut()) {
        *o = r.stage.apply(x as i32) as u8;
    }
}

/// Average pooling of one sample; padded cells are excluded from the count (TFLite). The
/// output stage is [`AvgPoolRescale::average`] (one rounding from `Σq` to the output grid).
pub fn avg_pool2d(input: &[u8], g: &PoolGeom, rescale: &AvgPoolRescale, out: &mut [u8]) {
    pool(input, g, out, |cells| match &rescale.stage {
        Some(stage) => {
            let cells: Vec<i32> = cells.iter().map(|&v| v as i32).collect();
            stage.apply(&cells) as u8
        }
        None => {
            let sum: i32 = cells.iter().map(|&v| v as i32).sum();
            rescale.average(sum, cells.len())
        }
    });
}

/// Max pooling of one sample; padded cells are ignored; params are shared.
pub fn max_pool2d(input: &[u8], g: &PoolGeom, out: &mut [u8]) {
    pool(input, g, out, |cells| {
        cells.iter().copied().max().unwrap_or(0)
    });
}

/// `out[oh, ow, ch] = reduce(window cells)`, the window's in-bounds cells in row-major order.
fn pool(input: &[u8], g: &PoolGeom, out: &mut [u8], reduce: impl Fn(&[u8]) -> u8) {
    let [h, w, c] = g.in_hwc;
    let [ho, wo, _] = g.out_hwc;
    let (kernel, stride, padding) = (g.kernel, g.stride, g.padding);
    let mut cells = Vec::with_capacity(kernel[0] * kernel[1]);
    for oh in 0..ho {
        for ow in 0..wo {
            for ch in 0..c {
                cells.clear();
                for i in 0..kernel[0] {
                    for j in 0..kernel[1] {
                        let ih = (oh * stride[0] + i) as isize - padding[0] as isize;
                        let iw = (ow * stride[1] + j) as isize - padding[1] as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                            cells.push(input[(ih as usize * w + iw as usize) * c + ch]);
                        }
                    }
                }
                out[(oh * wo + ow) * c + ch] = reduce(&cells);
            }
        }
    }
}

/// Global average pool of one sample `[H, W, C] → [C]`, output stage
/// [`AvgPoolRescale::average`] with `count = H·W`.
pub fn global_avg_pool(input: &[u8], in_hwc: [usize; 3], rescale: &AvgPoolRescale, out: &mut [u8]) {
    let [h, w, c] = in_hwc;
    for (ch, o) in out.iter_mut().enumerate().take(c) {
        let cells = (0..h * w).map(|p| input[p * c + ch] as i32);
        *o = match &rescale.stage {
            Some(stage) => stage.apply(&cells.collect::<Vec<_>>()) as u8,
            None => rescale.average(cells.sum(), h * w),
        };
    }
}

/// The graph input's quantization in the model's target, qat-core's [`Target::quantize`]
/// (`qat`: `clamp(round_half_even(r·f32(1/S)) + Z)`; `tflite`: `r / S` ties away; `ort`: `r / S`
/// ties to even; `xnnpack`: `r·f32(1/S)` ties to even), clamped to `[0, 255]`.
pub fn quantize(input: &[f32], q: &QuantParams, target: Target, out: &mut [u8]) {
    for (&r, o) in input.iter().zip(out.iter_mut()) {
        *o = target.quantize(r, q).clamp(0, 255) as u8;
    }
}

/// `r = S·(q − Z)` via qat-core's [`QuantParams::dequantize`].
pub fn dequantize(input: &[u8], q: &QuantParams, out: &mut [f32]) {
    for (&c, o) in input.iter().zip(out.iter_mut()) {
        *o = q.dequantize(c as i32);
    }
}
