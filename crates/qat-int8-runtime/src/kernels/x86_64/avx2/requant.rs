//! The AVX2 output stage: requantization of 8 int32 lanes in every target (`tflite`:
//! `requantize8`, `qat`: `requantize8_single`, `ort` and `xnnpack`: `requantize8_fp32`, all
//! bit-exact with qat-core's `Target::requantize`), the narrowing to bytes, and the store of 8
//! accumulators as u8 or int32 that the GEMM tile and the depthwise kernel share.
//!
//! A new target (rounding mode): add its 8-lane stage here, an arm in `store8` and a `true` in
//! `fuses`; until then the frame requantizes it through int32 with qat-core.

use std::arch::x86_64::*;

use qat_core::target::Target;

use super::Avx2;
use crate::kernels::frame::{Epilogue, OutPtr, OutputStage};

impl OutputStage for Avx2 {
    fn fuses(target: Target) -> bool {
        matches!(
            target,
            Target::Tflite | Target::Qat | Target::Ort | Target::Xnnpack
        )
    }
}

/// The `f32` output stage of onnxruntime (MLAS) and XNNPACK on 8 lanes, bit-exact with qat-core's
/// `requantize_fp32`: `x = f32(acc)·s` (`cvtdq2ps`, `mulps`), clamped to `[lo − Z, hi − Z]` in
/// `f32` (`maxps`, `minps`; the bounds are small integers, exact in `f32`, so clamping before the
/// rounding gives the same code as after, and no lane overflows `cvtps2dq`), `cvtps2dq` (ties to
/// even in the default MXCSR mode, which Rust never changes), `+ Z`.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn requantize8_fp32(
    x: __m256i,
    scale: __m256,
    zp: __m256i,
    lo: __m256i,
    hi: __m256i,
) -> __m256i {
    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(x), scale);
    let y = _mm256_max_ps(y, _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, zp)));
    let y = _mm256_min_ps(y, _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, zp)));
    _mm256_add_epi32(_mm256_cvtps_epi32(y), zp)
}

/// The per-column multipliers of the fixed-point stages on 8 lanes ([`requantize8`],
/// [`requantize8_single`]): `M0`, `max(shift, 0)` and `max(−shift, 0)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rq8 {
    /// `M0` per lane.
    pub(crate) m0: __m256i,
    /// Left shift per lane.
    pub(crate) left: __m256i,
    /// Right shift per lane.
    pub(crate) right: __m256i,
}

/// `avx512vnni::requant::requantize16` on 8 lanes with AVX2 (no 64-bit arithmetic shift needed:
/// the low 32 bits of `(p + 2^30) >> 31` are the same for logical and arithmetic shifts).
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn requantize8(x: __m256i, rq: Rq8, [zp, lo, hi]: [__m256i; 3]) -> __m256i {
    let Rq8 { m0, left, right } = rq;
    let one = _mm256_set1_epi32(1);
    let shifted = _mm256_sllv_epi32(x, left);
    let fits = _mm256_cmpeq_epi32(_mm256_srav_epi32(shifted, left), x);
    let negative = _mm256_cmpgt_epi32(_mm256_setzero_si256(), x);
    let sat = _mm256_blendv_epi8(
        _mm256_set1_epi32(i32::MAX),
        _mm256_set1_epi32(i32::MIN),
        negative,
    );
    let x = _mm256_blendv_epi8(sat, shifted, fits);
    let nudge = _mm256_set1_epi64x(1 << 30);
    let even = _mm256_srli_epi64::<31>(_mm256_add_epi64(_mm256_mul_epi32(x, m0), nudge));
    let odd = _mm256_slli_epi64::<1>(_mm256_add_epi64(
        _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), _mm256_srli_epi64::<32>(m0)),
        nudge,
    ));
    let high = _mm256_blend_epi32::<0b1010_1010>(even, odd);
    let mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);
    let rem = _mm256_and_si256(high, mask);
    let threshold = _mm256_add_epi32(_mm256_srli_epi32::<1>(mask), _mm256_srli_epi32::<31>(high));
    let q = _mm256_add_epi32(
        _mm256_srav_epi32(high, right),
        _mm256_and_si256(_mm256_cmpgt_epi32(rem, threshold), one),
    );
    _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, zp), lo), hi)
}

/// `avx512vnni::requant::requantize16_single` on 8 lanes with AVX2 (single rounding, bit-exact
/// with `qat_core::fixed_point::requantize_single`), for any shift: with `T = 31 + right − left`
/// (`T = 32` for a flushed `M0 = 0`), `r = sign(x)·min(⌊(|x|·M0 + 2^(T−1)) / 2^T⌋, 2^24)`, then
/// `+ Z3` and the clamp. AVX2 has no 64-bit arithmetic shift, so the product is formed from
/// `|x|` (`vpabsd`; `|i32::MIN| = 2^31` is exact as an unsigned lane for `vpmuludq`), shifted
/// logically, and the sign restored with `vpsignd`. The cap at 2^24 (only reached by
/// multipliers ≥ 0.5) changes nothing after the clamp to `[lo, hi] ⊆ [0, 255]`.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn requantize8_single(x: __m256i, rq: Rq8, [zp, lo, hi]: [__m256i; 3]) -> __m256i {
    let Rq8 { m0, left, right } = rq;
    let t = _mm256_sub_epi32(_mm256_add_epi32(_mm256_set1_epi32(31), right), left);
    let flushed = _mm256_cmpeq_epi32(m0, _mm256_setzero_si256());
    let t = _mm256_blendv_epi8(t, _mm256_set1_epi32(32), flushed);
    let t_even = _mm256_and_si256(t, _mm256_set1_epi64x(0xFFFF_FFFF));
    let t_odd = _mm256_srli_epi64::<32>(t);
    let one = _mm256_set1_epi64x(1);
    let h_even = _mm256_sllv_epi64(one, _mm256_sub_epi64(t_even, one));
    let h_odd = _mm256_sllv_epi64(one, _mm256_sub_epi64(t_odd, one));
    let ax = _mm256_abs_epi32(x);
    let re = _mm256_srlv_epi64(_mm256_add_epi64(_mm256_mul_epu32(ax, m0), h_even), t_even);
    let ro = _mm256_srlv_epi64(
        _mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(ax), _mm256_srli_epi64::<32>(m0)),
            h_odd,
        ),
        t_odd,
    );
    // Both below 2^63: a signed 64-bit compare caps them.
    let cap = _mm256_set1_epi64x(1 << 24);
    let re = _mm256_blendv_epi8(re, cap, _mm256_cmpgt_epi64(re, cap));
    let ro = _mm256_blendv_epi8(ro, cap, _mm256_cmpgt_epi64(ro, cap));
    let r = _mm256_blend_epi32::<0b1010_1010>(re, _mm256_slli_epi64::<32>(ro));
    let r = _mm256_sign_epi32(r, x);
    _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, zp), lo), hi)
}

/// Narrows 8 int32 lanes in `[0, 255]` to 8 bytes (in the low 64 bits).
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn narrow8(q: __m256i) -> __m128i {
    let bytes = _mm256_shuffle_epi8(
        q,
        _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1,
        ),
    );
    _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
        bytes,
        _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1),
    ))
}

/// # Safety
/// `e`'s arrays hold ≥ `col + 8` entries; the destination row has ≥ `valid` writable elements.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store8(
    acc: __m256i,
    e: &Epilogue,
    col: usize,
    valid: usize,
    out: OutPtr,
    row: usize,
) {
    // SAFETY: the epilogue arrays are padded to whole panels; writes limited to `valid`.
    unsafe {
        let v = _mm256_add_epi32(acc, _mm256_loadu_si256(e.bias.as_ptr().add(col).cast()));
        match out {
            OutPtr::I32(p, ld) => {
                let mut tmp = [0i32; 8];
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), p.add(row * ld + col), valid);
            }
            OutPtr::U8(p, ld) => {
                let at = |v: &[i32]| _mm256_loadu_si256(v.as_ptr().add(col).cast());
                let rq = Rq8 {
                    m0: at(&e.m0),
                    left: at(&e.left),
                    right: at(&e.right),
                };
                let zlh @ [zp, lo, hi] = [e.zp, e.lo, e.hi].map(|v| _mm256_set1_epi32(v));
                // One arm per target this output stage fuses (keep in step with `fuses`).
                let q = match e.target {
                    Target::Tflite => requantize8(v, rq, zlh),
                    Target::Qat => requantize8_single(v, rq, zlh),
                    Target::Ort | Target::Xnnpack => {
                        let scale = _mm256_loadu_ps(e.scale.as_ptr().add(col));
                        requantize8_fp32(v, scale, zp, lo, hi)
                    }
                };
                let bytes = narrow8(q);
                if valid == 8 {
                    _mm_storel_epi64(p.add(row * ld + col).cast(), bytes);
                } else {
                    let mut tmp = [0u8; 16];
                    _mm_storeu_si128(tmp.as_mut_ptr().cast(), bytes);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), p.add(row * ld + col), valid);
                }
            }
        }
    }
}
