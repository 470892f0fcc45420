//! The `f32` output stage of onnxruntime (MLAS) and XNNPACK, and the exact storage of their `f32`
//! multiplier in a [`QuantizedMultiplier`].
//!
//! An `f32` has a 24-bit significand `m ∈ [2^23, 2^24)`, so `s = m·2^(E−23)` is held exactly as
//! `M0 = m·2^7 ∈ [2^30, 2^31)` with `shift = E + 1` (`M0·2^(shift−31) = s`): the model format
//! and the per-channel multiplier arrays stay as they are, and the runtime recovers the very
//! `f32` the deployment runtime multiplies by ([`QuantizedMultiplier::to_f32`]).

use crate::QuantError;
use crate::fixed_point::QuantizedMultiplier;

use super::clamp_total;

/// `2^e` as an `f32` for `e ∈ [−126, 127]` (built from its bits, exact).
fn pow2_f32(e: i32) -> f32 {
    debug_assert!((-126..=127).contains(&e));
    f32::from_bits(((e + 127) as u32) << 23)
}

/// Holds the runtime's `f32` multiplier `s` exactly: `M0 = significand(s)·2^7`, `shift =
/// exponent(s) + 1`, so that `M0·2^(shift − 31) = s` bit for bit.
///
/// Degenerate cases: `s < 2^−32` flushes to `(0, 0)`, exactly as the runtimes compute it: with
/// `|f32(acc)| ≤ 2^31` the product is below `0.5 − 2^−25` and rounds to 0 for every accumulator.
/// `s ≥ 2^30`, `s ≤ 0`, NaN and infinities are [`QuantError::InvalidMultiplier`] (as
/// [`QuantizedMultiplier::from_f64`]).
///
/// ```
/// use qat_core::target::fp32_multiplier;
/// let m = fp32_multiplier(0.75)?;
/// assert_eq!((m.multiplier(), m.shift()), (1_610_612_736, 0)); // 0.75·2^31, as from_f64
/// let s = 0.1f32 * 0.02 / 0.3;
/// assert_eq!(fp32_multiplier(s)?.to_f32(), s);                   // every f32 survives
/// assert_eq!(fp32_multiplier(1e-12)?.multiplier(), 0);           // below 2^-32: flushed
/// assert!(fp32_multiplier(f32::NAN).is_err());
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn fp32_multiplier(s: f32) -> Result<QuantizedMultiplier, QuantError> {
    if !s.is_finite() || s <= 0.0 || s >= pow2_f32(30) {
        return Err(QuantError::InvalidMultiplier { real: s as f64 });
    }
    if s < pow2_f32(-32) {
        return QuantizedMultiplier::from_parts(0, 0);
    }
    // Normal (s ≥ 2^−32 > 2^−126): implicit leading bit.
    let bits = s.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let significand = (bits & 0x7f_ffff) | 0x80_0000;
    QuantizedMultiplier::from_parts((significand << 7) as i32, exponent + 1)
}

impl QuantizedMultiplier {
    /// The multiplier as an `f32`, `M0·2^(shift − 31)` rounded to nearest even where `M0` has more
    /// than 24 significant bits; exact for every multiplier built by [`fp32_multiplier`] (its low
    /// 7 bits are zero). A flushed multiplier gives `0.0`.
    ///
    /// ```
    /// use qat_core::fixed_point::QuantizedMultiplier;
    /// assert_eq!(QuantizedMultiplier::from_f64(0.25)?.to_f32(), 0.25);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn to_f32(&self) -> f32 {
        // shift − 31 ∈ [−62, −1]: a normal power of two; M0 as f32 rounds once (or is exact).
        self.multiplier() as f32 * pow2_f32(self.shift() - 31)
    }
}

/// The output stage of onnxruntime's `MlasRequantizeOutput` / `MlasConvSym` kernels and of
/// XNNPACK's `qs8_qc8w` `fp32` GEMM/IGEMM/DWCONV kernels, for one int32 accumulator with the bias
/// already added:
///
/// `x = f32(acc) · s` (`cvtdq2ps` rounds `acc` to nearest even; one `f32` multiply),
/// `q = clamp(round_half_even(x) + Z_out, lo, hi)` (`cvtps2dq` in the default MXCSR mode),
///
/// with `s` = [`QuantizedMultiplier::to_f32`]. Both runtimes clamp `x` to `[lo − Z_out, hi −
/// Z_out]` in `f32` *before* rounding (`maxps`/`minps`); with integer bounds that gives the same
/// code as rounding first and clamping after, which is what this does (in i64: no overflow for any
/// input; `lo > hi` gives `hi`).
///
/// ```
/// use qat_core::target::{fp32_multiplier, requantize_fp32};
/// let half = fp32_multiplier(0.5)?;
/// assert_eq!(requantize_fp32(5, half, 10, 0, 255), 12);   // 2.5 → 2 (ties to even), + 10
/// assert_eq!(requantize_fp32(7, half, 10, 0, 255), 14);   // 3.5 → 4
/// assert_eq!(requantize_fp32(-7, half, 10, 0, 255), 6);   // −3.5 → −4
/// assert_eq!(requantize_fp32(i32::MAX, half, 10, 0, 255), 255);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[inline]
pub fn requantize_fp32(acc: i32, m: QuantizedMultiplier, zp: i32, lo: i32, hi: i32) -> i32 {
    let x = acc as f32 * m.to_f32();
    // |x| ≤ 2^31·2^30: finite, and `as i64` is exact for a rounded value of that size.
    clamp_total(x.round_ties_even() as i64 + zp as i64, lo, hi)
}
