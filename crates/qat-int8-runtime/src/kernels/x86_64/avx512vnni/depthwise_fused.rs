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

/// One fused depthwise kernel's arithmetic for [`walk_pixels`]: a pixel's accumulators start
/// at [`bias`](Self::bias), [`tap`](Self::tap) adds tap `t` of `G` pixels whose tap rows (at the
/// block's first channel) are `row(q)`, [`finish`](Self::finish) stores one pixel. Implemented
/// by always-inlined methods without target features of their own: they compile as part of the
/// AVX-512 VNNI kernel walking the pixels.
trait FusedBlock {
    /// One pixel's accumulators.
    type Acc: Copy;
    /// The accumulators of a pixel before its taps.
    fn bias(&self) -> Self::Acc;
    /// `acc[q] += x(row(q)) · w[t]` for the `G` pixels.
    ///
    /// # Safety
    /// CPU supports avx512f/bw/vl/vnni; each `row(q)` has the block's readable bytes.
    unsafe fn tap<const G: usize>(
        &self,
        acc: &mut [Self::Acc; G],
        t: usize,
        row: impl Fn(usize) -> *const u8,
    );
    /// The output stage of one pixel, stored at `dst` (the block's first channel).
    ///
    /// # Safety
    /// CPU supports avx512f/bw/vl/vnni; `dst` has the block's writable bytes.
    unsafe fn finish(&self, acc: &Self::Acc, dst: *mut u8);
}

/// Runs a fused depthwise block `k` over the pixels of `px` (channels from `c0`, `c` per pixel,
/// `taps` taps): the listed pixels one by one, then each run `P` pixels at a time (independent
/// accumulation chains sharing each weight load), its remainder one by one.
///
/// # Safety
/// As the kernels calling it ([`depthwise_block_fused`], [`depthwise_narrow_fused`]).
#[inline(always)]
unsafe fn walk_pixels<const P: usize, K: FusedBlock>(
    k: &K,
    px: &Pixels<'_>,
    taps: usize,
    c: usize,
    c0: usize,
) {
    let (base, step, npix, offs, list, list_out, o8) = px.parts();
    // SAFETY: as documented.
    unsafe {
        for (tp, &dst) in list.chunks_exact(taps).zip(list_out) {
            let mut acc = [k.bias()];
            for (t, &row) in tp.iter().enumerate() {
                k.tap::<1>(&mut acc, t, |_| row.add(c0));
            }
            k.finish(&acc[0], dst.add(c0));
        }
        let (step, rstep, rows, npix) = (step[0], step[1], npix[1], npix[0]);
        for r in 0..rows {
            let (base, o8) = (base.add(r * rstep), o8.add(r * npix * c));
            let at = |p: usize| (base.add(p * step + c0), o8.add(p * c + c0));
            let mut p = 0;
            while p + P <= npix {
                walk_group::<P, K>(k, at(p), step, offs, taps, c);
                p += P;
            }
            while p < npix {
                walk_group::<1, K>(k, at(p), step, offs, taps, c);
                p += 1;
            }
        }
    }
}

/// `G` consecutive pixels of a run (the first's input at `px`, pixel `q` at `px + q·step`, tap
/// `t` at `+ offs[t]`; its output at `dst`, pixel `q` at `dst + q·c`) through `k`.
///
/// # Safety
/// As [`walk_pixels`].
#[inline(always)]
unsafe fn walk_group<const G: usize, K: FusedBlock>(
    k: &K,
    (px, dst): (*const u8, *mut u8),
    step: usize,
    offs: &[usize],
    taps: usize,
    c: usize,
) {
    // SAFETY: as documented.
    unsafe {
        let mut acc = [k.bias(); G];
        for t in 0..taps {
            let row = px.add(*offs.get_unchecked(t));
            k.tap::<G>(&mut acc, t, |q| row.add(q * step));
        }
        for (q, accq) in acc.iter().enumerate() {
            k.finish(accq, dst.add(q * c));
        }
    }
}

/// The 64-channel block of [`depthwise_block_fused`]: weights `[tap][4 vectors]` at `wb`.
struct Block64<const NT: bool> {
    f: [RqFused16; 4],
    bias: [__m512i; 4],
    order: __m512i,
    lo: __m512i,
    hi: __m512i,
    wb: *const i8,
    mask: u64,
    full: bool,
}

impl<const NT: bool> FusedBlock for Block64<NT> {
    type Acc = [__m512i; 4];

    #[inline(always)]
    fn bias(&self) -> Self::Acc {
        self.bias
    }

    #[inline(always)]
    unsafe fn tap<const G: usize>(
        &self,
        acc: &mut [Self::Acc; G],
        t: usize,
        row: impl Fn(usize) -> *const u8,
    ) {
        // SAFETY: as documented by the trait; the weights hold every tap's four vectors.
        unsafe {
            let wt = self.wb.add(t * 256);
            let w: [__m512i; 4] =
                std::array::from_fn(|b| _mm512_loadu_si512(wt.add(b * 64).cast()));
            for (q, accq) in acc.iter_mut().enumerate() {
                let p = row(q);
                let x = if self.full {
                    _mm512_loadu_si512(p.cast())
                } else {
                    _mm512_maskz_loadu_epi8(self.mask, p.cast())
                };
                for (a, &wv) in accq.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, x, wv);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn finish(&self, acc: &Self::Acc, dst: *mut u8) {
        // SAFETY: as documented by the trait.
        unsafe {
            let f = &self.f;
            let r = _mm512_packus_epi16(
                _mm512_packs_epi32(
                    single_shift_stage::<NT>(acc[0], &f[0]),
                    single_shift_stage::<NT>(acc[1], &f[1]),
                ),
                _mm512_packs_epi32(
                    single_shift_stage::<NT>(acc[2], &f[2]),
                    single_shift_stage::<NT>(acc[3], &f[3]),
                ),
            );
            let r = _mm512_min_epu8(
                _mm512_max_epu8(_mm512_shuffle_epi8(r, self.order), self.lo),
                self.hi,
            );
            _mm512_mask_storeu_epi8(dst.cast(), self.mask, r);
        }
    }
}

/// `avx512vnni_depthwise_u8i8_64c_fused`: the pixels of `px` (see [`Pixels`]), channels
/// `c0..c0 + valid` of one 64-channel block, u8 output through the single-shift output stage
/// ([`requantize16_fused`](super::requant::requantize16_fused);
/// [`requantize16_no_tie`](super::requant::requantize16_no_tie) when `NT`, i.e. `l.no_tie`) and
/// saturating packs. Three pixels per step share the weight loads; `T` taps known at compile
/// time (0: `l.taps`).
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
    let blk = c0 / 64;
    let taps = if T == 0 { l.taps } else { T };
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let k = Block64::<NT> {
            f: std::array::from_fn(|b| {
                RqFused16::load_at(&l.m0, &l.fused_c, blk * 64 + b * 16, e.rounding)
            }),
            bias: std::array::from_fn(|b| {
                _mm512_loadu_si512(l.bias.as_ptr().add(blk * 64 + b * 16).cast())
            }),
            // Saturating packs: per 128-bit lane j, byte 4k + i holds vector k's lane 4j + i,
            // i.e. channel 16j + 4i + k; the in-lane byte shuffle puts channel 16j + d at byte d.
            order: _mm512_broadcast_i32x4(_mm_setr_epi8(
                0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
            )),
            lo: _mm512_set1_epi8(e.lo as i8),
            hi: _mm512_set1_epi8(e.hi as i8),
            wb: l.w.as_ptr().add(blk * l.taps * 256),
            mask: byte_mask(valid),
            full: valid >= 64,
        };
        walk_pixels::<3, _>(&k, px, taps, c, c0);
    }
}

/// The partial block of [`depthwise_narrow_fused`]: `V` vectors of 16 channels from `c0`.
struct Narrow<const V: usize, const NT: bool> {
    f: [RqFused16; V],
    bias: [__m512i; V],
    masks: [u16; V],
    lo: __m512i,
    hi: __m512i,
    /// Widened weights, `cp` per tap, from channel `c0`.
    w: *const i32,
    cp: usize,
}

impl<const V: usize, const NT: bool> FusedBlock for Narrow<V, NT> {
    type Acc = [__m512i; V];

    #[inline(always)]
    fn bias(&self) -> Self::Acc {
        self.bias
    }

    #[inline(always)]
    unsafe fn tap<const G: usize>(
        &self,
        acc: &mut [Self::Acc; G],
        t: usize,
        row: impl Fn(usize) -> *const u8,
    ) {
        // SAFETY: as documented by the trait; masked loads touch only the valid channels.
        unsafe {
            for v in 0..V {
                let wv = _mm512_loadu_si512(self.w.add(t * self.cp + 16 * v).cast());
                for (q, accq) in acc.iter_mut().enumerate() {
                    let x = _mm_maskz_loadu_epi8(self.masks[v], row(q).add(16 * v).cast());
                    accq[v] = _mm512_dpwssd_epi32(accq[v], _mm512_cvtepu8_epi32(x), wv);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn finish(&self, acc: &Self::Acc, dst: *mut u8) {
        // SAFETY: as documented by the trait; masked stores touch only the valid channels.
        unsafe {
            for (v, &a) in acc.iter().enumerate() {
                let q = single_shift_stage::<NT>(a, &self.f[v]);
                let q = _mm512_min_epi32(_mm512_max_epi32(q, self.lo), self.hi);
                _mm_mask_storeu_epi8(
                    dst.add(16 * v).cast(),
                    self.masks[v],
                    _mm512_cvtepi32_epi8(q),
                );
            }
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c_fused`: `depthwise_narrow`'s partial block (`V` vectors of
/// 16 channels in natural order, `vpdpwssd` on zero-extended activations) over the pixels of
/// `px` (as [`depthwise_block_fused`], four pixels per step), u8 output through
/// [`requantize16_fused`](super::requant::requantize16_fused), constants loaded once per call.
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
    // SAFETY: as documented; masked loads/stores touch only the `valid` channels.
    unsafe {
        let k = Narrow::<V, NT> {
            f: std::array::from_fn(|v| {
                RqFused16::load_at(&e.m0, &l.fused_nat, c0 + 16 * v, e.rounding)
            }),
            bias: std::array::from_fn(|v| {
                _mm512_loadu_si512(e.bias.as_ptr().add(c0 + 16 * v).cast())
            }),
            masks: std::array::from_fn(|v| {
                let n = valid.saturating_sub(16 * v).min(16);
                ((1u32 << n) - 1) as u16
            }),
            lo: _mm512_set1_epi32(e.lo),
            hi: _mm512_set1_epi32(e.hi),
            w: l.wide.as_ptr().add(c0),
            cp: l.cp,
        };
        walk_pixels::<4, _>(&k, px, l.taps, c, c0);
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
