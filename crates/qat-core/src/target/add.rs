//! The elementwise add of two quantized tensors with different parameters, per target.

use crate::fixed_point::{QuantizedMultiplier, Rounding};
use crate::{QuantError, QuantParams};

use super::{Target, clamp_total};

/// TFLite's `left_shift` for 8-bit add: input differences are scaled by `2^20` before rescaling.
pub const ADD_LEFT_SHIFT: u32 = 20;

/// TFLite's 8-bit add multipliers (`add.cc`, `Prepare`), from the `f32` scales in `f64`:
/// `twice_max = 2·max(S_a, S_b)`, `M_a = S_a/twice_max`, `M_b = S_b/twice_max`,
/// `M_out = twice_max/(2^20·S_out)`, each through `QuantizeMultiplier`
/// ([`QuantizedMultiplier::from_f64`]).
///
/// ```
/// use qat_core::{QuantParams, QuantRange, target::add_multipliers};
/// let p = |s| QuantParams::new(s, 0, QuantRange::unsigned(8).unwrap()).unwrap();
/// let (ma, mb, mo) = add_multipliers(&p(0.5), &p(0.25), &p(1.0))?;
/// assert_eq!((ma.to_f64(), mb.to_f64()), (0.5, 0.25));
/// assert_eq!(mo.to_f64(), 1.0 / (1u64 << 20) as f64);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn add_multipliers(
    a: &QuantParams,
    b: &QuantParams,
    out: &QuantParams,
) -> Result<
    (
        QuantizedMultiplier,
        QuantizedMultiplier,
        QuantizedMultiplier,
    ),
    QuantError,
> {
    let twice_max = 2.0 * (a.scale().max(b.scale()) as f64);
    let ma = QuantizedMultiplier::from_f64(a.scale() as f64 / twice_max)?;
    let mb = QuantizedMultiplier::from_f64(b.scale() as f64 / twice_max)?;
    let mo = QuantizedMultiplier::from_f64(
        twice_max / ((1u64 << ADD_LEFT_SHIFT) as f64 * out.scale() as f64),
    )?;
    Ok((ma, mb, mo))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    /// `qat` and `tflite`: TFLite's add, the output stage rounded as `out`.
    FixedPoint {
        ma: QuantizedMultiplier,
        mb: QuantizedMultiplier,
        mo: QuantizedMultiplier,
        out: Rounding,
    },
    /// onnxruntime's `MlasQLinearAddKernelAvx2Helper`.
    Ort { ra: f32, rb: f32, fixed: f32 },
    /// XNNPACK's `qs8_vadd` (`xnn_init_qs8_add_minmax_scalar_params`).
    Xnnpack {
        ma: i32,
        mb: i32,
        shift: u32,
        bias: i32,
    },
}

/// The add `q_out = add(q_a, q_b)` of one target, its constants derived once from the three
/// tensors' parameters (see [`AddStage::new`] for every formula), with the output clamp `[lo, hi]`
/// (the fused activation intersected with the output grid).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddStage {
    za: i32,
    zb: i32,
    zo: i32,
    lo: i32,
    hi: i32,
    arith: Arith,
}

impl AddStage {
    /// Derives the target's add from the inputs' params `a`, `b` and the output's `out`:
    ///
    /// - `qat`, `tflite` (TFLite `reference_integer_ops::Add`): `a' = MBQM((q_a − Z_a)·2^20,
    ///   M_a)`, `b'` alike, `q = MBQM(a' + b', M_out) + Z_out` with [`add_multipliers`]; the input
    ///   rescales use gemmlowp's rounding ([`QuantizedMultiplier::apply`]; their `2^20` headroom
    ///   makes the mode immaterial), the output stage rounds once (`qat`) or twice (`tflite`).
    /// - `ort` (onnxruntime `MlasQLinearAddKernelAvx2Helper`, AVX2 + FMA, on uint8 codes):
    ///   `r_a = f32(S_a/S_out)`, `r_b = f32(S_b/S_out)`,
    ///   `F = f32(Z_out) − fma(r_a, f32(Z_a), f32(r_b·f32(Z_b)))` (the compiler contracts
    ///   `r_a·Z_a + r_b·Z_b` as GCC does on x86-64 Linux builds),
    ///   `q = round_half_even(fma(f32(q_a), r_a, fma(f32(q_b), r_b, F)))`, saturated.
    /// - `xnnpack` (XNNPACK `qs8_vadd`): `r_a = f32(S_a/S_out)`, `r_b = f32(S_b/S_out)`, both in
    ///   `[2^−10, 2^8)`; `shift = 20 − exponent(max(r_a, r_b))` (in `[12, 30]`);
    ///   `M_a = round_half_even(r_a·2^shift)` (`lrintf`), `M_b` alike;
    ///   `bias = 2^(shift−1) − M_a·Z_a − M_b·Z_b`;
    ///   `q = ((bias + M_a·q_a + M_b·q_b) >> shift) + Z_out` (arithmetic shift: ties toward +∞).
    ///   The same integers in XNNPACK's int8 codes (`q − 128`, `Z − 128`).
    ///
    /// Errors: multipliers that cannot be represented, and for `xnnpack` a ratio outside
    /// `[2^−10, 2^8)` ([`QuantError::Unsupported`]: XNNPACK refuses to create the operator).
    pub fn new(
        target: Target,
        a: &QuantParams,
        b: &QuantParams,
        out: &QuantParams,
        lo: i32,
        hi: i32,
    ) -> Result<Self, QuantError> {
        let arith = match target {
            Target::Qat | Target::Tflite => {
                let (ma, mb, mo) = add_multipliers(a, b, out)?;
                let out = target.rounding().unwrap_or(Rounding::Single);
                Arith::FixedPoint { ma, mb, mo, out }
            }
            Target::Ort => {
                let ra = a.scale() / out.scale();
                let rb = b.scale() / out.scale();
                let fixed = out.zero_point() as f32
                    - ra.mul_add(a.zero_point() as f32, rb * b.zero_point() as f32);
                Arith::Ort { ra, rb, fixed }
            }
            Target::Xnnpack => xnnpack_arith(a, b, out)?,
        };
        Ok(Self {
            za: a.zero_point(),
            zb: b.zero_point(),
            zo: out.zero_point(),
            lo,
            hi,
            arith,
        })
    }

    /// One output code from the input codes `q_a`, `q_b` (uint8 codes; any i32 is accepted and
    /// saturates, never panics).
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::{AddStage, Target}};
    /// let p = |s, z| QuantParams::new(s, z, QuantRange::unsigned(8).unwrap()).unwrap();
    /// let (a, b, out) = (p(0.1, 128), p(0.05, 100), p(0.2, 64));
    /// // 0.1·(140 − 128) + 0.05·(110 − 100) = 1.7 → 8.5 output steps, + 64
    /// let code = |t| AddStage::new(t, &a, &b, &out, 0, 255).unwrap().apply(140, 110);
    /// assert_eq!(code(Target::Qat), 73);     // 8.5 → 9 (ties away from zero, once)
    /// assert_eq!(code(Target::Ort), 72);     // 8.5 → 8 (ties to even, in f32)
    /// assert_eq!(code(Target::Xnnpack), 73); // 8.5 → 9 (arithmetic shift with +2^(shift−1))
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    #[inline]
    pub fn apply(&self, qa: i32, qb: i32) -> i32 {
        match self.arith {
            Arith::FixedPoint { ma, mb, mo, out } => {
                let left = |q: i32, z: i32| {
                    let d = (q as i64 - z as i64) << ADD_LEFT_SHIFT;
                    d.clamp(i32::MIN as i64, i32::MAX as i64) as i32
                };
                let sum = ma
                    .apply(left(qa, self.za))
                    .saturating_add(mb.apply(left(qb, self.zb)));
                let r = match out {
                    Rounding::Single => mo.apply_rounded_once(sum),
                    Rounding::Gemmlowp => mo.apply(sum),
                };
                clamp_total(r as i64 + self.zo as i64, self.lo, self.hi)
            }
            Arith::Ort { ra, rb, fixed } => {
                let y = (qa as f32).mul_add(ra, (qb as f32).mul_add(rb, fixed));
                // cvtps2dq, then packssdw/packuswb saturation; NaN cannot occur (finite inputs).
                clamp_total(y.round_ties_even() as i64, self.lo, self.hi)
            }
            Arith::Xnnpack {
                ma,
                mb,
                shift,
                bias,
            } => {
                let acc = bias as i64 + ma as i64 * qa as i64 + mb as i64 * qb as i64;
                clamp_total((acc >> shift) + self.zo as i64, self.lo, self.hi)
            }
        }
    }
}

/// XNNPACK's `xnn_init_qs8_add_minmax_scalar_params`.
fn xnnpack_arith(a: &QuantParams, b: &QuantParams, out: &QuantParams) -> Result<Arith, QuantError> {
    let ra = a.scale() / out.scale();
    let rb = b.scale() / out.scale();
    let ok = |r: f32| (2f32.powi(-10)..256.0).contains(&r);
    if !ok(ra) || !ok(rb) {
        return Err(QuantError::Unsupported {
            target: Target::Xnnpack,
            what: "add",
            reason: format!(
                "input/output scale ratios {ra} and {rb} must lie in [2^-10, 2^8) for XNNPACK's qs8 add"
            ),
        });
    }
    let max_exponent = ((ra.max(rb).to_bits() >> 23) as i32) - 127;
    let shift = (20 - max_exponent) as u32; // in [12, 30] for ratios in [2^−10, 2^8)
    // `r·2^shift` by adding to the exponent (exact), then `lrintf` (ties to even).
    let mult = |r: f32| f32::from_bits(r.to_bits() + (shift << 23)).round_ties_even() as i32;
    let (ma, mb) = (mult(ra), mult(rb));
    let bias = (1i32 << (shift - 1))
        .wrapping_sub(ma.wrapping_mul(a.zero_point()))
        .wrapping_sub(mb.wrapping_mul(b.zero_point()));
    Ok(Arith::Xnnpack {
        ma,
        mb,
        shift,
        bias,
    })
}
