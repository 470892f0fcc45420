//! Requantization of codes from one tensor's parameters to another's (concat inputs), per target.

use crate::fixed_point::{QuantizedMultiplier, Rounding};
use crate::{QuantError, QuantParams};

use super::{Io, Target};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    /// The codes pass through unchanged.
    Identity,
    /// `qat`, `tflite`: `M = S_in/S_out` in fixed point, rounded as `rounding`.
    FixedPoint {
        m: QuantizedMultiplier,
        rounding: Rounding,
    },
    /// onnxruntime's `QLinearConcat` lookup table.
    Ort { si: f32, so: f32 },
    /// XNNPACK's `qs8-vcvt` (8 fractional bits).
    Xnnpack { m: i32 },
}

/// `q_out = rescale(q_in)` from input params to output params, one target's arithmetic, clamped to
/// the output grid. See [`RescaleStage::new`] for the formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RescaleStage {
    io: Io,
    arith: Arith,
}

impl RescaleStage {
    /// The rescale from `input` params to `output` params:
    ///
    /// - `qat`: identity when the params are equal (grid included); otherwise
    ///   `q = clamp(round_half_away((q_in − Z_in)·M) + Z_out, qmin, qmax)`, `M = S_in/S_out`
    ///   in fixed point ([`QuantizedMultiplier::apply_rounded_once`]).
    /// - `tflite`: identity when scale and zero point are equal (int8 `CONCATENATION` requires
    ///   it); otherwise the `QUANTIZE` op that an exporter inserts before the concat, TFLite
    ///   `Requantize`: `MultiplyByQuantizedMultiplier(q_in − Z_in, QuantizeMultiplier((f64)S_in /
    ///   (f64)S_out)) + Z_out` (double rounding).
    /// - `ort`: identity when scale and zero point are equal; otherwise `QLinearConcat`'s table,
    ///   `q = MlasQuantizeLinear(f32(S_in·f32(q_in − Z_in)))`: `round_half_even(v / S_out) + Z_out`
    ///   with `v / S_out` clamped to `[qmin − Z_out, qmax − Z_out]` first.
    /// - `xnnpack`: identity when scale and zero point are equal; otherwise XNNPACK's int8
    ///   requantization `qs8-vcvt`: `M = lrintf(256·f32(S_in/S_out))`,
    ///   `q = ((M·(q_in − Z_in) + 128) >> 8) + Z_out` (requires `S_in/S_out ∈ [2^−8, 2^7]`).
    ///
    /// Errors: an unrepresentable `M` (`qat`, `tflite`), or for `xnnpack` a ratio outside
    /// `[2^−8, 2^7]` ([`QuantError::Unsupported`]).
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::{RescaleStage, Target}};
    /// let p = |s, z| QuantParams::new(s, z, QuantRange::unsigned(8).unwrap()).unwrap();
    /// let (i, o) = (p(0.75, 10), p(0.5, 20));
    /// // (13 − 10)·1.5 = 4.5 → 5 (ties away from zero; XNNPACK's shift ties up), 4 (ties to even)
    /// for (t, want) in [(Target::Qat, 25), (Target::Tflite, 25), (Target::Ort, 24), (Target::Xnnpack, 25)] {
    ///     assert_eq!(RescaleStage::new(t, &i, &o)?.apply(13), want, "{t}");
    /// }
    /// assert_eq!(RescaleStage::new(Target::Ort, &i, &i)?.apply(200), 200); // identity
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn new(
        target: Target,
        input: &QuantParams,
        output: &QuantParams,
    ) -> Result<Self, QuantError> {
        let same_scale =
            input.scale() == output.scale() && input.zero_point() == output.zero_point();
        let identity = match target {
            Target::Qat => input == output,
            Target::Tflite | Target::Ort | Target::Xnnpack => same_scale,
        };
        let ratio = input.scale() / output.scale();
        let arith = if identity {
            Arith::Identity
        } else {
            match target {
                Target::Qat | Target::Tflite => Arith::FixedPoint {
                    m: QuantizedMultiplier::from_f64(input.scale() as f64 / output.scale() as f64)?,
                    rounding: target.rounding().unwrap_or(Rounding::Single),
                },
                Target::Ort => Arith::Ort {
                    si: input.scale(),
                    so: output.scale(),
                },
                Target::Xnnpack => {
                    if !(2f32.powi(-8)..=128.0).contains(&ratio) {
                        return Err(QuantError::Unsupported {
                            target,
                            what: "requantization (concat input)",
                            reason: format!(
                                "S_in/S_out = {ratio} must lie in [2^-8, 2^7] for XNNPACK's qs8 convert"
                            ),
                        });
                    }
                    Arith::Xnnpack {
                        m: (256.0 * ratio).round_ties_even() as i32,
                    }
                }
            }
        };
        Ok(Self {
            io: Io::new(input, output),
            arith,
        })
    }

    /// Whether the codes pass through unchanged.
    pub fn is_identity(&self) -> bool {
        self.arith == Arith::Identity
    }

    /// One output code (any i32 input saturates; never panics).
    #[inline]
    pub fn apply(&self, q: i32) -> i32 {
        let io = &self.io;
        let d = q as i64 - io.zi as i64;
        let d32 = d.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        match self.arith {
            Arith::Identity => q,
            Arith::FixedPoint { m, rounding } => io.out(match rounding {
                Rounding::Single => m.apply_rounded_once(d32),
                Rounding::Gemmlowp => m.apply(d32),
            } as i64),
            Arith::Ort { si, so } => {
                let v = si * d32 as f32;
                let lo = (io.lo - io.zo) as f32;
                let hi = (io.hi - io.zo) as f32;
                io.out((v / so).max(lo).min(hi).round_ties_even() as i64)
            }
            Arith::Xnnpack { m } => io.out((m as i64 * d + 128) >> 8),
        }
    }
}
