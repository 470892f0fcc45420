//! AVX-512 VNNI kernels: `avx512vnni_gemm_u8i8_6x64` (`vpdpbusd`: four u8×i8 products summed
//! into each int32 lane) with the requantization fused in the epilogue, and the vectorized
//! fixed-point requantization shared with the depthwise kernel.

use std::arch::x86_64::*;

use crate::kernels::gemm::{Epilogue, MR, NR, OutPtr, PackedB};

/// gemmlowp's `MultiplyByQuantizedMultiplier` + `Z3` + clamp on 16 int32 lanes, bit-exact with
/// [`qat_core::fixed_point::requantize`]:
/// 1. `x·2^left` saturating (overflow detected by shifting back);
/// 2. SRDHM: `(x·M0 + 2^30) >> 31` in 64-bit lanes — for `M0 ≥ 0` this equals gemmlowp's
///    sign-dependent nudge with truncating division, and `M0 ≠ i32::MIN` so it never saturates;
/// 3. rounding divide by `2^right`: `(x >> e) + ((x & mask) > (mask >> 1) + (x < 0))`;
/// 4. `+ Z3`, clamp to `[lo, hi]`.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16(
    x: __m512i,
    m0: __m512i,
    left: __m512i,
    right: __m512i,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let one = _mm512_set1_epi32(1);
    let shifted = _mm512_sllv_epi32(x, left);
    let overflow = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(shifted, left), x);
    let negative = _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
    let sat = _mm512_mask_blend_epi32(
        negative,
        _mm512_set1_epi32(i32::MAX),
        _mm512_set1_epi32(i32::MIN),
    );
    let x = _mm512_mask_blend_epi32(overflow, shifted, sat);
    let nudge = _mm512_set1_epi64(1 << 30);
    let even = _mm512_srli_epi64::<31>(_mm512_add_epi64(_mm512_mul_epi32(x, m0), nudge));
    let odd = _mm512_slli_epi64::<1>(_mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), _mm512_srli_epi64::<32>(m0)),
        nudge,
    ));
    let high = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    let mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
    let rem = _mm512_and_si512(high, mask);
    let threshold = _mm512_add_epi32(_mm512_srli_epi32::<1>(mask), _mm512_srli_epi32::<31>(high));
    let q = _mm512_srav_epi32(high, right);
    let q = _mm512_mask_add_epi32(q, _mm512_cmpgt_epi32_mask(rem, threshold), q, one);
    _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zp), lo), hi)
}

/// Epilogue for 16 accumulators of columns `col..col + 16`: adds the corrected bias, then
/// writes the `valid` first lanes as u8 (requantized) or int32.
///
/// # Safety
/// `e`'s arrays hold ≥ `col + 16` entries; `dst` row has ≥ `valid` writable elements.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store16(
    acc: __m512i,
    e: &Epilogue,
    col: usize,
    valid: usize,
    out: OutPtr,
    row: usize,
    out_col: usize,
) {
    let mask = ((1u32 << valid) - 1) as u16;
    // SAFETY: the epilogue arrays are padded to whole panels (≥ col + 16).
    unsafe {
        let v = _mm512_add_epi32(acc, _mm512_loadu_si512(e.bias.as_ptr().add(col).cast()));
        match out {
            OutPtr::I32(p, ld) => {
                _mm512_mask_storeu_epi32(p.add(row * ld + out_col).cast(), mask, v)
            }
            OutPtr::U8(p, ld) => {
                let q = requantize16(
                    v,
                    _mm512_loadu_si512(e.m0.as_ptr().add(col).cast()),
                    _mm512_loadu_si512(e.left.as_ptr().add(col).cast()),
                    _mm512_loadu_si512(e.right.as_ptr().add(col).cast()),
                    _mm512_set1_epi32(e.zp),
                    _mm512_set1_epi32(e.lo),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(
                    p.add(row * ld + out_col).cast(),
                    mask,
                    _mm512_cvtepi32_epi8(q),
                );
            }
        }
    }
}

/// `avx512vnni_gemm_u8i8_6x64`: an `M × 64` tile (`M ≤ 6`) over the whole reduction.
///
/// # Safety
/// `a`: `M` rows of `kp` readable bytes at stride `lda`; `b`: one packed panel; `out` valid for
/// `M` rows × `cols` columns from `col0`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize>(
    kp: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    e: &Epilogue,
    col0: usize,
    cols: usize,
    out: OutPtr,
) {
    let mut acc = [[_mm512_setzero_si512(); 4]; M];
    // SAFETY: reads stay within the A rows and the panel (caller).
    unsafe {
        for g in 0..kp / 4 {
            let bg = b.add(g * NR * 4);
            let b0 = _mm512_loadu_si512(bg.cast());
            let b1 = _mm512_loadu_si512(bg.add(64).cast());
            let b2 = _mm512_loadu_si512(bg.add(128).cast());
            let b3 = _mm512_loadu_si512(bg.add(192).cast());
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(a.add(r * lda + 4 * g).cast::<i32>().read_unaligned());
                accr[0] = _mm512_dpbusd_epi32(accr[0], av, b0);
                accr[1] = _mm512_dpbusd_epi32(accr[1], av, b1);
                accr[2] = _mm512_dpbusd_epi32(accr[2], av, b2);
                accr[3] = _mm512_dpbusd_epi32(accr[3], av, b3);
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (j, &v) in accr.iter().enumerate() {
                if 16 * j >= cols {
                    break;
                }
                store16(
                    v,
                    e,
                    col0 + 16 * j,
                    (cols - 16 * j).min(16),
                    out,
                    r,
                    col0 + 16 * j,
                );
            }
        }
    }
}

/// Rows `0..rows` of an A block against panels `p0..p1`.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `a` holds `rows` rows of `b.kp` bytes at stride `lda`; `out`
/// is valid for `rows` rows × `b.n` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_block(
    b: &PackedB,
    panels: &[i8],
    a: *const u8,
    lda: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
) {
    let mut r0 = 0;
    while r0 < rows {
        let mr = MR.min(rows - r0);
        // SAFETY: offsets stay inside the block (caller).
        unsafe {
            let ar = a.add(r0 * lda);
            let o = out.offset(r0, 0);
            for p in p0..p1 {
                let bp = panels.as_ptr().add(p * b.kp * NR);
                let (col0, cols) = (p * NR, NR.min(b.n - p * NR));
                match mr {
                    6 => tile::<6>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    5 => tile::<5>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    4 => tile::<4>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    3 => tile::<3>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    2 => tile::<2>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    _ => tile::<1>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                }
            }
        }
        r0 += MR;
    }
}

/// `avx512vnni_depthwise_u8i8_64c`: one output pixel, channels `c0..c0 + 16·V` (masked past
/// `c`): `acc += zext(x_t) · w_t` with `vpdpwssd` (the high int16 of each zero-extended
/// activation lane is 0, so the pair sum is exactly `x·w`).
///
/// # Safety
/// Every tap row and `w` cover the channels read; `o8` / `o32` hold `c` elements.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_block<const V: usize>(
    taps: &[*const u8],
    w: &[i32],
    cp: usize,
    c0: usize,
    c: usize,
    e: &Epilogue,
    o8: Option<*mut u8>,
    o32: Option<*mut i32>,
) {
    let mut masks = [0u16; V];
    let mut valid = [0usize; V];
    for v in 0..V {
        valid[v] = c.saturating_sub(c0 + 16 * v).min(16);
        masks[v] = ((1u32 << valid[v]) - 1) as u16;
    }
    let mut acc = [_mm512_setzero_si512(); V];
    // SAFETY: masked loads touch only channels < c of each tap row; w has cp ≥ c0 + 64 per tap.
    unsafe {
        for (t, &p) in taps.iter().enumerate() {
            let wt = w.as_ptr().add(t * cp + c0);
            for v in 0..V {
                let x =
                    _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(masks[v], p.add(c0 + 16 * v).cast()));
                acc[v] = _mm512_dpwssd_epi32(acc[v], x, _mm512_loadu_si512(wt.add(16 * v).cast()));
            }
        }
        for v in 0..V {
            if valid[v] == 0 {
                break;
            }
            let col = c0 + 16 * v;
            if let Some(p) = o8 {
                store16(acc[v], e, col, valid[v], OutPtr::U8(p, 0), 0, col);
            }
            if let Some(p) = o32 {
                store16(acc[v], e, col, valid[v], OutPtr::I32(p, 0), 0, col);
            }
        }
    }
}

/// One depthwise output pixel over all `c` channels (see `depthwise_block`).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; every tap row has `c` readable bytes; `w` is `[taps][cp]`,
/// `cp` a multiple of 64; `e` has `cp` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn depthwise_pixel(
    taps: &[*const u8],
    w: &[i32],
    cp: usize,
    c: usize,
    e: &Epilogue,
    o8: Option<&mut [u8]>,
    o32: Option<&mut [i32]>,
) {
    let o8 = o8.map(|o| o.as_mut_ptr());
    let o32 = o32.map(|o| o.as_mut_ptr());
    let mut c0 = 0;
    while c0 < c {
        // SAFETY: as documented for this function.
        unsafe {
            match (c - c0).div_ceil(16) {
                1 => depthwise_block::<1>(taps, w, cp, c0, c, e, o8, o32),
                2 => depthwise_block::<2>(taps, w, cp, c0, c, e, o8, o32),
                3 => depthwise_block::<3>(taps, w, cp, c0, c, e, o8, o32),
                _ => depthwise_block::<4>(taps, w, cp, c0, c, e, o8, o32),
            }
        }
        c0 += 64;
    }
}
