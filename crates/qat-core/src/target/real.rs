//! The `f64` output stage of LiteRT's reference fully-connected kernel.
//!
//! LiteRT's `BUILTIN_REF` resolver runs `FULLY_CONNECTED` (int8, per-tensor and per-channel
//! weights alike) through `reference_integer_ops::FullyConnected` /
//! `FullyConnectedPerChannel` with the `f32` scales of the file, not through the fixed-point
//! multiplier its conv kernels use:
//!
//! `eff = (double)S_in · (double)S_w[c] / (double)S_out`,
//! `q = clamp((int32) round((double)acc · eff) + Z_out, lo, hi)`,
//!
//! C's `round` (ties away from zero) of one `f64` product. The optimized builtin kernels
//! (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) use `MultiplyByQuantizedMultiplier` instead, so the two
//! LiteRT resolvers differ on fully connected layers; the `tflite` target follows the reference.

use super::{Target, clamp_total};

impl Target {
    /// The `f64` scale `(f64)S_in·(f64)S_w/(f64)S_out` of a fully-connected channel when the
    /// target's runtime requantizes fully connected layers in `f64` ([`requantize_real`]):
    /// `Some` for [`Target::Tflite`] (LiteRT's reference kernel), `None` for every other target
    /// (their fully connected layers requantize as their convs, [`Target::requantize`]).
    ///
    /// ```
    /// use qat_core::target::Target;
    /// assert_eq!(Target::Tflite.fc_real_scale(0.5, 0.25, 0.125), Some(1.0));
    /// assert_eq!(Target::Qat.fc_real_scale(0.5, 0.25, 0.125), None);
    /// ```
    pub fn fc_real_scale(self, s_in: f32, s_w: f32, s_out: f32) -> Option<f64> {
        match self {
            Target::Tflite => Some(s_in as f64 * s_w as f64 / s_out as f64),
            Target::Qat | Target::Ort | Target::Xnnpack => None,
        }
    }
}

/// `q = clamp(round_half_away(f64(acc)·eff) + Z_out, lo, hi)`: LiteRT's reference
/// fully-connected output stage (one `f64` product, C `round`), for the `eff` of
/// [`Target::fc_real_scale`]. Total: a non-finite or huge product saturates (`NaN` gives `lo`;
/// `lo > hi` gives `hi`).
///
/// ```
/// use qat_core::target::requantize_real;
/// assert_eq!(requantize_real(5, 0.5, 10, 0, 255), 13);   // 2.5 → 3 (ties away), + 10
/// assert_eq!(requantize_real(-5, 0.5, 10, 0, 255), 7);   // −2.5 → −3
/// assert_eq!(requantize_real(i32::MAX, 1e9, 0, 0, 255), 255);
/// ```
#[inline]
pub fn requantize_real(acc: i32, eff: f64, zp: i32, lo: i32, hi: i32) -> i32 {
    // `as i64` saturates (NaN → 0); the clamp in i64 cannot overflow.
    let r = (acc as f64 * eff).round() as i64;
    clamp_total(r.saturating_add(zp as i64), lo, hi)
}
