//! The kernels' surface for this crate's proptests (`tests/kernels.rs`) and benchmarks
//! (`examples/bench_kernels.rs`). Not part of the supported API: it may change in any release.
//!
//! Everything here is safe: plans refuse paths the CPU lacks ([`KernelError::Unsupported`]),
//! buffers are checked, and the vector output stages are wrapped ([`lanes`]).

pub use crate::kernels::conv::{ConvIo, ConvPlan, FcIo, FcPlan};
pub use crate::kernels::frame::depthwise::{DepthwisePlan, DepthwiseShape};
pub use crate::kernels::frame::packed::{ASource, GemmOut, PackedB};
pub use crate::kernels::frame::{KernelError, LayerSpec};

pub mod models;

/// The reference loops (the oracle), for benchmarks.
pub mod reference {
    pub use crate::kernels::reference::{conv2d, conv2d_acc, fully_connected, fully_connected_acc};
}

/// The vector output stages lane by lane, for comparison with qat-core; each returns `None`
/// when this CPU lacks the instruction set.
#[cfg(target_arch = "x86_64")]
pub mod lanes {
    use std::arch::x86_64::*;

    use qat_core::fixed_point::{QuantizedMultiplier, Rounding};

    use crate::KernelPath;
    use crate::kernels::x86_64::avx2::requant::{Rq8, requantize8_fp32, requantize8_single};
    use crate::kernels::x86_64::avx512vnni::requant::{
        RqFused16, RqSingle16, fold_bias, fused_constants, fused_ok, requantize16_fused,
        requantize16_no_tie, requantize16_single,
    };

    /// `(M0, left, right)` of each multiplier.
    fn parts<const N: usize>(m: &[QuantizedMultiplier; N]) -> ([i32; N], [i32; N], [i32; N]) {
        (
            std::array::from_fn(|i| m[i].multiplier()),
            std::array::from_fn(|i| m[i].shift().max(0)),
            std::array::from_fn(|i| (-m[i].shift()).max(0)),
        )
    }

    /// Whether AVX-512's single-shift depthwise stage applies to these multipliers and this
    /// output stage (`right ∈ 1..=21` or a flushed multiplier, no left shift, `|Z3| < 2^9`,
    /// `[lo, hi] ⊆ [0, 255]`).
    pub fn avx512_fused_applies(m: &[QuantizedMultiplier; 16], zp: i32, lo: i32, hi: i32) -> bool {
        let (m0, left, right) = parts(m);
        fused_ok(&m0, &left, &right, zp, lo, hi)
    }

    /// Defines `$name`, which runs an output stage on the `$n` lanes `x` as one `$vec`; `None`
    /// when this CPU lacks `KernelPath::$path`. `stage` gets the loaded lanes and `(Z3, lo, hi)`
    /// broadcast, and runs only after the check.
    macro_rules! lane_stage {
        ($name:ident: $n:literal x $vec:ty, $path:ident, $splat:ident, $load:ident, $store:ident) => {
            fn $name(
                x: [i32; $n],
                [zp, lo, hi]: [i32; 3],
                stage: impl FnOnce($vec, [$vec; 3]) -> $vec,
            ) -> Option<[i32; $n]> {
                if !KernelPath::$path.is_supported_here() {
                    return None;
                }
                let mut out = [0i32; $n];
                // SAFETY: the instruction set is supported (checked); `x` and `out` have one
                // vector's lanes.
                unsafe {
                    let zlh = [zp, lo, hi].map(|v| $splat(v));
                    let q = stage($load(x.as_ptr().cast()), zlh);
                    $store(out.as_mut_ptr().cast(), q);
                }
                Some(out)
            }
        };
    }
    lane_stage! {
        avx512_stage: 16 x __m512i, Avx512Vnni,
        _mm512_set1_epi32, _mm512_loadu_si512, _mm512_storeu_si512
    }
    lane_stage! {
        avx2_stage: 8 x __m256i, Avx2,
        _mm256_set1_epi32, _mm256_loadu_si256, _mm256_storeu_si256
    }

    /// AVX-512's single-shift stage (`requantize16_fused`, no clamp) in `rounding`; `None` also
    /// when [`avx512_fused_applies`] is false for the full range `[0, 255]`.
    pub fn avx512_fused(
        x: [i32; 16],
        m: &[QuantizedMultiplier; 16],
        zp: i32,
        rounding: Rounding,
    ) -> Option<[i32; 16]> {
        single_shift(x, None, m, zp, rounding)
    }

    /// AVX-512's tie-free single-shift stage (`requantize16_no_tie`, no clamp) of the bare
    /// accumulators `x` with `bias` folded into its constants (`Single` rounding): equal to
    /// qat-core's `apply_rounded_once(x + bias) + Z3` wherever no lane's `x + bias` is a tie of
    /// its multiplier (`Epilogue::ties_impossible`), which the caller ensures. `None` when this
    /// CPU lacks AVX-512 VNNI or [`avx512_fused_applies`] is false for `[0, 255]`.
    pub fn avx512_no_tie(
        x: [i32; 16],
        bias: [i32; 16],
        m: &[QuantizedMultiplier; 16],
        zp: i32,
    ) -> Option<[i32; 16]> {
        single_shift(x, Some(bias), m, zp, Rounding::Single)
    }

    /// [`avx512_fused`], or with `bias` folded into the constants [`avx512_no_tie`].
    fn single_shift(
        x: [i32; 16],
        bias: Option<[i32; 16]>,
        m: &[QuantizedMultiplier; 16],
        zp: i32,
        rounding: Rounding,
    ) -> Option<[i32; 16]> {
        if !avx512_fused_applies(m, zp, 0, 255) {
            return None;
        }
        let (m0, _, right) = parts(m);
        let mut c = fused_constants(&m0, &right, zp, rounding);
        if let Some(bias) = &bias {
            fold_bias(&mut c.k, &m0, bias);
        }
        avx512_stage(x, [zp, 0, 255], |x, _| {
            // SAFETY: run by `avx512_stage` after its AVX-512 VNNI check; 16 lanes each.
            unsafe {
                let c = RqFused16::load(m0.as_ptr(), c.k.as_ptr(), c.s.as_ptr(), rounding);
                if bias.is_some() {
                    requantize16_no_tie(x, &c)
                } else {
                    requantize16_fused(x, &c)
                }
            }
        })
    }

    /// AVX-512's single-rounding stage (`requantize16_single`) then `+ Z3` and the clamp
    /// (`zlh = [Z3, lo, hi]`), in its wide
    /// (`wide = true`, any shift) or narrow form (every multiplier below 0.5 or flushed).
    pub fn avx512_single(
        x: [i32; 16],
        m: &[QuantizedMultiplier; 16],
        zlh: [i32; 3],
        wide: bool,
    ) -> Option<[i32; 16]> {
        let (m0, left, right) = parts(m);
        avx512_stage(x, zlh, |x, [z, l, h]| {
            // SAFETY: run by `avx512_stage` after its AVX-512 check; 16 lanes each.
            unsafe {
                let c = RqSingle16::load(m0.as_ptr(), left.as_ptr(), right.as_ptr());
                if wide {
                    requantize16_single::<true>(x, &c, z, l, h)
                } else {
                    requantize16_single::<false>(x, &c, z, l, h)
                }
            }
        })
    }

    /// AVX2's single-rounding stage (`requantize8_single`), `zlh = [Z3, lo, hi]`.
    pub fn avx2_single(
        x: [i32; 8],
        m: &[QuantizedMultiplier; 8],
        zlh: [i32; 3],
    ) -> Option<[i32; 8]> {
        let (m0, left, right) = parts(m);
        avx2_stage(x, zlh, |x, [z, l, h]| {
            // SAFETY: run by `avx2_stage` after its AVX2 check; 8 lanes each.
            unsafe {
                let ld = |v: &[i32; 8]| _mm256_loadu_si256(v.as_ptr().cast());
                let (m0, left, right) = (ld(&m0), ld(&left), ld(&right));
                requantize8_single(x, Rq8 { m0, left, right }, [z, l, h])
            }
        })
    }

    /// AVX2's `f32` stage (`requantize8_fp32`), `zlh = [Z3, lo, hi]`, each lane's `f32` multiplier
    /// `m[i].to_f32()`.
    pub fn avx2_fp32(x: [i32; 8], m: &[QuantizedMultiplier; 8], zlh: [i32; 3]) -> Option<[i32; 8]> {
        let scale: [f32; 8] = std::array::from_fn(|i| m[i].to_f32());
        avx2_stage(x, zlh, |x, [z, l, h]| {
            // SAFETY: run by `avx2_stage` after its AVX2 check; 8 lanes.
            unsafe { requantize8_fp32(x, _mm256_loadu_ps(scale.as_ptr()), z, l, h) }
        })
    }
}
