//! The store of an AVX-512 GEMM tile (`tile_epilogue`), which the direct and the indirect tile
//! share: `+ bias'`, the output stage of [`requant`](super::requant) (the single-shift stage when
//! the layer admits it), the store (masked past the tile's columns).

use std::arch::x86_64::*;

use super::byte_mask;
use super::requant::{
    RqFused16, Stage16, requantize16_fused, requantize16_no_tie, stage16, variant,
};
use crate::kernels::frame::epilogue::SingleShift;
use crate::kernels::frame::gemm::TileDst;
use crate::kernels::frame::{Epilogue, OutPtr};

/// Epilogue for 16 accumulators of columns `col..col + 16` (bias already added): writes the
/// `valid` first lanes as u8 (requantized with `rq`) or int32.
///
/// # Safety
/// The destination row has ≥ `valid` writable elements at `out_col`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn store16<const SLOW: bool, const SINGLE: bool>(
    v: __m512i,
    rq: &Stage16,
    e: &Epilogue,
    valid: usize,
    out: OutPtr,
    row: usize,
    out_col: usize,
) {
    let mask = ((1u32 << valid) - 1) as u16;
    // SAFETY: writes limited to `valid` elements (caller).
    unsafe {
        match out {
            OutPtr::I32(p, ld) => {
                _mm512_mask_storeu_epi32(p.add(row * ld + out_col).cast(), mask, v)
            }
            OutPtr::U8(p, ld) => {
                let q = stage16::<SLOW, SINGLE>(
                    v,
                    rq,
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

/// The fused output stage of an `M × 16V` tile: `+ bias'`, requantize in the epilogue's
/// [`Rounding`](qat_core::fixed_point::Rounding), store (masked past `cols`). The tile passes only the `V` vectors per row it
/// computed (a call that is not inlined copies them through memory).
///
/// # Safety
/// `d.out` valid for `M` rows × `d.cols` columns from `d.col0`, `d.cols ≤ 16·V`; `d.e` padded to
/// whole panels.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile_epilogue<const M: usize, const V: usize>(
    acc: [[__m512i; V]; M],
    d: &TileDst<'_>,
) {
    let TileDst { e, col0, cols, out } = *d;
    // SAFETY: as documented.
    unsafe {
        if let (Some(ss), OutPtr::U8(p, ld)) = (&e.single_shift, out) {
            return if ss.folded {
                tile_epilogue_single_shift::<M, V, true>(acc, e, ss, col0, cols, p, ld)
            } else {
                tile_epilogue_single_shift::<M, V, false>(acc, e, ss, col0, cols, p, ld)
            };
        }
        match variant(e, matches!(out, OutPtr::U8(..))) {
            (false, false) => tile_epilogue_in::<M, V, false, false>(acc, d),
            (true, false) => tile_epilogue_in::<M, V, true, false>(acc, d),
            (false, true) => tile_epilogue_in::<M, V, false, true>(acc, d),
            (true, true) => tile_epilogue_in::<M, V, true, true>(acc, d),
        }
    }
}

/// [`tile_epilogue`] for one output-stage variant (see [`stage16`]).
///
/// # Safety
/// As [`tile_epilogue`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_epilogue_in<const M: usize, const V: usize, const SLOW: bool, const SINGLE: bool>(
    acc: [[__m512i; V]; M],
    d: &TileDst<'_>,
) {
    let TileDst { e, col0, cols, out } = *d;
    // SAFETY: as documented.
    unsafe {
        for j in 0..V {
            if 16 * j >= cols {
                break;
            }
            let col = col0 + 16 * j;
            let valid = (cols - 16 * j).min(16);
            let bias = _mm512_loadu_si512(e.bias.as_ptr().add(col).cast());
            let rq = Stage16::load_at::<SINGLE>(&e.m0, &e.left, &e.right, col);
            for (r, accr) in acc.iter().enumerate() {
                let v = _mm512_add_epi32(accr[j], bias);
                store16::<SLOW, SINGLE>(v, &rq, e, valid, out, r, col);
            }
        }
    }
}

/// The single-shift stage of 16 columns: `acc + bias'` through [`requantize16_fused`], or, when
/// `FOLDED` (`bias'` folded into the constants, no tie possible), the bare accumulators through
/// [`requantize16_no_tie`].
#[inline(always)]
fn single_shift16<const FOLDED: bool>(acc: __m512i, bias: __m512i, f: &RqFused16) -> __m512i {
    // SAFETY: only inlined into this file's AVX-512 functions (their target features hold).
    unsafe {
        if FOLDED {
            requantize16_no_tie(acc, f)
        } else {
            requantize16_fused(_mm512_add_epi32(acc, bias), f)
        }
    }
}

/// [`tile_epilogue`] through the single-shift stage ([`requantize16_fused`], `Z3` folded in;
/// [`requantize16_no_tie`] with `bias'` folded in too when `FOLDED`) and the clamp, for u8
/// output at `p` (row stride `ld`).
///
/// Three or four vectors per row, or a tile whose rows lie back to back (`16·V` columns, all of
/// the layer's, at row stride `16·V`), narrow four vectors into each 64-byte store
/// ([`narrow64`]): back to back, the tile's `M·V` vectors in memory order, four at a time from
/// column `col0` of the first row, the last store masked to what remains (a 16- or 32-channel
/// layer stores four or two rows at once); otherwise one row per store (the fourth vector of a
/// three-vector tile repeats the third and is not stored). Other tiles store each vector of 16
/// lanes on its own.
///
/// # Safety
/// As [`tile_epilogue`]; `ss` derived from `e` ([`fused_ok`](super::requant::fused_ok) holds for every real column);
/// `FOLDED == ss.folded`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_epilogue_single_shift<const M: usize, const V: usize, const FOLDED: bool>(
    acc: [[__m512i; V]; M],
    e: &Epilogue,
    ss: &SingleShift,
    col0: usize,
    cols: usize,
    p: *mut u8,
    ld: usize,
) {
    // SAFETY: as documented; the constant arrays cover every padded column (whole panels).
    unsafe {
        let back_to_back = cols == 16 * V && ld == cols;
        let narrowed = back_to_back || (V > 2 && cols > 32);
        if !narrowed {
            let (lo, hi) = (_mm512_set1_epi32(e.lo), _mm512_set1_epi32(e.hi));
            for j in 0..V {
                if 16 * j >= cols {
                    break;
                }
                let col = col0 + 16 * j;
                let mask = ((1u32 << (cols - 16 * j).min(16)) - 1) as u16;
                let bias = _mm512_loadu_si512(e.bias.as_ptr().add(col).cast());
                let f = RqFused16::load_at(&e.m0, &ss.c, col, e.rounding);
                for (r, accr) in acc.iter().enumerate() {
                    let q = single_shift16::<FOLDED>(accr[j], bias, &f);
                    let q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                    _mm_mask_storeu_epi8(p.add(r * ld + col).cast(), mask, _mm512_cvtepi32_epi8(q));
                }
            }
            return;
        }
        let f: [RqFused16; V] =
            std::array::from_fn(|j| RqFused16::load_at(&e.m0, &ss.c, col0 + 16 * j, e.rounding));
        let bias: [__m512i; V] =
            std::array::from_fn(|j| _mm512_loadu_si512(e.bias.as_ptr().add(col0 + 16 * j).cast()));
        // No closures here: a closure called through `array::from_fn` may stay out of line (a
        // call per 16 lanes, the accumulators through memory).
        let mut q = [_mm512_setzero_si512(); 4];
        if back_to_back {
            let (total, p) = (M * V, p.add(col0));
            for g in (0..total).step_by(4) {
                for (i, qi) in q.iter_mut().enumerate() {
                    // Past the last vector (a partial group) any vector will do: not stored.
                    let k = (g + i).min(total - 1);
                    let (r, j) = (k / V, k % V);
                    *qi = single_shift16::<FOLDED>(acc[r][j], bias[j], &f[j]);
                }
                let mask = byte_mask(16 * (total - g));
                _mm512_mask_storeu_epi8(p.add(16 * g).cast(), mask, narrow64(q, e));
            }
        } else {
            let mask = byte_mask(cols);
            for (r, accr) in acc.iter().enumerate() {
                for (j, qj) in q.iter_mut().enumerate() {
                    let j = j.min(V - 1);
                    *qj = single_shift16::<FOLDED>(accr[j], bias[j], &f[j]);
                }
                _mm512_mask_storeu_epi8(p.add(r * ld + col0).cast(), mask, narrow64(q, e));
            }
        }
    }
}

/// Four vectors of 16 int32 stage outputs as 64 bytes in their order, clamped to
/// `[lo, hi]`: narrowed by saturating packs (exact: the clamp to `[lo, hi] ⊆ [0, 255]` that
/// follows gives what clamping first gives) and put back in order by one dword permute.
#[inline(always)]
fn narrow64(q: [__m512i; 4], e: &Epilogue) -> __m512i {
    // SAFETY: only inlined into this file's AVX-512 functions (their target features hold).
    unsafe {
        // After the packs, 128-bit lane j holds dword k = elements 16k + 4j .. 16k + 4j + 3:
        // dword 4j + k goes to 4k + j.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let (lo, hi) = (_mm512_set1_epi8(e.lo as i8), _mm512_set1_epi8(e.hi as i8));
        let v = _mm512_packus_epi16(
            _mm512_packs_epi32(q[0], q[1]),
            _mm512_packs_epi32(q[2], q[3]),
        );
        let v = _mm512_permutexvar_epi32(order, v);
        _mm512_min_epu8(_mm512_max_epu8(v, lo), hi)
    }
}
