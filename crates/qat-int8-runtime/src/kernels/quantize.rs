//! The graph input's quantization (`Quantize`, and a uint8 model input), prepared once per op:
//! qat-core's [`Target::quantize`] clamped to `[0, 255]`, as
//! [`reference::quantize`] computes it one element at a time, and on
//! the AVX-512 VNNI path 16 lanes at a time with the same IEEE operations (the same multiply or
//! divide, the same rounding to an integer, the same clamp), so every code is identical.

use qat_core::QuantParams;
use qat_core::target::Target;

use super::{KernelPath, reference};

/// The per-op constants of a vector quantize: `t = round(x·inv)` or `round(x / S)`, NaN → `nan`,
/// else `clamp(t, lo, hi) + Z`, then clamped to `[0, 255]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuantizeConsts {
    /// `Some(f32(1/S))`: multiply (`qat`, `xnnpack`); `None`: divide by `scale` (`tflite`, `ort`).
    pub(crate) inv: Option<f32>,
    /// `S`.
    pub(crate) scale: f32,
    /// Ties away from zero (`tflite`, `f32::round`); else ties to even.
    pub(crate) away: bool,
    /// `qmin − Z` in f32 (exact).
    pub(crate) lo: f32,
    /// `qmax − Z` in f32 (exact).
    pub(crate) hi: f32,
    /// `Z`.
    pub(crate) zp: i32,
    /// The code of a NaN input (before the clamp to `[0, 255]`).
    pub(crate) nan: i32,
}

impl QuantizeConsts {
    /// The constants of `target.quantize(·, q)` (one arm per target of qat-core's
    /// `Target::quantize`).
    pub(crate) fn new(q: &QuantParams, target: Target) -> Self {
        let (inv, away, nan) = match target {
            Target::Qat => (Some(1.0f32 / q.scale()), false, q.zero_point()),
            Target::Tflite => (None, true, q.zero_point()),
            Target::Ort => (None, false, q.qmin()),
            Target::Xnnpack => (Some(1.0f32 / q.scale()), false, q.qmax()),
        };
        Self {
            inv,
            scale: q.scale(),
            away,
            lo: (q.qmin() - q.zero_point()) as f32,
            hi: (q.qmax() - q.zero_point()) as f32,
            zp: q.zero_point(),
            nan,
        }
    }
}

/// A quantize op prepared for one kernel path.
#[derive(Debug, Clone)]
pub(crate) struct QuantizePlan {
    q: QuantParams,
    target: Target,
    /// Whether the AVX-512 loop runs (the AVX-512 VNNI path); else the reference loop.
    simd: bool,
    consts: QuantizeConsts,
}

impl QuantizePlan {
    /// `target.quantize(·, q)` on `path` (a path this CPU supports).
    pub(crate) fn new(q: &QuantParams, target: Target, path: KernelPath) -> Self {
        let simd = cfg!(target_arch = "x86_64")
            && path == KernelPath::Avx512Vnni
            && path.is_supported_here();
        Self {
            q: *q,
            target,
            simd,
            consts: QuantizeConsts::new(q, target),
        }
    }

    /// `out[i] = clamp(target.quantize(x[i], q), 0, 255)` for `i < min(x.len(), out.len())`.
    pub(crate) fn run(&self, x: &[f32], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` only when the CPU supports the AVX-512 VNNI path (checked in `new`).
            unsafe { super::x86_64::avx512vnni::quantize::quantize(x, &self.consts, out) };
            return;
        }
        reference::quantize(x, &self.q, self.target, out);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qat_core::QuantRange;

    use super::*;

    /// Reals around the grid: ties, halves, huge values, infinities, NaN, signed zeros.
    fn real() -> impl Strategy<Value = f32> {
        prop_oneof![
            -300.0f32..300.0,
            (-600i32..600).prop_map(|h| h as f32 * 0.5),
            any::<f32>(),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(-0.0f32),
            Just(8_388_607.5f32),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every path's quantize equals the reference loop (qat-core's `Target::quantize`) for
        /// every target, on lengths with and without a 16-lane tail.
        #[test]
        fn quantize_matches_reference(
            xs in proptest::collection::vec(real(), 0..70),
            scale_exp in -12i32..6,
            mant in 1.0f32..2.0,
            zp in 0i32..=255,
            scaled in any::<bool>(),
        ) {
            let scale = mant * 2f32.powi(scale_exp);
            let q = QuantParams::new(scale, zp, QuantRange::unsigned(8).unwrap()).unwrap();
            // Inputs in units of the scale hit the rounding ties exactly.
            let xs: Vec<f32> = if scaled { xs.iter().map(|&x| x * scale).collect() } else { xs };
            for target in Target::ALL {
                let mut want = vec![0u8; xs.len()];
                reference::quantize(&xs, &q, target, &mut want);
                for path in KernelPath::supported() {
                    let mut got = vec![0u8; xs.len()];
                    QuantizePlan::new(&q, target, path).run(&xs, &mut got);
                    prop_assert_eq!(&got, &want, "{} {}", path, target);
                }
            }
        }
    }
}
