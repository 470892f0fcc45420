//! `avx512vnni_gemm_u8i8_6x64`: the AVX-512 VNNI GEMM tile (`vpdpbusd`: four u8×i8 products
//! summed into each int32 lane; 24 zmm accumulators, A broadcast 4 bytes at a time) with the
//! requantization fused in the epilogue.
//!
//! Packing: panels of 64 columns; inside a panel, for each group of four `k`, 64 × 4 bytes
//! `[n][k mod 4]` (the operand layout of `vpdpbusd`); A rows are read in place.

use std::arch::x86_64::*;

use super::igemm::block_indirect;
use super::tile_store::tile_epilogue;
use super::{Avx512Vnni, by_vectors};
use crate::kernels::frame::GemmKernel;
use crate::kernels::frame::gemm::{Block, IndirectBlock, TileArgs, tile_loop};

/// Columns per panel: four zmm registers of 16 int32.
pub(super) const NR: usize = 64;

impl GemmKernel for Avx512Vnni {
    const MR: usize = 6;
    const NR: usize = NR;
    const KG: usize = 4;
    type W = i8;
    type A = u8;
    const INDIRECT: Option<unsafe fn(&IndirectBlock<'_, Self>)> = Some(block_indirect);

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const M: usize>(t: &TileArgs<'_, Self>) {
        // SAFETY: as documented by the trait; V·16 ≥ t.dst.cols.
        unsafe { by_vectors!(tile::<M>(t), t.dst.cols) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block(blk: &Block<'_, Self>) {
        // SAFETY: as documented by the trait; the features are enabled here, so tiles inline.
        unsafe { tile_loop::<Self>(blk) }
    }
}

/// `avx512vnni_gemm_u8i8_6x64`: an `M × 64` tile (`M ≤ 6`) over the whole reduction, of which
/// only the first `V` vectors of 16 columns are computed (a narrow layer's last panel: the
/// columns past `16·V` are not stored).
///
/// # Safety
/// `t.a`: `M` rows of `t.kp` readable bytes at stride `t.lda`; `t.panel`: one packed panel;
/// `t.dst` valid for `M` rows × `cols` columns from `col0`; `cols ≤ 16·V`, `1 ≤ V ≤ 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const M: usize, const V: usize>(t: &TileArgs<'_, Avx512Vnni>) {
    const { assert!(V >= 1 && V <= 4) };
    let (a, lda, b) = (t.a, t.lda, t.panel);
    let mut acc = [[_mm512_setzero_si512(); V]; M];
    // SAFETY: reads stay within the A rows and the panel (caller).
    unsafe {
        for g in 0..t.kp / 4 {
            k_group(&mut acc, |r| a.add(r * lda + 4 * g), b.add(g * NR * 4));
        }
        tile_epilogue(acc, &t.dst);
    }
}

/// One group of four `k` for an `M × 16V` tile: `acc[r][j] += A[r][4 bytes] · B[group][j]`, the
/// four A bytes of row `r` read at `row(r)` and broadcast, the `V` weight vectors of the group at
/// `bg` (the direct and the indirect tile share it). Always inlined, without target features of
/// its own: it compiles as part of the AVX-512 VNNI tile calling it.
///
/// # Safety
/// CPU supports avx512f/vnni; `row(r)` has 4 readable bytes for `r < M`; `bg` has `64·V`.
#[inline(always)]
pub(super) unsafe fn k_group<const M: usize, const V: usize>(
    acc: &mut [[__m512i; V]; M],
    row: impl Fn(usize) -> *const u8,
    bg: *const i8,
) {
    // SAFETY: as documented.
    unsafe {
        let mut bv = [_mm512_setzero_si512(); 4];
        for (j, bj) in bv.iter_mut().enumerate().take(V) {
            *bj = _mm512_loadu_si512(bg.add(64 * j).cast());
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(row(r).cast::<i32>().read_unaligned());
            for j in 0..V {
                accr[j] = _mm512_dpbusd_epi32(accr[j], av, bv[j]);
            }
        }
    }
}
