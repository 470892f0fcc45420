//! `avx512vnni_depthwise_u8i8_64c_fused` and its partial-block form: the depthwise kernels with
//! the single-shift output stage (`requantize16_fused`), used for a whole output row when every
//! channel's multiplier is below 1; 9-tap layers go to the tap-interleaved kernels of
//! [`super::depthwise_taps`] and [`super::depthwise_packed`].

use std::arch::x86_64::*;

use super::byte_mask;
use super::depthwise::DepthwiseVnniLayout;
use super::depthwise_packed::{depthwise_taps_packed, pixels_per_vector};
use super::depthwise_taps::{TAPS, column_shift, depthwise_taps_fused};
use super::requant::{RqFused16, single_shift_stage};
use crate::kernels::frame::Epilogue;

/// The pixels of one fused depthwise call: `npix = [n, rows]` runs of `n` output pixels (tap `t`
/// of pixel `p` of run `r` at `base + r·step[1] + p·step[0] + offs[t]`, output at
/// `o8 + (r·n + p)·C`; `n` may be 0) and the listed pixels (`taps` tap-row pointers each in
/// `list`, padding taps pointing at a `Z1` row; outputs at `list_out`).
#[derive(Clone, Copy)]
pub(super) struct Pixels<'a> {
    pub(super) base: *const u8,
    pub(super) step: [usize; 2],
    pub(super) npix: [usize; 2],
    pub(super) offs: &'a [usize],
    pub(super) list: &'a [*const u8],
    pub(super) list_out: &'a [*mut u8],
    pub(super) o8: *mut u8,
}

/// [`Pixels`]' fields as `(base, step, npix, offs, list, list_out, o8)`.
type PixelParts<'a> = (
    *const u8,
    [usize; 2],
    [usize; 2],
    &'a [usize],
    &'a [*const u8],
    &'a [*mut u8],
    *mut u8,
);

impl<'a> Pixels<'a> {
    /// The fields as a tuple, for a kernel's locals.
    #[inline(always)]
    pub(super) fn parts(&self) -> PixelParts<'a> {
        let p = *self;
        (p.base, p.step, p.npix, p.offs, p.list, p.list_out, p.o8)
    }
}

/// `avx512vnni_depthwise_u8i8_64c_fused`: `npix = [n, rows]` runs of `n` output pixels (pixel
/// `p` of run `r`: tap `t` at `base + r·step[1] + p·step[0] + offs[t]`, output at
/// `o8 + (r·n + p)·c`) and the pixels whose tap rows are listed
/// (`list`: `taps` pointers per pixel, output at `list_out`), channels `c0..c0 + valid` of one 64-channel block, u8 output
/// through the single-shift output stage ([`requantize16_fused`](super::requant::requantize16_fused); [`requantize16_no_tie`](super::requant::requantize16_no_tie) when
/// `NT`, i.e. `l.no_tie`) and saturating packs. `P` pixels per step share the weight loads; `T`
/// taps known at compile time (0: `l.taps`).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`; every tap row has `c0 + valid` readable bytes;
/// `o8` holds `rows·n` pixels of `c` channels; each `list_out` pointer one pixel.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn depthwise_block_fused<const T: usize, const NT: bool>(
    px: &Pixels<'_>,
    l: &DepthwiseVnniLayout,
    c: usize,
    c0: usize,
    valid: usize,
    e: &Epilogue,
) {
    let (base, step, npix, offs, list, list_out, o8) = px.parts();
    const P: usize = 3;
    let mask = byte_mask(valid);
    let blk = c0 / 64;
    let taps = if T == 0 { l.taps } else { T };
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let f: [RqFused16; 4] = std::array::from_fn(|b| {
            RqFused16::load_at(&l.m0, &l.fused_c, blk * 64 + b * 16, e.rounding)
        });
        let bias: [__m512i; 4] = std::array::from_fn(|b| {
            _mm512_loadu_si512(l.bias.as_ptr().add(blk * 64 + b * 16).cast())
        });
        // Saturating packs: per 128-bit lane j, byte 4k + i holds vector k's lane 4j + i, i.e.
        // channel 16j + 4i + k; the in-lane byte shuffle puts channel 16j + d at byte d.
        let order = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
        ));
        let (lo, hi) = (_mm512_set1_epi8(e.lo as i8), _mm512_set1_epi8(e.hi as i8));
        let wb = l.w.as_ptr().add(blk * l.taps * 256);
        let full = valid >= 64;
        let load = |p: *const u8| {
            if full {
                _mm512_loadu_si512(p.cast())
            } else {
                _mm512_maskz_loadu_epi8(mask, p.cast())
            }
        };
        let finish = |accp: &[__m512i; 4], dst: *mut u8| {
            let q = |b: usize| single_shift_stage::<NT>(accp[b], &f[b]);
            let r = _mm512_packus_epi16(
                _mm512_packs_epi32(q(0), q(1)),
                _mm512_packs_epi32(q(2), q(3)),
            );
            let r = _mm512_min_epu8(_mm512_max_epu8(_mm512_shuffle_epi8(r, order), lo), hi);
            _mm512_mask_storeu_epi8(dst.cast(), mask, r);
        };
        for (tp, &dst) in list.chunks_exact(taps).zip(list_out) {
            let mut acc = bias;
            for (t, &row) in tp.iter().enumerate() {
                let wt = wb.add(t * 256);
                let x = load(row.add(c0));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, x, _mm512_loadu_si512(wt.add(b * 64).cast()));
                }
            }
            finish(&acc, dst.add(c0));
        }
        let (step, rstep, rows, npix) = (step[0], step[1], npix[1], npix[0]);
        for r in 0..rows {
            let (base, o8) = (base.add(r * rstep), o8.add(r * npix * c));
            let mut p = 0;
            while p + P <= npix {
                let mut acc = [bias; P];
                let px = base.add(p * step + c0);
                for t in 0..taps {
                    let wt = wb.add(t * 256);
                    let w: [__m512i; 4] =
                        std::array::from_fn(|b| _mm512_loadu_si512(wt.add(b * 64).cast()));
                    let row = px.add(*offs.get_unchecked(t));
                    for (q, accq) in acc.iter_mut().enumerate() {
                        let x = load(row.add(q * step));
                        for (a, &wv) in accq.iter_mut().zip(&w) {
                            *a = _mm512_dpbusd_epi32(*a, x, wv);
                        }
                    }
                }
                for (q, accq) in acc.iter().enumerate() {
                    finish(accq, o8.add((p + q) * c + c0));
                }
                p += P;
            }
            while p < npix {
                let mut acc = bias;
                let px = base.add(p * step + c0);
                for t in 0..taps {
                    let wt = wb.add(t * 256);
                    let x = load(px.add(*offs.get_unchecked(t)));
                    for (b, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_dpbusd_epi32(*a, x, _mm512_loadu_si512(wt.add(b * 64).cast()));
                    }
                }
                finish(&acc, o8.add(p * c + c0));
                p += 1;
            }
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c_fused`: `depthwise_narrow`'s partial block (`V` vectors of
/// 16 channels in natural order, `vpdpwssd` on zero-extended activations) over the runs of
/// pixels and the listed pixels (as [`depthwise_block_fused`]), u8 output through
/// [`requantize16_fused`](super::requant::requantize16_fused), constants loaded once per run.
///
/// # Safety
/// As [`depthwise_block_fused`], with `valid ≤ 16·V`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn depthwise_narrow_fused<const V: usize, const NT: bool>(
    px: &Pixels<'_>,
    l: &DepthwiseVnniLayout,
    c: usize,
    c0: usize,
    valid: usize,
    e: &Epilogue,
) {
    let (base, step, npix, offs, list, list_out, o8) = px.parts();
    // SAFETY: as documented; masked loads/stores touch only the `valid` channels.
    unsafe {
        let masks: [u16; V] = std::array::from_fn(|v| {
            let n = valid.saturating_sub(16 * v).min(16);
            ((1u32 << n) - 1) as u16
        });
        let f: [RqFused16; V] = std::array::from_fn(|v| {
            RqFused16::load_at(&e.m0, &l.fused_nat, c0 + 16 * v, e.rounding)
        });
        let bias: [__m512i; V] =
            std::array::from_fn(|v| _mm512_loadu_si512(e.bias.as_ptr().add(c0 + 16 * v).cast()));
        let (lo, hi) = (_mm512_set1_epi32(e.lo), _mm512_set1_epi32(e.hi));
        let x_at = |row: *const u8, v: usize| {
            _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(masks[v], row.add(16 * v).cast()))
        };
        let w_at = |t: usize, v: usize| {
            _mm512_loadu_si512(l.wide.as_ptr().add(t * l.cp + c0 + 16 * v).cast())
        };
        let finish = |acc: &[__m512i; V], dst: *mut u8| {
            for v in 0..V {
                let q = _mm512_min_epi32(
                    _mm512_max_epi32(single_shift_stage::<NT>(acc[v], &f[v]), lo),
                    hi,
                );
                _mm_mask_storeu_epi8(dst.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            }
        };
        for (tp, &dst) in list.chunks_exact(l.taps).zip(list_out) {
            let mut acc = bias;
            for (t, &row) in tp.iter().enumerate() {
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpwssd_epi32(*a, x_at(row.add(c0), v), w_at(t, v));
                }
            }
            finish(&acc, dst.add(c0));
        }
        // `P` pixels per step: independent accumulation chains, each weight vector loaded once.
        const P: usize = 4;
        let (step, rstep, rows, npix) = (step[0], step[1], npix[1], npix[0]);
        for r in 0..rows {
            let (base, o8) = (base.add(r * rstep), o8.add(r * npix * c));
            let mut p = 0;
            while p + P <= npix {
                let mut acc = [bias; P];
                let px = base.add(p * step + c0);
                for t in 0..l.taps {
                    let row = px.add(*offs.get_unchecked(t));
                    for v in 0..V {
                        let wv = w_at(t, v);
                        for (q, accq) in acc.iter_mut().enumerate() {
                            accq[v] = _mm512_dpwssd_epi32(accq[v], x_at(row.add(q * step), v), wv);
                        }
                    }
                }
                for (q, accq) in acc.iter().enumerate() {
                    finish(accq, o8.add((p + q) * c + c0));
                }
                p += P;
            }
            while p < npix {
                let mut acc = bias;
                let row0 = base.add(p * step + c0);
                for t in 0..l.taps {
                    let row = row0.add(*offs.get_unchecked(t));
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_dpwssd_epi32(*a, x_at(row, v), w_at(t, v));
                    }
                }
                finish(&acc, o8.add(p * c + c0));
                p += 1;
            }
        }
    }
}

/// Output rows through the single-shift output stage (requires `l.fused`): `npix = [n, rows]`
/// runs of `n` interior pixels (tap `t` of pixel `p` of run `r` at
/// `base + r·step[1] + p·step[0] + offs[t]`, output at `o8 + (r·n + p)·c`; `n` may be 0) and the
/// listed pixels (`taps` tap-row pointers each, padding taps pointing at a `Z1` row, outputs at
/// `list_out`), all channels; the constants of each 64-channel block are loaded once per call.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`; every tap row has `c` readable bytes; `o8` holds
/// `rows·n·c` bytes, each `list_out` pointer `c` bytes; `list.len() == taps·list_out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn depthwise_row_fused(
    px: &Pixels<'_>,
    l: &DepthwiseVnniLayout,
    c: usize,
    e: &Epilogue,
) {
    debug_assert!(l.fused && px.list.len() == l.taps * px.list_out.len());
    // SAFETY: as documented.
    unsafe {
        let mut c0 = 0;
        while c0 < c {
            let valid = (c - c0).min(64);
            macro_rules! go {
                ($f:ident::<$g:literal>) => {
                    if l.no_tie {
                        $f::<$g, true>(px, l, c, c0, valid, e)
                    } else {
                        $f::<$g, false>(px, l, c, c0, valid, e)
                    }
                };
            }
            if let (Some(t), Some(pv)) = (&l.packed, pixels_per_vector(c)) {
                // 16 or 32 channels: one call for the whole row.
                match (l.no_tie, pv) {
                    (true, 4) => depthwise_taps_packed::<true, 4>(px, t, e),
                    (false, 4) => depthwise_taps_packed::<false, 4>(px, t, e),
                    (true, _) => depthwise_taps_packed::<true, 2>(px, t, e),
                    (false, _) => depthwise_taps_packed::<false, 2>(px, t, e),
                }
                return;
            }
            match (valid.div_ceil(16), l.taps == TAPS) {
                (1, _) => go!(depthwise_narrow_fused::<1>),
                (2, _) => go!(depthwise_narrow_fused::<2>),
                (3, _) => go!(depthwise_narrow_fused::<3>),
                (_, true) if let Some(t) = &l.taps9 => {
                    let d = column_shift(px.offs, px.step[0]);
                    macro_rules! taps {
                        ($nt:literal, $full:literal) => {
                            match d {
                                1 => depthwise_taps_fused::<$nt, $full, 1>(px, t, c, c0, valid, e),
                                2 => depthwise_taps_fused::<$nt, $full, 2>(px, t, c, c0, valid, e),
                                _ => depthwise_taps_fused::<$nt, $full, 3>(px, t, c, c0, valid, e),
                            }
                        };
                    }
                    match (l.no_tie, valid == 64) {
                        (true, true) => taps!(true, true),
                        (true, false) => taps!(true, false),
                        (false, true) => taps!(false, true),
                        (false, false) => taps!(false, false),
                    }
                }
                // Other tap counts (9 taps always have `taps9`: the layout builds it whenever
                // the stage fuses).
                _ => go!(depthwise_block_fused::<0>),
            }
            c0 += 64;
        }
    }
}
