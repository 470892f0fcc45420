//! What TFLite derives by itself and the writer must match: the padding of `SAME` / `VALID`
//! windows, and the clamp of a fused activation.
//!
//! **Padding** (TFLite `ComputePaddingHeightWidth`), per axis with effective kernel
//! `k = d·(kernel − 1) + 1`: `SAME` gives `out = ⌈n/s⌉` and leading padding
//! `⌊max((out − 1)·s + k − n, 0)/2⌋`; `VALID` gives `out = ⌊(n − k)/s⌋ + 1` and none. Cells outside
//! the input are padding in both TFLite and the qat runtime, so an op with explicit padding
//! `[top, left, bottom, right]` is the same op as `SAME` (or `VALID`) exactly when, on both axes,
//! the output size and the leading padding agree; the trailing padding only sets the output size.
//!
//! **Fused activations** (TFLite `CalculateActivationRangeQuantized`) clamp the int8 output to
//! `NONE` `[−128, 127]`, `RELU` `[max(−128, Z), 127]`, `RELU6` `[max(−128, Z), min(127, Z +
//! round(6/S))]` and `RELU_N1_TO_1` `[max(−128, Z + round(−1/S)), min(127, Z + round(1/S))]`, with
//! `round(f/S)` in f32, ties away from zero (`TfLiteRound`). A clamp `[lo, hi]` that none of them
//! produces takes the widest one inside it plus explicit `MAXIMUM` / `MINIMUM` ops:
//! `min(max(clamp(x, a, b), lo), hi) = clamp(x, lo, hi)` for `a ≤ lo ≤ hi ≤ b`.

use super::schema::{ActivationFunctionType, Padding};

/// How a window op is padded in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pad {
    /// TFLite `SAME`.
    Same,
    /// TFLite `VALID`.
    Valid,
    /// Neither: an explicit padding op first, then `VALID`.
    Explicit,
}

impl Pad {
    pub fn padding(self) -> Padding {
        match self {
            Pad::Same => Padding::Same,
            Pad::Valid | Pad::Explicit => Padding::Valid,
        }
    }
}

/// One spatial axis of a window op: input extent, output extent, effective kernel, stride, and
/// our leading padding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Axis {
    pub input: usize,
    pub output: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad_before: usize,
}

impl Axis {
    fn is_valid(&self) -> bool {
        self.pad_before == 0
            && self.input >= self.kernel
            && self.output == (self.input - self.kernel) / self.stride + 1
    }

    fn is_same(&self) -> bool {
        let out = self.input.div_ceil(self.stride);
        let total =
            ((out.saturating_sub(1)) * self.stride + self.kernel).saturating_sub(self.input);
        self.output == out && self.pad_before == total / 2
    }
}

/// The TFLite padding that reproduces our window op on both axes (`VALID` preferred).
pub(super) fn resolve(h: Axis, w: Axis) -> Pad {
    if h.is_valid() && w.is_valid() {
        Pad::Valid
    } else if h.is_same() && w.is_same() {
        Pad::Same
    } else {
        Pad::Explicit
    }
}

/// `Z + round(f/S)` as TFLite's `Quantize` computes it (f32 division, ties away from zero);
/// `None` where TFLite's own overflow check would fail.
fn tflite_quantize(f: f32, scale: f32, zero_point: i32) -> Option<i32> {
    let q = (f / scale).round();
    (q >= i32::MIN as f32 && q <= i32::MAX as f32).then(|| zero_point.saturating_add(q as i32))
}

/// The fused activation whose clamp contains `[lo, hi]` (int8) most tightly, and the clamp it
/// produces. `scale`, `zero_point`: the output tensor's int8 params.
pub(super) fn fused_activation(
    lo: i32,
    hi: i32,
    scale: f32,
    zero_point: i32,
) -> (ActivationFunctionType, i32, i32) {
    let relu_lo = zero_point.max(-128);
    let mut candidates = vec![
        (ActivationFunctionType::None, -128, 127),
        (ActivationFunctionType::Relu, relu_lo, 127),
    ];
    if let Some(six) = tflite_quantize(6.0, scale, zero_point) {
        candidates.push((ActivationFunctionType::Relu6, relu_lo, six.min(127)));
    }
    if let (Some(m1), Some(p1)) = (
        tflite_quantize(-1.0, scale, zero_point),
        tflite_quantize(1.0, scale, zero_point),
    ) {
        candidates.push((ActivationFunctionType::ReluN1To1, m1.max(-128), p1.min(127)));
    }
    candidates
        .into_iter()
        .filter(|&(_, a, b)| a <= lo && hi <= b && a <= b)
        .min_by_key(|&(_, a, b)| ((a != lo) as u8 + (b != hi) as u8, b - a))
        .unwrap_or((ActivationFunctionType::None, -128, 127))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ax(input: usize, output: usize, kernel: usize, stride: usize, pad_before: usize) -> Axis {
        Axis {
            input,
            output,
            kernel,
            stride,
            pad_before,
        }
    }

    #[test]
    fn pytorch_paddings_map_to_same_valid_or_explicit() {
        // 3×3, stride 1, padding 1: SAME.
        assert_eq!(resolve(ax(8, 8, 3, 1, 1), ax(8, 8, 3, 1, 1)), Pad::Same);
        // no padding: VALID.
        assert_eq!(resolve(ax(8, 6, 3, 1, 0), ax(8, 6, 3, 1, 0)), Pad::Valid);
        // 3×3, stride 2, padding 1 on an even input: TFLite SAME pads 0 before, 1 after.
        assert_eq!(
            resolve(ax(32, 16, 3, 2, 1), ax(32, 16, 3, 2, 1)),
            Pad::Explicit
        );
        // … on an odd input SAME pads 1 before and after: the same op.
        assert_eq!(resolve(ax(7, 4, 3, 2, 1), ax(7, 4, 3, 2, 1)), Pad::Same);
        // 1×1 stride 2 without padding is VALID (and SAME): VALID preferred.
        assert_eq!(resolve(ax(8, 4, 1, 2, 0), ax(8, 4, 1, 2, 0)), Pad::Valid);
        // 2×2 stride 2 pool on an odd input with trailing padding: one more output than VALID.
        assert_eq!(resolve(ax(5, 3, 2, 2, 0), ax(5, 3, 2, 2, 0)), Pad::Same);
        // the axes disagree: explicit.
        assert_eq!(resolve(ax(8, 8, 3, 1, 1), ax(8, 6, 3, 1, 0)), Pad::Explicit);
    }

    #[test]
    fn fused_activation_picks_the_exact_clamp_when_there_is_one() {
        use ActivationFunctionType as A;
        // S = 6/255, Z = −128: ReLU6's max is −128 + round(255) = 127.
        let s = 6.0 / 255.0;
        assert_eq!(fused_activation(-128, 127, s, -128), (A::None, -128, 127));
        // ReLU on Z = −20: lo = Z.
        assert_eq!(fused_activation(-20, 127, 0.1, -20), (A::Relu, -20, 127));
        // ReLU6 on S = 0.05, Z = −100: 6/0.05 = 120 → [−100, 20].
        assert_eq!(fused_activation(-100, 20, 0.05, -100), (A::Relu6, -100, 20));
        // a 4-bit grid [−128, −113] under ReLU at Z = −128: RELU then MINIMUM.
        assert_eq!(
            fused_activation(-128, -113, 0.5, -128),
            (A::None, -128, 127)
        );
        // ReLU6 whose top is not 6 in the model: the tightest containing clamp.
        let (act, a, b) = fused_activation(-100, 10, 0.05, -100);
        assert_eq!((a, b), (-100, 20));
        assert_eq!(act, A::Relu6);
    }
}
