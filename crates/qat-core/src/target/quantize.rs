//! Quantization of real values by each target: the graph's `f32` input (`QuantizeLinear`,
//! TFLite `QUANTIZE`) and the real bounds of a fused activation (ReLU6's 6).

use crate::QuantParams;

use super::Target;

impl Target {
    /// Quantizes the `f32` graph input `x` as the target's runtime does, onto `p`'s grid
    /// `[qmin, qmax]` (for 8 bits the type's range):
    ///
    /// - `qat`: `round_half_even(x·f32(1/S)) + Z` ([`QuantParams::quantize`], libtorch's fake
    ///   quant); NaN → `Z`.
    /// - `tflite`: `round_half_away(x / S) + Z` with an `f32` division (`TfLiteRound`,
    ///   `reference_ops::AffineQuantize`); NaN is undefined there (a float-to-int conversion of
    ///   NaN): we give `Z`.
    /// - `ort`: `round_half_even(x / S) + Z`, the quotient clamped to `[qmin − Z, qmax − Z]` first
    ///   (MLAS `MlasQuantizeLinearKernel`: `divps`, `maxps`, `minps`, `cvtps2dq`); NaN → `qmin`
    ///   (`maxps` returns its second operand when the first is NaN).
    /// - `xnnpack`: `round_half_even(x·f32(1/S)) + Z` (XNNPACK `f32-qs8-vcvt`, scale
    ///   `1.0f / output_scale`); NaN → `qmax` (the AVX2 kernel's `minps` against `qmax − Z`).
    ///
    /// Every target saturates `±∞` and out-of-range values to the grid's ends; no intermediate
    /// overflows for any `f32`.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::Target};
    /// let p = QuantParams::new(0.3, 10, QuantRange::unsigned(8)?)?;
    /// // 2.25/0.3 = 7.4999995 in f32, but 2.25·f32(1/0.3) = 7.5: division and reciprocal differ.
    /// assert_eq!(Target::Ort.quantize(2.25, &p), 17);
    /// assert_eq!(Target::Tflite.quantize(2.25, &p), 17);
    /// assert_eq!(Target::Xnnpack.quantize(2.25, &p), 18);  // 7.5 → 8 (ties to even)
    /// assert_eq!(Target::Qat.quantize(2.25, &p), 18);
    /// let p = QuantParams::new(0.1, 10, QuantRange::unsigned(8)?)?;
    /// assert_eq!(Target::Tflite.quantize(0.05, &p), 11);   // 0.5 → 1 (ties away from zero)
    /// assert_eq!(Target::Ort.quantize(0.05, &p), 10);      // 0.5 → 0 (ties to even)
    /// assert_eq!(Target::Ort.quantize(f32::NAN, &p), 0);
    /// assert_eq!(Target::Xnnpack.quantize(f32::NAN, &p), 255);
    /// assert_eq!(Target::Qat.quantize(f32::NAN, &p), 10);
    /// assert_eq!(Target::Tflite.quantize(f32::INFINITY, &p), 255);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn quantize(self, x: f32, p: &QuantParams) -> i32 {
        match self {
            Target::Qat => p.quantize(x),
            Target::Tflite => p
                .saturate_rounded((x / p.scale()).round())
                .unwrap_or(p.zero_point()),
            Target::Ort => p
                .saturate_rounded((x / p.scale()).round_ties_even())
                .unwrap_or(p.qmin()),
            Target::Xnnpack => p
                .saturate_rounded((x * (1.0 / p.scale())).round_ties_even())
                .unwrap_or(p.qmax()),
        }
    }

    /// The code of a fused activation's real bound `x` (ReLU6's 6; 0 gives `Z` for every target)
    /// as the target's runtime computes its output clamp, limited to `p`'s grid:
    ///
    /// - `qat`: [`QuantParams::quantize`] (what the simulation's fake quant gives to `x`);
    /// - `tflite`: `Z + round_half_away(x / S)` (`CalculateActivationRangeQuantized`), then
    ///   `min`/`max` with the grid;
    /// - `ort`: `round_half_even(x / S) + Z` (a `QuantizeLinear` of the bound);
    /// - `xnnpack`: `lrintf(clamp(x / S + f32(Z_s8), −128, 127))` with the int8 zero point
    ///   `Z_s8 = Z − 128` (XNNPACK `xnn_qs8_quantize`, used by its subgraph for the clamp), back in
    ///   our uint8 codes: `+ 128`. The `f32` add of `Z_s8` rounds before the rounding to an integer.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::Target};
    /// let p = QuantParams::new(6.0 / 4.5, 0, QuantRange::unsigned(8)?)?; // 6/S = 4.5 (in f32)
    /// assert_eq!(Target::Tflite.activation_bound(6.0, &p), 5);  // ties away from zero
    /// assert_eq!(Target::Ort.activation_bound(6.0, &p), 4);     // ties to even
    /// for t in Target::ALL {
    ///     assert_eq!(t.activation_bound(0.0, &p), 0);            // ReLU's 0 is Z
    /// }
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn activation_bound(self, x: f32, p: &QuantParams) -> i32 {
        match self {
            Target::Xnnpack => {
                let z_s8 = (p.zero_point() - 128) as f32;
                let t = (x / p.scale() + z_s8)
                    .clamp(-128.0, 127.0)
                    .round_ties_even();
                // t is an integer in [−128, 127] (NaN → the grid's qmin, as the delegate's
                // lrintf of NaN is undefined): back to uint8 codes, then onto the grid.
                let q = if t.is_nan() { p.qmin() } else { t as i32 + 128 };
                q.clamp(p.qmin(), p.qmax())
            }
            Target::Qat | Target::Tflite | Target::Ort => self.quantize(x, p),
        }
    }
}
