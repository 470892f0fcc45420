//! Paper §2.1 — the affine quantization scheme `r = S·(q − Z)`.
//!
//! A [`QuantParams`] holds one scale `S` (f32, > 0), one zero point `Z` (the integer code that
//! represents real 0.0 exactly) and the integer grid `[qmin, qmax]`. Per-channel parameters
//! ([`PerChannelParams`]) hold one `(S, Z)` per slice along an axis, sharing the grid.

use serde::{Deserialize, Serialize};

use crate::QuantError;

/// The smallest scale ever produced from a range: `f32::EPSILON` (≈ 1.19e−7), PyTorch's choice.
///
/// A degenerate range such as `[0, 0]` (a ReLU that never fired) or `[0, 1e−30]` would otherwise
/// give a zero or subnormal scale and a division by zero in `1/S`. Clamping the scale keeps the
/// grid valid; 0.0 stays exactly representable.
pub const MIN_SCALE: f32 = f32::EPSILON;

/// An integer grid `[qmin, qmax]` for a given bit width and signedness.
///
/// ```
/// use qat_core::QuantRange;
/// assert_eq!(QuantRange::unsigned(8)?, QuantRange { qmin: 0, qmax: 255 });
/// assert_eq!(QuantRange::signed_narrow(8)?, QuantRange { qmin: -127, qmax: 127 });
/// assert_eq!(QuantRange::signed(4)?, QuantRange { qmin: -8, qmax: 7 });
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantRange {
    /// Smallest code.
    pub qmin: i32,
    /// Largest code.
    pub qmax: i32,
}

fn check_bits(bits: u32) -> Result<(), QuantError> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::UnsupportedBits { bits })
    }
}

impl QuantRange {
    /// `[0, 2^bits − 1]`: the paper's activation grid (uint8 for 8 bits).
    pub fn unsigned(bits: u32) -> Result<Self, QuantError> {
        check_bits(bits)?;
        Ok(Self {
            qmin: 0,
            qmax: (1 << bits) - 1,
        })
    }

    /// `[−(2^(bits−1) − 1), 2^(bits−1) − 1]`: symmetric narrow range, the paper's weight tweak
    /// (int8 weights never take −128, so `−128·−128` products cannot occur).
    pub fn signed_narrow(bits: u32) -> Result<Self, QuantError> {
        check_bits(bits)?;
        let m = (1 << (bits - 1)) - 1;
        Ok(Self { qmin: -m, qmax: m })
    }

    /// `[−2^(bits−1), 2^(bits−1) − 1]`: full signed range.
    pub fn signed(bits: u32) -> Result<Self, QuantError> {
        check_bits(bits)?;
        let m = 1 << (bits - 1);
        Ok(Self {
            qmin: -m,
            qmax: m - 1,
        })
    }

    /// A custom grid; `qmin < qmax` and both within `[−2^16, 2^16]`.
    pub fn new(qmin: i32, qmax: i32) -> Result<Self, QuantError> {
        if qmin >= qmax || qmin < -(1 << 16) || qmax > (1 << 16) {
            return Err(QuantError::InvalidIntRange { qmin, qmax });
        }
        Ok(Self { qmin, qmax })
    }

    /// Number of codes minus one, `qmax − qmin` (the `n − 1` of paper eq. 12).
    pub fn steps(&self) -> i32 {
        self.qmax - self.qmin
    }
}

/// Round half away from zero (C `std::round`), used for zero points and multipliers.
///
/// ```
/// assert_eq!(qat_core::scheme::round_half_away(2.5), 3.0);
/// assert_eq!(qat_core::scheme::round_half_away(-2.5), -3.0);
/// ```
pub fn round_half_away(x: f32) -> f32 {
    x.round()
}

/// Round half to even, the rounding of libtorch's fake quant (`std::nearbyint`).
///
/// ```
/// assert_eq!(qat_core::scheme::round_half_even(2.5), 2.0);
/// assert_eq!(qat_core::scheme::round_half_even(3.5), 4.0);
/// ```
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Paper eq. 12, the simulated quantization function exactly as written, without nudging:
///
/// `s = (b − a)/(n − 1)`, `q(r; a, b, n) = round((clamp(r; a, b) − a)/s)·s + a`.
///
/// Kept for reference and teaching; training uses [`QuantParams::fake_quant`], whose range is
/// nudged so that 0.0 is exact. The seed walkthrough's example (`r = 1.0, a = −3.2, b = 1.3`,
/// 8 bits) prints 1.0064 because it rounds `s` to 0.0176; with `s = 4.5/255` the code is exactly
/// 238 and the value returns to 1.0. The nudged grid gives 1.00588 instead (its zero point 181 moves
/// the grid by a fraction of a step).
///
/// ```
/// use qat_core::{QuantParams, scheme::simulated_quantize};
/// let paper = simulated_quantize(1.0, -3.2, 1.3, 256);
/// assert!((paper - 1.0).abs() < 1e-5);
/// // with the seed's rounded step s = 0.0176: round(4.2 / 0.0176) = 239 → 1.0064
/// assert!(((4.2f32 / 0.0176).round() * 0.0176 - 3.2 - 1.0064).abs() < 1e-4);
/// let nudged = QuantParams::from_min_max(-3.2, 1.3, 0, 255)?;
/// assert_eq!(nudged.zero_point(), 181);
/// assert_eq!(nudged.quantize(1.0), 238);
/// assert!((nudged.fake_quant(1.0) - 1.005_882).abs() < 1e-5);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn simulated_quantize(r: f32, a: f32, b: f32, n: u32) -> f32 {
    let s = (b - a) / (n as f32 - 1.0);
    // An empty, unbounded or NaN range (`b ≤ a`, n < 2, non-finite bounds): no grid to round onto.
    if !s.is_finite() || s <= 0.0 {
        return a;
    }
    let c = r.clamp(a, b);
    round_half_away((c - a) / s) * s + a
}

/// Affine quantization parameters for one tensor (or one channel): `r = S·(q − Z)`,
/// `q ∈ [qmin, qmax]`.
///
/// Invariants (checked by every constructor): `S` finite and `> 0`, `qmin < qmax`,
/// `Z ∈ [qmin, qmax]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawQuantParams", into = "RawQuantParams")]
pub struct QuantParams {
    scale: f32,
    zero_point: i32,
    range: QuantRange,
}

#[derive(Serialize, Deserialize)]
struct RawQuantParams {
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

impl TryFrom<RawQuantParams> for QuantParams {
    type Error = QuantError;
    fn try_from(r: RawQuantParams) -> Result<Self, QuantError> {
        QuantParams::new(r.scale, r.zero_point, QuantRange::new(r.qmin, r.qmax)?)
    }
}

impl From<QuantParams> for RawQuantParams {
    fn from(p: QuantParams) -> Self {
        RawQuantParams {
            scale: p.scale,
            zero_point: p.zero_point,
            qmin: p.range.qmin,
            qmax: p.range.qmax,
        }
    }
}

impl QuantParams {
    /// Parameters from an explicit scale and zero point, validated.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange};
    /// let p = QuantParams::new(0.5, 10, QuantRange::unsigned(8)?)?;
    /// assert_eq!(p.dequantize(12), 1.0);
    /// assert!(QuantParams::new(0.0, 0, QuantRange::unsigned(8)?).is_err());
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn new(scale: f32, zero_point: i32, range: QuantRange) -> Result<Self, QuantError> {
        QuantRange::new(range.qmin, range.qmax)?;
        if !scale.is_finite() || scale <= 0.0 {
            return Err(QuantError::InvalidScale { scale });
        }
        if zero_point < range.qmin || zero_point > range.qmax {
            return Err(QuantError::InvalidZeroPoint {
                zero_point,
                qmin: range.qmin,
                qmax: range.qmax,
            });
        }
        Ok(Self {
            scale,
            zero_point,
            range,
        })
    }

    /// Asymmetric parameters from an observed range, nudged so that 0.0 is exact
    /// (TFLite `NudgeQuantizationRange`; paper §3 "ranges nudged").
    ///
    /// 1. Extend `[min, max]` to include 0: `min ← min(min, 0)`, `max ← max(max, 0)` (as PyTorch).
    /// 2. `S = (max − min)/(qmax − qmin)` in f32, clamped below to [`MIN_SCALE`].
    /// 3. `Z = qmin − min/S`, clamped to `[qmin, qmax]`, rounded half away from zero.
    ///
    /// The represented range is then `[(qmin − Z)·S, (qmax − Z)·S]`, which contains 0.0 exactly.
    ///
    /// Degenerate cases: `[0, 0]` (a dead ReLU) is legitimate and gives `S = MIN_SCALE`, `Z = qmin`.
    /// NaN/inf bounds and `min > max` are errors; so is an invalid grid (`qmin ≥ qmax`).
    ///
    /// ```
    /// use qat_core::QuantParams;
    /// let p = QuantParams::from_min_max(-1.0, 3.0, 0, 255)?;
    /// assert_eq!(p.scale(), 4.0 / 255.0);
    /// assert_eq!(p.zero_point(), 64); // 0 − (−1)/(4/255) = 63.75 → 64
    /// assert_eq!(p.quantize(0.0), 64);
    /// let dead = QuantParams::from_min_max(0.0, 0.0, 0, 255)?;
    /// assert_eq!((dead.scale(), dead.zero_point()), (qat_core::MIN_SCALE, 0));
    /// assert!(QuantParams::from_min_max(f32::NAN, 1.0, 0, 255).is_err());
    /// assert!(QuantParams::from_min_max(2.0, 1.0, 0, 255).is_err());
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn from_min_max(min: f32, max: f32, qmin: i32, qmax: i32) -> Result<Self, QuantError> {
        let range = QuantRange::new(qmin, qmax)?;
        if !min.is_finite() || !max.is_finite() {
            return Err(QuantError::NonFiniteRange { min, max });
        }
        if min > max {
            return Err(QuantError::InvertedRange { min, max });
        }
        let min = min.min(0.0);
        let max = max.max(0.0);
        let steps = range.steps() as f32;
        let scale = ((max - min) / steps).max(MIN_SCALE);
        let zp_from_min = qmin as f32 - min / scale;
        let zero_point = if zp_from_min <= qmin as f32 {
            qmin
        } else if zp_from_min >= qmax as f32 {
            qmax
        } else {
            round_half_away(zp_from_min) as i32
        };
        Self::new(scale, zero_point, range)
    }

    /// Asymmetric `b`-bit activation parameters `[0, 2^b − 1]` from a range (see [`Self::from_min_max`]).
    pub fn asymmetric(min: f32, max: f32, bits: u32) -> Result<Self, QuantError> {
        let r = QuantRange::unsigned(bits)?;
        Self::from_min_max(min, max, r.qmin, r.qmax)
    }

    /// Symmetric parameters (`Z = 0`) for a tensor whose largest magnitude is `max_abs`:
    /// `S = max_abs / qmax` on the grid `range` (narrow int8 `[−127, 127]` for the paper's weights).
    /// `max_abs = 0` (an all-zero tensor) gives `S = MIN_SCALE`.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange};
    /// let w = QuantParams::symmetric(2.54, QuantRange::signed_narrow(8)?)?;
    /// assert_eq!((w.scale(), w.zero_point()), (0.02, 0));
    /// assert_eq!(w.quantize(-3.0), -127);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn symmetric(max_abs: f32, range: QuantRange) -> Result<Self, QuantError> {
        let range = QuantRange::new(range.qmin, range.qmax)?;
        if !max_abs.is_finite() {
            return Err(QuantError::NonFiniteRange {
                min: -max_abs,
                max: max_abs,
            });
        }
        if range.qmin > 0 || range.qmax <= 0 {
            return Err(QuantError::InvalidIntRange {
                qmin: range.qmin,
                qmax: range.qmax,
            });
        }
        let half = range.steps() as f32 / 2.0;
        let scale = (max_abs.abs() / half).max(MIN_SCALE);
        Self::new(scale, 0, range)
    }

    /// The scale `S`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The zero point `Z`.
    pub fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// The integer grid.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// Smallest code.
    pub fn qmin(&self) -> i32 {
        self.range.qmin
    }

    /// Largest code.
    pub fn qmax(&self) -> i32 {
        self.range.qmax
    }

    /// The real interval the grid covers: `[(qmin − Z)·S, (qmax − Z)·S]`.
    pub fn real_range(&self) -> (f32, f32) {
        (
            self.dequantize(self.range.qmin),
            self.dequantize(self.range.qmax),
        )
    }

    /// `q = clamp(round_half_even(r · (1/S)) + Z, qmin, qmax)`, `1/S` and the product in f32 as
    /// libtorch computes them (the `qat` target; the others are [`crate::Target::quantize`]).
    /// Total on f32: `±∞` and values beyond the grid saturate (the rounded product is clamped in
    /// f32 before it becomes an integer); NaN maps to `Z` (real 0), as qat-autograd's fake quant.
    /// The runtimes differ on NaN: onnxruntime gives `qmin`, XNNPACK's AVX2 kernel `qmax`.
    ///
    /// ```
    /// let p = qat_core::QuantParams::asymmetric(-1.0, 1.0, 8)?;   // Z = 127
    /// assert_eq!(p.quantize(f32::INFINITY), 255);
    /// assert_eq!((p.quantize(f32::MAX), p.quantize(f32::NEG_INFINITY)), (255, 0));
    /// assert_eq!(p.quantize(f32::NAN), 127);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn quantize(&self, r: f32) -> i32 {
        let inv = 1.0f32 / self.scale;
        self.saturate_rounded(round_half_even(r * inv))
            .unwrap_or(self.zero_point)
    }

    /// `clamp(t + Z, qmin, qmax)` for an already rounded `t` (any f32, `±∞` included), or `None`
    /// for NaN. `t` is clamped to `[qmin − Z, qmax − Z]` in f32 first (those bounds are small
    /// integers, exact in f32), so the conversion to an integer never overflows.
    pub(crate) fn saturate_rounded(&self, t: f32) -> Option<i32> {
        if t.is_nan() {
            return None;
        }
        let lo = (self.range.qmin - self.zero_point) as f32;
        let hi = (self.range.qmax - self.zero_point) as f32;
        Some(t.clamp(lo, hi) as i32 + self.zero_point)
    }

    /// `r = S·(q − Z)` in f32 (`q − Z` exact for every i32 `q`).
    pub fn dequantize(&self, q: i32) -> f32 {
        self.scale * (q as i64 - self.zero_point as i64) as f32
    }

    /// Fake quantization (paper §3): `dequantize(quantize(r))`, the value the integer model will
    /// hold for `r`.
    pub fn fake_quant(&self, r: f32) -> f32 {
        self.dequantize(self.quantize(r))
    }
}

/// Per-channel affine parameters along one axis: channel `c` uses `r = S[c]·(q − Z[c])`.
///
/// ```
/// use qat_core::{PerChannelParams, QuantRange};
/// let p = PerChannelParams::symmetric(&[1.27, 0.254], QuantRange::signed_narrow(8)?, 0)?;
/// assert_eq!(p.channel(0)?.quantize(1.0), 100);
/// assert_eq!(p.channel(1)?.quantize(0.1), 50);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerChannelParams {
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    range: QuantRange,
    axis: usize,
}

impl PerChannelParams {
    /// From explicit per-channel scales and zero points (validated channel by channel).
    pub fn new(
        scales: Vec<f32>,
        zero_points: Vec<i32>,
        range: QuantRange,
        axis: usize,
    ) -> Result<Self, QuantError> {
        if scales.is_empty() {
            return Err(QuantError::Empty {
                what: "per-channel scales",
            });
        }
        if scales.len() != zero_points.len() {
            return Err(QuantError::ChannelMismatch {
                params: scales.len(),
                axis,
                tensor: zero_points.len(),
            });
        }
        for (&s, &z) in scales.iter().zip(&zero_points) {
            QuantParams::new(s, z, range)?;
        }
        Ok(Self {
            scales,
            zero_points,
            range,
            axis,
        })
    }

    /// Symmetric per-channel parameters from each channel's largest magnitude
    /// (see [`QuantParams::symmetric`]).
    pub fn symmetric(max_abs: &[f32], range: QuantRange, axis: usize) -> Result<Self, QuantError> {
        let ps = max_abs
            .iter()
            .map(|&m| QuantParams::symmetric(m, range))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_params(&ps, axis)
    }

    /// Asymmetric per-channel parameters from each channel's `[min, max]`
    /// (see [`QuantParams::from_min_max`]).
    pub fn from_min_max(
        mins: &[f32],
        maxs: &[f32],
        range: QuantRange,
        axis: usize,
    ) -> Result<Self, QuantError> {
        if mins.len() != maxs.len() {
            return Err(QuantError::ChannelMismatch {
                params: mins.len(),
                axis,
                tensor: maxs.len(),
            });
        }
        let ps = mins
            .iter()
            .zip(maxs)
            .map(|(&lo, &hi)| QuantParams::from_min_max(lo, hi, range.qmin, range.qmax))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_params(&ps, axis)
    }

    /// Gathers per-tensor parameters (all on the same grid) into per-channel parameters.
    pub fn from_params(params: &[QuantParams], axis: usize) -> Result<Self, QuantError> {
        let first = params.first().ok_or(QuantError::Empty {
            what: "per-channel params",
        })?;
        let range = first.range();
        if let Some(p) = params.iter().find(|p| p.range() != range) {
            return Err(QuantError::InvalidIntRange {
                qmin: p.qmin(),
                qmax: p.qmax(),
            });
        }
        Ok(Self {
            scales: params.iter().map(|p| p.scale()).collect(),
            zero_points: params.iter().map(|p| p.zero_point()).collect(),
            range,
            axis,
        })
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// Always false: construction rejects zero channels.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// The channel axis.
    pub fn axis(&self) -> usize {
        self.axis
    }

    /// The shared integer grid.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// Per-channel scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Per-channel zero points.
    pub fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }

    /// The parameters of channel `c`.
    pub fn channel(&self, c: usize) -> Result<QuantParams, QuantError> {
        let (s, z) =
            self.scales
                .get(c)
                .zip(self.zero_points.get(c))
                .ok_or(QuantError::ChannelMismatch {
                    params: self.len(),
                    axis: self.axis,
                    tensor: c.saturating_add(1),
                })?;
        QuantParams::new(*s, *z, self.range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nudging_matches_tflite_examples() {
        // TFLite fake_quant tests: [−10.0, 53.75] on [0, 255] → scale 0.25, zp 40.
        let p = QuantParams::from_min_max(-10.0, 53.75, 0, 255).unwrap();
        assert_eq!(p.scale(), 0.25);
        assert_eq!(p.zero_point(), 40);
        // A strictly positive range is extended to include 0.
        let p = QuantParams::from_min_max(1.0, 2.55, 0, 255).unwrap();
        assert_eq!(p.zero_point(), 0);
        assert!((p.scale() - 0.01).abs() < 1e-9);
        // A strictly negative range puts Z at qmax.
        let p = QuantParams::from_min_max(-2.55, -1.0, 0, 255).unwrap();
        assert_eq!(p.zero_point(), 255);
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(
            QuantParams::from_min_max(f32::INFINITY, 1.0, 0, 255),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QuantParams::from_min_max(0.0, f32::NAN, 0, 255),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QuantParams::from_min_max(1.0, -1.0, 0, 255),
            Err(QuantError::InvertedRange { .. })
        ));
        assert!(matches!(
            QuantParams::from_min_max(-1.0, 1.0, 5, 5),
            Err(QuantError::InvalidIntRange { .. })
        ));
        assert!(QuantRange::unsigned(1).is_err());
        assert!(QuantRange::unsigned(9).is_err());
        assert!(QuantParams::new(f32::NAN, 0, QuantRange::unsigned(8).unwrap()).is_err());
        assert!(QuantParams::new(1.0, 256, QuantRange::unsigned(8).unwrap()).is_err());
    }

    #[test]
    fn tiny_ranges_stay_valid() {
        let p = QuantParams::from_min_max(0.0, 1e-30, 0, 255).unwrap();
        assert_eq!(p.scale(), MIN_SCALE);
        assert_eq!(p.quantize(0.0), 0);
        let p = QuantParams::symmetric(0.0, QuantRange::signed_narrow(8).unwrap()).unwrap();
        assert_eq!(p.quantize(0.0), 0);
        assert_eq!(p.quantize(f32::NAN), 0);
        // degenerate and NaN ranges of the paper's formula return `a` instead of panicking
        assert_eq!(simulated_quantize(1.0, 2.0, 1.0, 256), 2.0);
        assert!(simulated_quantize(1.0, f32::NAN, 1.0, 256).is_nan());
        assert_eq!(simulated_quantize(1.0, 0.0, 1.0, 1), 0.0);
    }

    #[test]
    fn serde_validates() {
        let p = QuantParams::from_min_max(-1.0, 1.0, 0, 255).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<QuantParams>(&json).unwrap(), p);
        let bad = r#"{"scale":0.1,"zero_point":300,"qmin":0,"qmax":255}"#;
        assert!(serde_json::from_str::<QuantParams>(bad).is_err());
        let bad = r#"{"scale":-0.1,"zero_point":0,"qmin":0,"qmax":255}"#;
        assert!(serde_json::from_str::<QuantParams>(bad).is_err());
    }

    proptest! {
        #[test]
        fn zero_is_exact_after_nudging(a in -100.0f32..100.0, w in 0.0f32..100.0, bits in 2u32..=8) {
            let (lo, hi) = (a, a + w);
            let p = QuantParams::asymmetric(lo, hi, bits).unwrap();
            prop_assert_eq!(p.fake_quant(0.0), 0.0);
            prop_assert!(p.zero_point() >= p.qmin() && p.zero_point() <= p.qmax());
        }

        #[test]
        fn round_trip_error_at_most_half_step(lo in -50.0f32..0.0, hi in 0.01f32..50.0, t in 0.0f32..1.0) {
            let p = QuantParams::from_min_max(lo, hi, 0, 255).unwrap();
            let (rlo, rhi) = p.real_range();
            let r = rlo + t * (rhi - rlo);
            let err = (p.fake_quant(r) - r).abs();
            // S/2 plus float rounding slack of the products involved.
            prop_assert!(err <= p.scale() * 0.5 + 1e-5 * (1.0 + r.abs()), "err {} scale {}", err, p.scale());
        }

        #[test]
        fn symmetric_is_odd(m in 0.001f32..100.0, x in -200.0f32..200.0) {
            let p = QuantParams::symmetric(m, QuantRange::signed_narrow(8).unwrap()).unwrap();
            // ties-to-even is symmetric around 0, so quantization is an odd function
            prop_assert_eq!(p.quantize(-x), -p.quantize(x));
            prop_assert!(p.quantize(x).abs() <= 127);
        }
    }
}
