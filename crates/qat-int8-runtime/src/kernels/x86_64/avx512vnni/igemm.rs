//! `avx512vnni_igemm_u8i8_6x64`: the indirect (implicit im2col) GEMM tile, which reads the
//! tap segments of each A row in place.

use std::arch::x86_64::*;

use super::gemm::{NR, k_group};
use super::tile_store::tile_epilogue;
use super::{Avx512Vnni, by_vectors};
use crate::kernels::frame::gemm::{IndirectArgs, IndirectBlock, IndirectTile, indirect_tile_loop};

impl IndirectTile for Avx512Vnni {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_indirect<const M: usize>(t: &IndirectArgs<'_, Self>) {
        // SAFETY: as documented by the trait; V·16 ≥ t.dst.cols.
        unsafe { by_vectors!(tile_indirect::<M>(t), t.dst.cols) }
    }
}

/// [`indirect_tile_loop`] compiled with the VNNI features (the `GemmKernel::INDIRECT` entry).
///
/// # Safety
/// As [`indirect_tile_loop`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn block_indirect(blk: &IndirectBlock<'_, Avx512Vnni>) {
    // SAFETY: as documented.
    unsafe { indirect_tile_loop::<Avx512Vnni>(blk) }
}

/// `avx512vnni_igemm_u8i8_6x64`: the indirect (implicit im2col) tile. Row `r`'s reduction runs
/// over `taps` segments of `seg` bytes read in place at `ptrs[r·taps + t]` (padding segments
/// point at a row of `Z1`), so no im2col copy is made. Only the first `V` vectors of 16 columns
/// are computed (a narrow layer's last panel: the columns past `16·V` are not stored).
///
/// # Safety
/// Every pointer in `t.ptrs` has `t.seg` readable bytes, `t.seg % 4 == 0`, `taps·seg == kp`;
/// `t.panel` one packed panel; `t.dst` valid for `M` rows × `cols` columns from `col0`;
/// `cols ≤ 16·V`, `1 ≤ V ≤ 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_indirect<const M: usize, const V: usize>(t: &IndirectArgs<'_, Avx512Vnni>) {
    const { assert!(V >= 1 && V <= 4) };
    let (ptrs, taps, seg) = (t.ptrs, t.taps, t.seg);
    let mut acc = [[_mm512_setzero_si512(); V]; M];
    // SAFETY: as documented.
    unsafe {
        let mut bg = t.panel;
        for tap in 0..taps {
            let rows: [*const u8; M] = std::array::from_fn(|r| *ptrs.get_unchecked(r * taps + tap));
            for gi in 0..seg / 4 {
                k_group(&mut acc, |r| rows[r].add(4 * gi), bg);
                bg = bg.add(NR * 4);
            }
        }
        tile_epilogue(acc, &t.dst);
    }
}
