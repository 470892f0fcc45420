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
    use crate::kernels::x86_64::avx2::requant::{requantize8_fp32, requantize8_single};
    use crate::kernels::x86_64::avx512vnni::requant::{
        RqFused16, RqSingle16, fused_constants, fused_ok, requantize16_fused, requantize16_single,
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

    /// AVX-512's single-shift stage (`requantize16_fused`, no clamp) in `rounding`; `None` also
    /// when [`avx512_fused_applies`] is false for the full range `[0, 255]`.
    pub fn avx512_fused(
        x: [i32; 16],
        m: &[QuantizedMultiplier; 16],
        zp: i32,
        rounding: Rounding,
    ) -> Option<[i32; 16]> {
        if !KernelPath::Avx512Vnni.is_supported_here() || !avx512_fused_applies(m, zp, 0, 255) {
            return None;
        }
        let (m0, _, right) = parts(m);
        let (k, s) = fused_constants(&m0, &right, zp, rounding);
        let mut out = [0i32; 16];
        // SAFETY: AVX-512 VNNI supported (checked); every array has 16 lanes.
        unsafe {
            let c = RqFused16::load(m0.as_ptr(), k.as_ptr(), s.as_ptr(), rounding);
            let q = requantize16_fused(_mm512_loadu_si512(x.as_ptr().cast()), &c);
            _mm512_storeu_si512(out.as_mut_ptr().cast(), q);
        }
        Some(out)
    }

    /// AVX-512's single-rounding stage (`requantize16_single`) with clamp, in its wide
    /// (`wide = true`, any shift) or narrow form (every multiplier below 0.5 or flushed).
    pub fn avx512_single(
        x: [i32; 16],
        m: &[QuantizedMultiplier; 16],
        zp: i32,
        lo: i32,
        hi: i32,
        wide: bool,
    ) -> Option<[i32; 16]> {
        if !KernelPath::Avx512Vnni.is_supported_here() {
            return None;
        }
        let (m0, left, right) = parts(m);
        let mut out = [0i32; 16];
        // SAFETY: AVX-512 supported (checked); every array has 16 lanes.
        unsafe {
            let c = RqSingle16::load(m0.as_ptr(), left.as_ptr(), right.as_ptr());
            let (xv, z, l, h) = (
                _mm512_loadu_si512(x.as_ptr().cast()),
                _mm512_set1_epi32(zp),
                _mm512_set1_epi32(lo),
                _mm512_set1_epi32(hi),
            );
            let q = if wide {
                requantize16_single::<true>(xv, &c, z, l, h)
            } else {
                requantize16_single::<false>(xv, &c, z, l, h)
            };
            _mm512_storeu_si512(out.as_mut_ptr().cast(), q);
        }
        Some(out)
    }

    /// AVX2's single-rounding stage (`requantize8_single`) with clamp.
    pub fn avx2_single(
        x: [i32; 8],
        m: &[QuantizedMultiplier; 8],
        zp: i32,
        lo: i32,
        hi: i32,
    ) -> Option<[i32; 8]> {
        if !KernelPath::Avx2.is_supported_here() {
            return None;
        }
        let (m0, left, right) = parts(m);
        let mut out = [0i32; 8];
        // SAFETY: AVX2 supported (checked); every array has 8 lanes.
        unsafe {
            let ld = |v: &[i32; 8]| _mm256_loadu_si256(v.as_ptr().cast());
            let q = requantize8_single(
                ld(&x),
                ld(&m0),
                ld(&left),
                ld(&right),
                _mm256_set1_epi32(zp),
                _mm256_set1_epi32(lo),
                _mm256_set1_epi32(hi),
            );
            _mm256_storeu_si256(out.as_mut_ptr().cast(), q);
        }
        Some(out)
    }

    /// AVX2's `f32` stage (`requantize8_fp32`) with clamp, each lane's `f32` multiplier
    /// `m[i].to_f32()`.
    pub fn avx2_fp32(
        x: [i32; 8],
        m: &[QuantizedMultiplier; 8],
        zp: i32,
        lo: i32,
        hi: i32,
    ) -> Option<[i32; 8]> {
        if !KernelPath::Avx2.is_supported_here() {
            return None;
        }
        let scale: [f32; 8] = std::array::from_fn(|i| m[i].to_f32());
        let mut out = [0i32; 8];
        // SAFETY: AVX2 supported (checked); every array has 8 lanes.
        unsafe {
            let q = requantize8_fp32(
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_ps(scale.as_ptr()),
                _mm256_set1_epi32(zp),
                _mm256_set1_epi32(lo),
                _mm256_set1_epi32(hi),
            );
            _mm256_storeu_si256(out.as_mut_ptr().cast(), q);
        }
        Some(out)
    }
}
