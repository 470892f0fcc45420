//! `avx2_depthwise_u8i8_8c`: the AVX2 depthwise pixel kernel.

use std::arch::x86_64::*;

use super::Avx2;
use super::requant::store8;
use crate::kernels::frame::depthwise::{DwOut, RowScratch};
use crate::kernels::frame::{DepthwiseKernel, DepthwisePlan, Epilogue, OutPtr};

impl DepthwiseKernel for Avx2 {
    type Layout = ();

    unsafe fn pixel(
        taps: &[*const u8],
        plan: &DepthwisePlan,
        _: &(),
        _: &mut RowScratch,
        out: DwOut<'_>,
    ) {
        let (o8, o32) = match out {
            DwOut::U8(o) => (Some(o), None),
            DwOut::I32(o) => (None, Some(o)),
        };
        // SAFETY: as documented by the trait.
        unsafe { depthwise_pixel(taps, &plan.w, plan.cp, plan.c, &plan.epi, o8, o32) }
    }
}

/// `avx2_depthwise_u8i8_8c`: one output pixel; 8 channels at a time with `vpmaddwd` on
/// zero-extended activations (exact `x·w` per lane), remaining `c mod 8` channels scalar.
///
/// # Safety
/// CPU supports AVX2; every tap row has `c` readable bytes; `w` is `[taps][cp]`; `e` has `cp`
/// entries.
#[target_feature(enable = "avx2")]
unsafe fn depthwise_pixel(
    taps: &[*const u8],
    w: &[i32],
    cp: usize,
    c: usize,
    e: &Epilogue,
    mut o8: Option<&mut [u8]>,
    mut o32: Option<&mut [i32]>,
) {
    let full = c / 8 * 8;
    // SAFETY: loads read 8 channels < full ≤ c of each tap row; w covers cp per tap.
    unsafe {
        let mut c0 = 0;
        while c0 < full {
            let mut acc = _mm256_setzero_si256();
            for (t, &p) in taps.iter().enumerate() {
                let x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(c0).cast()));
                let wv = _mm256_loadu_si256(w.as_ptr().add(t * cp + c0).cast());
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, wv));
            }
            if let Some(o) = o8.as_deref_mut() {
                store8(acc, e, c0, 8, OutPtr::U8(o.as_mut_ptr(), 0), 0);
            }
            if let Some(o) = o32.as_deref_mut() {
                store8(acc, e, c0, 8, OutPtr::I32(o.as_mut_ptr(), 0), 0);
            }
            c0 += 8;
        }
        for ch in full..c {
            let acc = taps.iter().enumerate().fold(0i32, |s, (t, &p)| {
                s.wrapping_add(*p.add(ch) as i32 * w[t * cp + ch])
            });
            if let Some(o) = o8.as_deref_mut() {
                o[ch] = e.scalar(acc, ch);
            }
            if let Some(o) = o32.as_deref_mut() {
                o[ch] = acc.wrapping_add(e.bias[ch]);
            }
        }
    }
}
