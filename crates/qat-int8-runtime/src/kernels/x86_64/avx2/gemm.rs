//! `avx2_gemm_u8i8_6x16`: the AVX2 GEMM tile on int16-widened operands (`vpmaddwd`: two int16
//! products summed into each int32 lane — no `vpmaddubsw` int16 saturation, 255·127·2 > 2^15).
//!
//! Packing: panels of 16 columns; for each pair of `k`, 16 × 2 int16 (the operand layout of
//! `vpmaddwd`); A rows are widened to int16 once per task by the frame.

use std::arch::x86_64::*;

use super::Avx2;
use super::requant::store8;
use crate::kernels::frame::GemmKernel;
use crate::kernels::frame::gemm::{Block, TileArgs, TileDst, tile_loop};

/// Columns per panel: two ymm registers of 8 int32.
const NR: usize = 16;

impl GemmKernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = NR;
    const KG: usize = 2;
    type W = i16;
    type A = i16;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const M: usize>(t: &TileArgs<'_, Self>) {
        // SAFETY: as documented by the trait.
        unsafe { tile::<M>(t) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn block(blk: &Block<'_, Self>) {
        // SAFETY: as documented by the trait; AVX2 enabled here, so the tiles inline.
        unsafe { tile_loop::<Self>(blk) }
    }
}

/// `avx2_gemm_u8i8_6x16` on int16 operands: an `M × 16` tile (`M ≤ 6`).
///
/// # Safety
/// `t.a`: `M` rows of `t.kp` int16 at stride `t.lda`; `t.panel`: one packed i16 panel; `t.dst`
/// valid for `M` rows × `cols` columns from `col0`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile<const M: usize>(t: &TileArgs<'_, Avx2>) {
    let (kp, a, lda, b) = (t.kp, t.a, t.lda, t.panel);
    let TileDst { e, col0, cols, out } = t.dst;
    let mut acc = [[_mm256_setzero_si256(); 2]; M];
    // SAFETY: reads stay within the A rows and the panel (caller).
    unsafe {
        for p in 0..kp / 2 {
            let bp = b.add(p * NR * 2);
            let b0 = _mm256_loadu_si256(bp.cast());
            let b1 = _mm256_loadu_si256(bp.add(16).cast());
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(a.add(r * lda + 2 * p).cast::<i32>().read_unaligned());
                accr[0] = _mm256_add_epi32(accr[0], _mm256_madd_epi16(av, b0));
                accr[1] = _mm256_add_epi32(accr[1], _mm256_madd_epi16(av, b1));
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (j, &v) in accr.iter().enumerate() {
                if 8 * j >= cols {
                    break;
                }
                store8(v, e, col0 + 8 * j, (cols - 8 * j).min(8), out, r);
            }
        }
    }
}
