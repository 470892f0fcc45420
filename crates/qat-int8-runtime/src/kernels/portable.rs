//! Portable micro-kernels: plain Rust that runs on any CPU and that the compiler vectorizes for
//! whatever SIMD the build target has.
//!
//! - GEMM: `MR × 64` int32 accumulators over k-major panels (`KG = 1`: one contiguous row of 64
//!   weights per `k`, the inner loop over columns), then the scalar output stage.
//! - Depthwise: one pixel at a time, channels innermost.
//! - Output stage: qat-core's scalar `Target::requantize` per element, so every target is fused.

use qat_core::target::Target;

use super::frame::depthwise::{DwOut, RowScratch};
use super::frame::gemm::{Block, TileArgs, TileDst, tile_loop};
use super::frame::{DepthwiseKernel, DepthwisePlan, GemmKernel, Isa, OutPtr, OutputStage};

/// The portable ISA (any CPU).
pub(crate) struct Portable;

impl Isa for Portable {
    fn is_supported_here() -> bool {
        true
    }
}

impl OutputStage for Portable {
    fn fuses(_: Target) -> bool {
        // The tiles call qat-core's scalar stage, whatever the target.
        true
    }
}

/// Columns per panel: four 16-lane vectors of int32 accumulators per row.
const NR: usize = 64;

impl GemmKernel for Portable {
    const MR: usize = 6;
    const NR: usize = NR;
    const KG: usize = 1;
    type W = i8;
    type A = u8;

    #[inline]
    unsafe fn tile<const M: usize>(t: &TileArgs<'_, Self>) {
        let (a, lda, panel, kp) = (t.a, t.lda, t.panel, t.kp);
        let TileDst { e, col0, cols, out } = t.dst;
        // SAFETY: the panel holds kp·NR weights (caller).
        let panel = unsafe { std::slice::from_raw_parts(panel, kp * NR) };
        let mut acc = [[0i32; NR]; M];
        for kk in 0..kp {
            let bk: &[i8; NR] = panel[kk * NR..(kk + 1) * NR]
                .try_into()
                .unwrap_or_else(|_| unreachable!("panel rows hold NR bytes"));
            for (r, accr) in acc.iter_mut().enumerate() {
                // SAFETY: M rows × lda bytes readable, lda ≥ kp (caller).
                let av = unsafe { *a.add(r * lda + kk) } as i32;
                for (acc_c, &w) in accr.iter_mut().zip(bk) {
                    *acc_c = acc_c.wrapping_add(av * w as i32);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (c, &v) in accr.iter().enumerate().take(cols) {
                let col = col0 + c;
                // SAFETY: (r, col) is inside the output tile (caller).
                unsafe {
                    match out {
                        OutPtr::U8(o, ld) => *o.add(r * ld + col) = e.scalar(v, col),
                        OutPtr::I32(o, ld) => *o.add(r * ld + col) = v.wrapping_add(e.bias[col]),
                    }
                }
            }
        }
    }

    unsafe fn block(blk: &Block<'_, Self>) {
        // SAFETY: as documented (no target features to enable).
        unsafe { tile_loop::<Self>(blk) }
    }
}

impl DepthwiseKernel for Portable {
    type Layout = ();

    unsafe fn pixel(
        taps: &[*const u8],
        plan: &DepthwisePlan,
        _: &(),
        s: &mut RowScratch,
        out: DwOut<'_>,
    ) {
        let (c, cp) = (plan.c, plan.cp);
        let acc = &mut s.acc;
        acc.clear();
        acc.resize(c, 0);
        for (t, &p) in taps.iter().enumerate() {
            // SAFETY: every tap row has ≥ c readable bytes (caller).
            let x = unsafe { std::slice::from_raw_parts(p, c) };
            let wt = &plan.w[t * cp..t * cp + c];
            for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(wt) {
                *a = a.wrapping_add(xv as i32 * wv);
            }
        }
        match out {
            DwOut::U8(o) => {
                for (ch, (o, &a)) in o.iter_mut().zip(acc.iter()).enumerate() {
                    *o = plan.epi.scalar(a, ch);
                }
            }
            DwOut::I32(o) => {
                for ((o, &a), &b) in o.iter_mut().zip(acc.iter()).zip(&plan.epi.bias) {
                    *o = a.wrapping_add(b);
                }
            }
        }
    }
}
