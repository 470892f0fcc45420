//! The input quantize on 16 f32 lanes: the same IEEE multiply (or divide), rounding, clamp and
//! conversion as qat-core's scalar `Target::quantize`, so every code equals the reference's.

use std::arch::x86_64::*;

use crate::kernels::quantize::QuantizeConsts;

/// `out[i] = clamp(target.quantize(x[i]), 0, 255)` for `i < min(x.len(), out.len())`, 16 lanes
/// at a time (the tail masked):
/// - `y = x·inv` or `x / S` (`vmulps`/`vdivps`, correctly rounded like the scalar operation);
/// - ties to even: `vrndscaleps` to nearest; ties away from zero: `t = trunc(y)`, plus
///   `copysign(1, y)` where `|y − t| ≥ 0.5` (`y − t` is exact: the fraction of `y`);
/// - NaN lanes (of `t`) take the target's NaN code; the others `clamp(t, lo, hi)` (exact small
///   integers) converted and `+ Z`; then `[0, 255]`.
///
/// # Safety
/// The CPU supports avx512f, avx512bw and avx512vl.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize(x: &[f32], c: &QuantizeConsts, out: &mut [u8]) {
    let n = x.len().min(out.len());
    let scale = _mm512_set1_ps(c.scale);
    let inv = _mm512_set1_ps(c.inv.unwrap_or(1.0));
    let (lo, hi) = (_mm512_set1_ps(c.lo), _mm512_set1_ps(c.hi));
    let (zp, nan) = (_mm512_set1_epi32(c.zp), _mm512_set1_epi32(c.nan));
    let (u0, u255) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
    let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
    let sign = _mm512_set1_epi32(i32::MIN);
    let mut i = 0;
    while i < n {
        let mask = ((1u32 << (n - i).min(16)) - 1) as u16;
        // SAFETY: only the `mask` lanes, inside `x`, are read.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)) };
        let y = match c.inv {
            Some(_) => _mm512_mul_ps(v, inv),
            None => _mm512_div_ps(v, scale),
        };
        let t = if c.away {
            // _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC
            let tr = _mm512_roundscale_ps::<0x0B>(y);
            let frac = _mm512_abs_ps(_mm512_sub_ps(y, tr));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
            let step = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(one),
                _mm512_and_si512(_mm512_castps_si512(y), sign),
            ));
            _mm512_mask_add_ps(tr, up, tr, step)
        } else {
            // _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC
            _mm512_roundscale_ps::<0x08>(y)
        };
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t, t);
        let q = _mm512_add_epi32(
            _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, lo), hi)),
            zp,
        );
        let q = _mm512_mask_mov_epi32(q, is_nan, nan);
        let q = _mm512_min_epi32(_mm512_max_epi32(q, u0), u255);
        // SAFETY: only the `mask` lanes, inside `out`, are written.
        unsafe {
            _mm_mask_storeu_epi8(
                out.as_mut_ptr().add(i).cast(),
                mask,
                _mm512_cvtepi32_epi8(q),
            )
        };
        i += 16;
    }
}
