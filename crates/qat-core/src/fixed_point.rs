//! Paper §2.2 and appendix B — integer-only rescaling with a fixed-point multiplier.
//!
//! A real multiplier `M = S1·S2/S3` is held as `M = M0 · 2^(shift − 31)` with the int32 `M0` in
//! `[2^30, 2^31)` (≥ 30 bits of relative accuracy). Applying it to an int32 accumulator uses only
//! integer operations with gemmlowp's exact semantics:
//!
//! `apply(x) = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x · 2^left, M0), right)`,
//! `left = max(shift, 0)`, `right = max(−shift, 0)` (TFLite's `MultiplyByQuantizedMultiplier`,
//! "double rounding").
//!
//! Every optimized kernel in the runtime must reproduce these functions bit for bit.

use serde::{Deserialize, Serialize};

use crate::QuantError;

/// gemmlowp `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2·a·b`, rounded to nearest
/// (ties toward +∞, as ARM `SQRDMULH`), saturating the single overflow case.
///
/// `ab = a·b` in i64; `nudge = ab ≥ 0 ? 2^30 : 1 − 2^30`; result `(ab + nudge) / 2^31` with
/// truncating division; `a = b = i32::MIN` → `i32::MAX` (ARM `SQRDMULH` semantics).
///
/// ```
/// use qat_core::fixed_point::saturating_rounding_doubling_high_mul as srdhm;
/// assert_eq!(srdhm(i32::MIN, i32::MIN), i32::MAX);
/// assert_eq!(srdhm(1 << 30, 1 << 30), 1 << 29);        // 0.5 · 0.5 = 0.25
/// assert_eq!(srdhm(100, 1 << 30), 50);                 // x · 0.5
/// assert_eq!(srdhm(3, 1 << 30), 2);                   // 1.5 rounds up
/// assert_eq!(srdhm(-3, 1 << 30), -1);                  // −1.5 rounds up too (SQRDMULH)
/// ```
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
///
/// `mask = 2^e − 1`, `rem = x & mask`, `threshold = (mask >> 1) + (x < 0)`,
/// result `(x >> e) + (rem > threshold)`. `exponent` must be in `0..=31`; outside that range this
/// panics in debug builds and returns an unspecified value in release builds (never UB).
///
/// ```
/// use qat_core::fixed_point::rounding_divide_by_pot as rdbp;
/// assert_eq!(rdbp(5, 1), 3);
/// assert_eq!(rdbp(-5, 1), -3);
/// assert_eq!(rdbp(-6, 2), -2);
/// assert_eq!(rdbp(7, 0), 7);
/// ```
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    debug_assert!(
        (0..=31).contains(&exponent),
        "exponent {exponent} outside 0..=31"
    );
    let e = (exponent & 31) as u32;
    let mask = ((1i64 << e) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> e) + (remainder > threshold) as i32
}

/// A real multiplier `M ≈ M0 · 2^(shift − 31)` in fixed point (paper eq. 6; TFLite
/// `QuantizeMultiplier`).
///
/// Invariants: `M0 = 0` with `shift = 0` (a multiplier below 2^−32 that flushes to zero), or
/// `M0 ∈ [2^30, 2^31)` with `shift ∈ [−31, 30]`. Deserialization validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMultiplier", into = "RawMultiplier")]
pub struct QuantizedMultiplier {
    multiplier: i32,
    shift: i32,
}

#[derive(Serialize, Deserialize)]
struct RawMultiplier {
    multiplier: i32,
    shift: i32,
}

impl TryFrom<RawMultiplier> for QuantizedMultiplier {
    type Error = QuantError;
    fn try_from(r: RawMultiplier) -> Result<Self, QuantError> {
        QuantizedMultiplier::from_parts(r.multiplier, r.shift)
    }
}

impl From<QuantizedMultiplier> for RawMultiplier {
    fn from(m: QuantizedMultiplier) -> Self {
        RawMultiplier {
            multiplier: m.multiplier,
            shift: m.shift,
        }
    }
}

/// `frexp` for a positive finite f64: `x = q · 2^e`, `q ∈ [0.5, 1)`.
fn frexp(x: f64) -> (f64, i32) {
    debug_assert!(x.is_finite() && x > 0.0);
    let (x, bias) = if x < f64::MIN_POSITIVE {
        (x * 2f64.powi(64), -64)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let q = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (q, exp - 1022 + bias)
}

impl QuantizedMultiplier {
    /// TFLite `QuantizeMultiplier`: `q = frexp(real, &shift)` with `q ∈ [0.5, 1)`;
    /// `M0 = round_half_away(q · 2^31)`; if `M0 = 2^31` then `M0 /= 2, shift += 1`;
    /// if `shift < −31` the multiplier flushes to `(0, 0)`.
    ///
    /// Errors: `real ≤ 0`, NaN/inf, or `real ≥ 2^30` (the left shift would leave no headroom).
    ///
    /// ```
    /// use qat_core::fixed_point::QuantizedMultiplier;
    /// let m = QuantizedMultiplier::from_f64(0.75)?;
    /// assert_eq!((m.multiplier(), m.shift()), (1_610_612_736, 0)); // 0.75 · 2^31
    /// let m = QuantizedMultiplier::from_f64(0.1)?;
    /// assert_eq!((m.multiplier(), m.shift()), (1_717_986_918, -3));
    /// assert!(QuantizedMultiplier::from_f64(0.0).is_err());
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn from_f64(real: f64) -> Result<Self, QuantError> {
        if !real.is_finite() || real <= 0.0 || real >= (1u64 << 30) as f64 {
            return Err(QuantError::InvalidMultiplier { real });
        }
        let (q, mut shift) = frexp(real);
        let mut q_fixed = (q * (1u64 << 31) as f64).round() as i64;
        if q_fixed == 1i64 << 31 {
            q_fixed /= 2;
            shift += 1;
        }
        if shift < -31 {
            return Ok(Self {
                multiplier: 0,
                shift: 0,
            });
        }
        Ok(Self {
            multiplier: q_fixed as i32,
            shift,
        })
    }

    /// From stored parts, validated (see the type's invariants).
    pub fn from_parts(multiplier: i32, shift: i32) -> Result<Self, QuantError> {
        let ok = (multiplier == 0 && shift == 0)
            || (multiplier >= 1 << 30 && (-31..=30).contains(&shift));
        if ok {
            Ok(Self { multiplier, shift })
        } else {
            Err(QuantError::InvalidQuantizedMultiplier { multiplier, shift })
        }
    }

    /// `M0`, in `[2^30, 2^31)` or 0.
    pub fn multiplier(&self) -> i32 {
        self.multiplier
    }

    /// The power-of-two exponent: `real ≈ M0 · 2^(shift − 31)`.
    pub fn shift(&self) -> i32 {
        self.shift
    }

    /// The real value represented, `M0 · 2^(shift − 31)`.
    pub fn to_f64(&self) -> f64 {
        self.multiplier as f64 * 2f64.powi(self.shift - 31)
    }

    /// TFLite `MultiplyByQuantizedMultiplier` (double rounding):
    /// `RoundingDivideByPOT(SRDHM(x · 2^left, M0), right)` with `left = max(shift, 0)`,
    /// `right = max(−shift, 0)`.
    ///
    /// The pre-shift `x · 2^left` saturates to the i32 range (TFLite leaves overflow undefined);
    /// for every `x` where it does not overflow the result is TFLite's bit for bit.
    ///
    /// ```
    /// use qat_core::fixed_point::QuantizedMultiplier;
    /// let m = QuantizedMultiplier::from_f64(0.25)?;  // (2^30, shift −1)
    /// assert_eq!(m.apply(10), 3);   // 2.5 → 3: the final shift rounds ties away from zero
    /// assert_eq!(m.apply(-10), -3);
    /// let m = QuantizedMultiplier::from_f64(0.5)?;   // (2^30, shift 0): no shift, SRDHM rounds
    /// assert_eq!(m.apply(-5), -2);  // −2.5 → −2: SQRDMULH ties go toward +∞
    /// let m = QuantizedMultiplier::from_f64(3.0)?;
    /// assert_eq!(m.apply(7), 21);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    #[inline]
    pub fn apply(&self, x: i32) -> i32 {
        let left = self.shift.max(0);
        let right = (-self.shift).max(0);
        let shifted = x.saturating_mul(1i32 << left);
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(shifted, self.multiplier),
            right,
        )
    }
}

impl QuantizedMultiplier {
    /// `x · M0 · 2^(shift − 31)` computed exactly in i64 and rounded **once** to nearest, ties
    /// away from zero, saturated to i32 — unlike [`Self::apply`], whose SRDHM rounds to
    /// `2^−right` before the final shift (TFLite's double rounding, off by one LSB near ties
    /// when `right` is small).
    ///
    /// `p = x·M0` (|p| < 2^62), `e = 31 − shift ∈ [1, 62]`, result `sign(p)·⌊(|p| + 2^(e−1)) / 2^e⌋`.
    /// The only error left is the multiplier's own (relative < 2^−31), so the result is the
    /// correctly rounded `x·M` except within that distance of a tie. A flushed multiplier
    /// (`M0 = 0`) gives 0. The runtime uses it where an average and a rescale merge into one
    /// multiplier (`M' = S_in/(S_out·count)` of average pools).
    ///
    /// ```
    /// use qat_core::fixed_point::QuantizedMultiplier;
    /// let m = QuantizedMultiplier::from_f64(0.3)?;
    /// assert_eq!(m.apply_rounded_once(8), 2);   // 2.4 → 2
    /// assert_eq!(m.apply(8), 3);                // SRDHM rounds 2.4 to 2.5 first, then 2.5 → 3
    /// let half = QuantizedMultiplier::from_f64(0.5)?;
    /// assert_eq!(half.apply_rounded_once(-3), -2); // −1.5 → −2: ties away from zero
    /// assert_eq!(half.apply(-3), -1);              // (SRDHM ties go toward +∞)
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    #[inline]
    pub fn apply_rounded_once(&self, x: i32) -> i32 {
        let e = (31 - self.shift) as u32;
        let p = x as i64 * self.multiplier as i64;
        // Branch-free form of sign(p)·⌊(|p| + 2^(e−1)) / 2^e⌋: for p < 0,
        // −⌊(−p + h)/2h⌋ = ⌊(p + h − 1)/2h⌋ (arithmetic shift = floor); |p| + h < 2^63.
        let r = (p + (1i64 << (e - 1)) - (p < 0) as i64) >> e;
        r.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
}

/// How a fixed-point multiplier `M = M0·2^(shift − 31)` rounds `x·M` to an integer in the
/// output stage of conv, fully connected, add and concat (a model-level choice). It is the
/// fixed-point part of a deployment [`crate::Target`]: `qat` rounds `Single`, `tflite` `Gemmlowp`
/// ([`crate::Target::rounding`]).
///
/// - [`Rounding::Gemmlowp`] — TFLite's default reference `MultiplyByQuantizedMultiplier`:
///   `RDBPOT(SRDHM(x·2^left, M0), right)`. SRDHM first rounds `x·M0/2^31` to an integer, i.e.
///   `x·M` to a multiple of `2^−right` output LSBs; RDBPOT then rounds that again to an integer.
///   Double rounding: when `x·M` has a fractional part in `[0.5 − 2^−(right+1), 0.5)` the first
///   rounding lands exactly on `.5` and the second rounds it up — wrong by one LSB. With
///   `right = 1..3` (`M ≈ 0.06–0.5`, usual at 4 bits) that is 6–25 % of uniformly spread
///   fractions.
/// - [`Rounding::Single`] — `x·M0·2^(shift − 31)` computed exactly (64-bit product) and rounded
///   **once** to nearest, ties away from zero ([`QuantizedMultiplier::apply_rounded_once`]):
///   the correctly rounded `x·M` up to the multiplier's own 2^−31 relative error, what a float
///   simulation (and QAT training) computes. TFLite's `TFLITE_SINGLE_ROUNDING` computes the same
///   single rounding with ties toward +∞; the two differ only on exact ties `x·M = k + ½`, `x < 0`.
///
/// ```
/// use qat_core::fixed_point::{QuantizedMultiplier, Rounding};
/// let m = QuantizedMultiplier::from_f64(0.3)?;           // M0 = 1288490189, shift −1
/// // 8·0.3 = 2.4: SRDHM gives 4.8 → 5 half-LSBs (2.5), RDBPOT rounds 2.5 up to 3.
/// assert_eq!(m.apply_with(Rounding::Gemmlowp, 8), 3);
/// assert_eq!(m.apply_with(Rounding::Single, 8), 2);      // one rounding: 2.4 → 2
/// // ties: −1.5 → −2 (away from zero) with Single, −1 (SRDHM ties toward +∞) with Gemmlowp
/// let half = QuantizedMultiplier::from_f64(0.5)?;
/// assert_eq!(half.apply_with(Rounding::Single, -3), -2);
/// assert_eq!(half.apply_with(Rounding::Gemmlowp, -3), -1);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rounding {
    /// gemmlowp/TFLite reference double rounding ([`QuantizedMultiplier::apply`]).
    Gemmlowp,
    /// One rounding of the exact product, ties away from zero
    /// ([`QuantizedMultiplier::apply_rounded_once`]).
    Single,
}

impl Rounding {
    /// Both modes, `Gemmlowp` first.
    pub const ALL: [Rounding; 2] = [Rounding::Gemmlowp, Rounding::Single];

    /// `"gemmlowp"` or `"single"` (logs, benchmark switches).
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Gemmlowp => "gemmlowp",
            Rounding::Single => "single",
        }
    }

    /// Parses a [`Rounding::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s.trim().to_ascii_lowercase())
    }
}

impl std::fmt::Display for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl QuantizedMultiplier {
    /// `x·M` rounded as `rounding` says: [`Self::apply`] (`Gemmlowp`) or
    /// [`Self::apply_rounded_once`] (`Single`).
    #[inline]
    pub fn apply_with(&self, rounding: Rounding, x: i32) -> i32 {
        match rounding {
            Rounding::Gemmlowp => self.apply(x),
            Rounding::Single => self.apply_rounded_once(x),
        }
    }
}

/// Paper §2.4, the fused layer's output stage for one int32 accumulator (bias already added):
/// `q = clamp(apply(acc, M) + Z_out, lo, hi)`, where `[lo, hi]` is the fused activation's range
/// intersected with the output grid (ReLU: `[Z_out, 255]`; ReLU6: `[Z_out, Z_out + round(6/S_out)]`).
/// Total: an inverted clamp (`lo > hi`) gives `hi`, never a panic.
///
/// ```
/// use qat_core::fixed_point::{requantize, QuantizedMultiplier};
/// let m = QuantizedMultiplier::from_f64(0.01)?;
/// assert_eq!(requantize(1000, m, 128, 0, 255), 138);
/// assert_eq!(requantize(-50_000, m, 128, 128, 255), 128); // ReLU clamps at Z_out
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[inline]
pub fn requantize(acc: i32, m: QuantizedMultiplier, zp: i32, lo: i32, hi: i32) -> i32 {
    requantize_with(Rounding::Gemmlowp, acc, m, zp, lo, hi)
}

/// [`requantize`] with one rounding ([`Rounding::Single`]):
/// `q = clamp(round_half_away(acc·M0·2^(shift − 31)) + Z_out, lo, hi)`, the product exact in i64
/// ([`QuantizedMultiplier::apply_rounded_once`], saturated to i32 before `+ Z_out`).
///
/// ```
/// use qat_core::fixed_point::{requantize, requantize_single, QuantizedMultiplier};
/// let m = QuantizedMultiplier::from_f64(0.3)?;
/// assert_eq!(requantize_single(8, m, 1, 0, 15), 3);   // 2.4 → 2, + 1
/// assert_eq!(requantize(8, m, 1, 0, 15), 4);          // double rounding: 2.4 → 2.5 → 3, + 1
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[inline]
pub fn requantize_single(acc: i32, m: QuantizedMultiplier, zp: i32, lo: i32, hi: i32) -> i32 {
    requantize_with(Rounding::Single, acc, m, zp, lo, hi)
}

/// The output stage in either mode, `q = clamp(x·M + Z_out, lo, hi)` with `x·M` rounded as
/// `rounding` says ([`QuantizedMultiplier::apply_with`], saturated to i32 before `+ Z_out`):
/// [`requantize`] (`Gemmlowp`) or [`requantize_single`] (`Single`). Total: `lo > hi` gives `hi`.
///
/// ```
/// use qat_core::fixed_point::{requantize, requantize_with, QuantizedMultiplier, Rounding};
/// let m = QuantizedMultiplier::from_f64(0.3)?;
/// assert_eq!(requantize_with(Rounding::Gemmlowp, 8, m, 1, 0, 15), requantize(8, m, 1, 0, 15));
/// assert_eq!(requantize_with(Rounding::Single, 100, m, 0, 10, 5), 5); // lo > hi: hi
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[inline]
pub fn requantize_with(
    rounding: Rounding,
    acc: i32,
    m: QuantizedMultiplier,
    zp: i32,
    lo: i32,
    hi: i32,
) -> i32 {
    m.apply_with(rounding, acc)
        .saturating_add(zp)
        .max(lo)
        .min(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A literal transcription of gemmlowp's scalar code with i64 intermediate, for cross-checking.
    fn rdbp_ref(x: i32, e: i32) -> i32 {
        let mask: i64 = (1i64 << e) - 1;
        let rem = (x as i64) & mask;
        let thr = (mask >> 1) + if x < 0 { 1 } else { 0 };
        ((x as i64 >> e) + if rem > thr { 1 } else { 0 }) as i32
    }

    #[test]
    fn srdhm_edge_cases() {
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MAX, i32::MAX),
            i32::MAX - 1
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MAX),
            -i32::MAX
        );
        assert_eq!(saturating_rounding_doubling_high_mul(0, i32::MIN), 0);
        // ties go toward +∞: 0.5 → 1, −0.5 → 0
        assert_eq!(saturating_rounding_doubling_high_mul(1, 1 << 30), 1);
        assert_eq!(saturating_rounding_doubling_high_mul(-1, 1 << 30), 0);
    }

    #[test]
    fn rdbp_ties() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(-6, 2), -2);
        assert_eq!(rounding_divide_by_pot(6, 2), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
    }

    #[test]
    fn multiplier_edge_cases() {
        let m = QuantizedMultiplier::from_f64(1.0).unwrap();
        assert_eq!((m.multiplier(), m.shift()), (1 << 30, 1));
        // 1 − 2^−40 rounds up to 2^31 and must be renormalized.
        let m = QuantizedMultiplier::from_f64(1.0 - 2f64.powi(-40)).unwrap();
        assert_eq!((m.multiplier(), m.shift()), (1 << 30, 1));
        // flush to zero below 2^−32
        let m = QuantizedMultiplier::from_f64(2f64.powi(-40)).unwrap();
        assert_eq!((m.multiplier(), m.shift()), (0, 0));
        assert_eq!(m.apply(i32::MAX), 0);
        // subnormal input
        let m = QuantizedMultiplier::from_f64(f64::MIN_POSITIVE / 4.0).unwrap();
        assert_eq!(m.multiplier(), 0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2f64.powi(30)] {
            assert!(QuantizedMultiplier::from_f64(bad).is_err(), "{bad}");
        }
        assert!(QuantizedMultiplier::from_parts(5, 0).is_err());
        assert!(QuantizedMultiplier::from_parts(1 << 30, 31).is_err());
        assert!(QuantizedMultiplier::from_parts(1 << 30, -32).is_err());
        assert!(QuantizedMultiplier::from_parts(0, 0).is_ok());
    }

    #[test]
    fn requantize_is_total_on_an_inverted_clamp() {
        let m = QuantizedMultiplier::from_f64(0.5).unwrap();
        for r in Rounding::ALL {
            assert_eq!(requantize_with(r, 100, m, 0, 10, 5), 5);
        }
    }

    #[test]
    fn frexp_matches_definition() {
        for x in [1.0, 0.5, 0.75, 3.0, 1e-10, 1e10, f64::MIN_POSITIVE / 3.0] {
            let (q, e) = frexp(x);
            assert!((0.5..1.0).contains(&q), "{x}: {q}");
            assert_eq!(q * 2f64.powi(e), x);
        }
    }

    proptest! {
        #[test]
        fn rdbp_matches_transcription(x in any::<i32>(), e in 0i32..=31) {
            prop_assert_eq!(rounding_divide_by_pot(x, e), rdbp_ref(x, e));
        }

        #[test]
        fn rdbp_is_round_half_away(x in any::<i32>(), e in 0i32..=30) {
            let exact = x as f64 / 2f64.powi(e);
            let want = exact.round(); // f64::round = half away from zero
            prop_assert_eq!(rounding_divide_by_pot(x, e) as f64, want);
        }

        #[test]
        fn srdhm_is_rounded_product(a in any::<i32>(), b in any::<i32>()) {
            prop_assume!(!(a == i32::MIN && b == i32::MIN));
            let exact = (a as f64) * (b as f64) / 2f64.powi(31);
            let got = saturating_rounding_doubling_high_mul(a, b) as f64;
            prop_assert!((got - exact).abs() <= 0.5 + 1e-9);
        }

        #[test]
        fn multiplier_represents_real(real in 1e-9f64..1e6) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            let rel = (m.to_f64() - real).abs() / real;
            prop_assert!(rel <= 2f64.powi(-30), "rel {}", rel);
        }

        #[test]
        fn apply_is_within_one_of_exact(real in 1e-6f64..4.0, x in -(1i32 << 28)..(1i32 << 28)) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            let exact = x as f64 * real;
            prop_assume!(exact.abs() < 2f64.powi(30));
            let got = m.apply(x) as f64;
            prop_assert!((got - exact).abs() <= 1.0, "x {} real {} got {} exact {}", x, real, got, exact);
        }

        #[test]
        fn apply_rounded_once_is_the_rounded_product(real in 1e-12f64..1e6, x in any::<i32>()) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            // exact x·M0/2^(31−shift) in i128, rounded half away from zero
            let num = x as i128 * m.multiplier() as i128;
            let e = 31 - m.shift();
            let den = 1i128 << e;
            let q = (2 * num.abs() + den) / (2 * den);
            let want = (num.signum() * q).clamp(i32::MIN as i128, i32::MAX as i128) as i32;
            prop_assert_eq!(m.apply_rounded_once(x), want);
            let exact = x as f64 * m.to_f64();
            if exact.abs() < 2f64.powi(30) {
                prop_assert!((m.apply_rounded_once(x) as f64 - exact).abs() <= 0.5 + 1e-6);
            }
        }

        #[test]
        fn requantize_single_matches_i128_and_f64(
            real in 1e-9f64..64.0,
            x in any::<i32>(),
            zp in -300i32..300,
            lo in -400i32..300,
            width in 0i32..600,
        ) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            let hi = lo + width;
            // i128 transcription: sign(p)·⌊(|p| + 2^(e−1)) / 2^e⌋, saturate, + Z, clamp
            let p = x as i128 * m.multiplier() as i128;
            let e = 31 - m.shift();
            let r = p.signum() * ((p.abs() + (1i128 << (e - 1))) >> e);
            let r = r.clamp(i32::MIN as i128, i32::MAX as i128);
            let want = (r + zp as i128).clamp(i32::MIN as i128, i32::MAX as i128).clamp(lo as i128, hi as i128) as i32;
            prop_assert_eq!(requantize_single(x, m, zp, lo, hi), want);
            prop_assert_eq!(requantize_with(Rounding::Single, x, m, zp, lo, hi), want);
            // the gemmlowp stage: the double-rounded product, saturated, + Z, clamp
            let g = (m.apply(x) as i128 + zp as i128).clamp(i32::MIN as i128, i32::MAX as i128).clamp(lo as i128, hi as i128) as i32;
            prop_assert_eq!(requantize(x, m, zp, lo, hi), g);
            prop_assert_eq!(requantize_with(Rounding::Gemmlowp, x, m, zp, lo, hi), g);
            // f64: round_half_away(x·M) where it is exact enough to decide (away from ties)
            let y = x as f64 * m.to_f64();
            if y.abs() < 2f64.powi(40) && ((y - y.trunc()).abs() - 0.5).abs() > 1e-3 {
                let f = (y.round() + zp as f64).clamp(lo as f64, hi as f64);
                let f = f.clamp(i32::MIN as f64, i32::MAX as f64);
                prop_assert_eq!(requantize_single(x, m, zp, lo, hi) as f64, f);
            }
        }

        #[test]
        fn single_differs_from_gemmlowp_only_by_one_lsb(real in 1e-6f64..0.99, x in -(1i32 << 24)..(1i32 << 24)) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            let d = (m.apply_with(Rounding::Single, x) - m.apply_with(Rounding::Gemmlowp, x)).abs();
            prop_assert!(d <= 1);
        }

        #[test]
        fn apply_matches_i64_transcription(real in 1e-6f64..2.0, x in any::<i32>()) {
            let m = QuantizedMultiplier::from_f64(real).unwrap();
            let left = m.shift().max(0);
            let right = (-m.shift()).max(0);
            let pre = (x as i64) << left;
            prop_assume!(pre >= i32::MIN as i64 && pre <= i32::MAX as i64);
            let ab = pre * m.multiplier() as i64;
            let nudge = if ab >= 0 { 1i64 << 30 } else { 1 - (1i64 << 30) };
            let high = ((ab + nudge) / (1i64 << 31)) as i32;
            prop_assert_eq!(m.apply(x), rdbp_ref(high, right));
        }
    }
}
