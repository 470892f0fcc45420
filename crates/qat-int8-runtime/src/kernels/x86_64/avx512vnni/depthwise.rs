//! `avx512vnni_depthwise_u8i8_64c` and its partial-block and run forms: the AVX-512 VNNI
//! depthwise kernels with the `Gemmlowp`/`Single` vector output stages, and the row driver that
//! picks between them and the single-shift kernels of [`super::depthwise_fused`].

use std::arch::x86_64::*;

use super::depthwise_fused::{Pixels, depthwise_row_fused};
use super::depthwise_packed::pixels_per_vector;
use super::depthwise_taps::{TAPS, TapsLayout};
use super::requant::{
    RqFused16, Stage16, fused_constants, fused_ok, requantize16_fused, stage16, variant,
};
use super::{Avx512Vnni, byte_mask};
use crate::kernels::frame::depthwise::{DwOut, RowJob, RowScratch};
use crate::kernels::frame::epilogue::ShiftConstants;
use crate::kernels::frame::{DepthwiseKernel, DepthwisePlan, Epilogue, OutputStage};

impl DepthwiseKernel for Avx512Vnni {
    type Layout = DepthwiseVnniLayout;

    fn layout(w: &[i32], taps: usize, c: usize, cp: usize, e: &Epilogue) -> DepthwiseVnniLayout {
        DepthwiseVnniLayout::new(w, taps, c, cp, e)
    }

    unsafe fn pixel(
        taps: &[*const u8],
        plan: &DepthwisePlan,
        l: &DepthwiseVnniLayout,
        _: &mut RowScratch,
        out: DwOut<'_>,
    ) {
        let (o8, o32) = match out {
            DwOut::U8(o) => (Some(o.as_mut_ptr()), None),
            DwOut::I32(o) => (None, Some(o.as_mut_ptr())),
        };
        let (c, e) = (plan.c, &plan.epi);
        // SAFETY: as documented by the trait; the output holds c elements.
        unsafe { depthwise_run(PixelRun::listed(taps, o8, o32), l, c, e) }
    }

    /// With the single-shift stage (`l.fused`, u8 output): the whole sample in one call per
    /// 64-channel block; else row by row.
    unsafe fn sample(
        job: &RowJob<'_>,
        l: &DepthwiseVnniLayout,
        s: &mut RowScratch,
        mut out: DwOut<'_>,
    ) {
        let plan = job.plan;
        let [_, w, c] = plan.in_hwc;
        let [ho, wo, _] = plan.out_hwc;
        let [sh, sw] = plan.stride;
        match out {
            DwOut::U8(ref mut o) if l.fused => {
                // Every pixel is interior (no padding: the caller's contract), so pixel
                // (oh, ow) reads its taps at oh·sh·W·C + ow·sw·C + offs[t].
                assert!(o.len() >= ho * wo * c, "depthwise output too small");
                assert!(
                    job.sample.len() >= plan.in_hwc.iter().product(),
                    "sample too small"
                );
                debug_assert!(plan.padding == [0; 4]);
                debug_assert!((0..ho).all(|oh| plan.interior(oh) == (0, wo)));
                // SAFETY: VNNI supported and `l.fused`; every tap of every pixel is inside the
                // sample (the caller's contract); the output holds ho·wo·c bytes.
                unsafe {
                    let px = Pixels {
                        base: job.sample.as_ptr(),
                        step: [sw * c, sh * w * c],
                        npix: [wo, ho],
                        offs: &plan.offsets,
                        list: &[],
                        list_out: &[],
                        o8: o.as_mut_ptr(),
                    };
                    depthwise_row_fused(&px, l, c, &plan.epi)
                }
            }
            _ => {
                let row_len = wo * c;
                for oh in 0..ho {
                    let job = RowJob { oh, ..*job };
                    // SAFETY: as documented; the slice is row `oh` of the sample's output.
                    unsafe { Self::row(&job, l, s, out.pixel(oh * row_len, row_len)) };
                }
            }
        }
    }

    /// Interior pixels (all taps inside the input) run with fixed tap offsets, border pixels
    /// with their tap lists; with the single-shift stage (`l.fused`, u8 output) the whole row is
    /// one call per 64-channel block.
    unsafe fn row(job: &RowJob<'_>, l: &DepthwiseVnniLayout, s: &mut RowScratch, out: DwOut<'_>) {
        let (plan, sample, oh) = (job.plan, job.sample, job.oh);
        let (mut out, mut out_i32) = match out {
            DwOut::U8(o) => (Some(o), None),
            DwOut::I32(o) => (None, Some(o)),
        };
        let [_, w, c] = plan.in_hwc;
        let [_, wo, _] = plan.out_hwc;
        let [sh, sw] = plan.stride;
        let (pt, pl) = (plan.padding[0], plan.padding[1]);
        let (ow_lo, ow_hi) = plan.interior(oh);
        let interior = ow_lo < ow_hi;
        if let (Some(o), true) = (out.as_deref_mut(), l.fused) {
            let (ilo, ihi) = if interior { (ow_lo, ow_hi) } else { (0, 0) };
            // Every output pointer derives from one base pointer of the row (`wo·c` bytes).
            assert!(o.len() >= wo * c, "depthwise output row too small");
            let op = o.as_mut_ptr();
            let (list, outs) = (&mut s.taps, &mut s.outs);
            list.clear();
            outs.clear();
            plan.push_border_taps(sample, oh, list);
            outs.extend(plan.border_columns(oh).map(|ow| op.wrapping_add(ow * c)));
            let base = if interior {
                sample[((oh * sh - pt) * w + (ow_lo * sw - pl)) * c..].as_ptr()
            } else {
                sample.as_ptr()
            };
            // SAFETY: VNNI supported (trait contract) and `l.fused`; interior pixels' taps are
            // inside the sample (`interior`), listed taps point into the sample or at the `Z1`
            // row (`cp ≥ c` bytes); outputs are `c`-byte pixels of this row.
            unsafe {
                let px = Pixels {
                    base,
                    step: [sw * c, 0],
                    npix: [ihi - ilo, 1],
                    offs: &plan.offsets,
                    list,
                    list_out: outs,
                    o8: op.wrapping_add(ilo * c),
                };
                depthwise_row_fused(&px, l, c, &plan.epi)
            };
            return;
        }
        let mut ow = 0;
        while ow < wo {
            if interior && ow == ow_lo {
                let base = sample[((oh * sh - pt) * w + (ow_lo * sw - pl)) * c..].as_ptr();
                let npix = ow_hi - ow_lo;
                let o8 = out
                    .as_deref_mut()
                    .map(|o| o[ow_lo * c..ow_hi * c].as_mut_ptr());
                let o32 = out_i32
                    .as_deref_mut()
                    .map(|o| o[ow_lo * c..ow_hi * c].as_mut_ptr());
                // SAFETY: VNNI supported (trait contract); every tap of pixels ow_lo..ow_hi is
                // inside the sample (`interior`), so base + p·sw·c + offs[t] has c readable bytes.
                unsafe {
                    let run = PixelRun {
                        base,
                        step: sw * c,
                        npix,
                        offs: &plan.offsets,
                        taps: None,
                        o8,
                        o32,
                    };
                    depthwise_run(run, l, c, &plan.epi)
                };
                ow = ow_hi;
                continue;
            }
            let taps = &mut s.taps;
            taps.clear();
            plan.push_taps(sample, oh, ow, taps);
            let o8 = out
                .as_deref_mut()
                .map(|o| o[ow * c..(ow + 1) * c].as_mut_ptr());
            let o32 = out_i32
                .as_deref_mut()
                .map(|o| o[ow * c..(ow + 1) * c].as_mut_ptr());
            let e = &plan.epi;
            // SAFETY: VNNI supported (trait contract); every tap row has ≥ c bytes.
            unsafe { depthwise_run(PixelRun::listed(taps, o8, o32), l, c, e) };
            ow += 1;
        }
    }
}

/// Depthwise weights and epilogue constants laid out for [`depthwise_pixel64`], per block of 64
/// channels. Lane `L` of vector `b` (`b ∈ 0..4`) is channel `64·blk + 4L + b`: one plain 64-byte
/// load of activations (channels in memory order) feeds four `vpdpbusd` whose weight vectors
/// hold `w[4L + b]` in byte `b` of lane `L` and zero in the other three bytes, so each lane of
/// accumulator `b` collects exactly `x[4L + b]·w[4L + b]` — no widening shuffles. The four
/// requantized results recombine into memory order with shifts and ors.
#[derive(Debug, Clone, Default)]
pub struct DepthwiseVnniLayout {
    /// `[blk][tap][b][64]` bytes.
    pub w: Vec<i8>,
    /// `[blk][b][16]` permuted `bias'`.
    pub bias: Vec<i32>,
    /// Permuted `M0`.
    pub m0: Vec<i32>,
    /// Permuted left shifts.
    pub left: Vec<i32>,
    /// Permuted right shifts.
    pub right: Vec<i32>,
    /// Taps per channel.
    pub taps: usize,
    /// `[tap][cp]` weights widened to int32 (natural channel order), for partial blocks.
    pub wide: Vec<i32>,
    /// Channel stride of `wide`.
    pub cp: usize,
    /// Whether the single-shift output stage applies (a fused rounding, and [`fused_ok`] over the
    /// real channels).
    pub fused: bool,
    /// [`fused_constants`] of the permuted channels (`[blk][b]` groups of 16).
    pub fused_c: ShiftConstants,
    /// [`fused_constants`] in natural channel order (partial blocks).
    pub fused_nat: ShiftConstants,
    /// Whether the fused stage may drop its tie correction ([`Epilogue::ties_impossible`]: the
    /// `Single` rounding, and no accumulator `acc + bias'` of these weights reaches a tie).
    pub no_tie: bool,
    /// The tap-interleaved layout of [`super::depthwise_taps`], for 9 taps with the single-shift
    /// stage.
    pub taps9: Option<TapsLayout>,
    /// [`TapsLayout::packed`], for 9 taps of 16 or 32 channels with the single-shift stage.
    pub packed: Option<TapsLayout>,
}

impl DepthwiseVnniLayout {
    /// From `[tap][cp]` weights (`cp` a multiple of 64, `c ≤ cp` real channels) and an epilogue
    /// with `cp` entries.
    pub fn new(w: &[i32], taps: usize, c: usize, cp: usize, e: &Epilogue) -> Self {
        let blocks = cp / 64;
        let mut wl = vec![0i8; blocks * taps * 4 * 64];
        let perm = |v: &[i32]| {
            let mut out = vec![0i32; cp];
            for blk in 0..blocks {
                for b in 0..4 {
                    for l in 0..16 {
                        out[blk * 64 + b * 16 + l] = v[blk * 64 + 4 * l + b];
                    }
                }
            }
            out
        };
        for blk in 0..blocks {
            for t in 0..taps {
                for b in 0..4 {
                    for l in 0..16 {
                        let ch = blk * 64 + 4 * l + b;
                        wl[((blk * taps + t) * 4 + b) * 64 + 4 * l + b] = w[t * cp + ch] as i8;
                    }
                }
            }
        }
        let fused = Avx512Vnni::fuses(e.target)
            && fused_ok(&e.m0[..c], &e.left[..c], &e.right[..c], e.zp, e.lo, e.hi);
        let (m0, right) = (perm(&e.m0), perm(&e.right));
        let fused_c = fused_constants(&m0, &right, e.zp, e.rounding);
        let fused_nat = fused_constants(&e.m0, &e.right, e.zp, e.rounding);
        Self {
            w: wl,
            bias: perm(&e.bias),
            m0,
            left: perm(&e.left),
            right,
            taps,
            wide: w.to_vec(),
            cp,
            fused,
            fused_c,
            fused_nat,
            no_tie: fused && e.ties_impossible(c),
            taps9: (fused && taps == TAPS).then(|| TapsLayout::new(w, cp, e)),
            packed: (fused && taps == TAPS && pixels_per_vector(c).is_some())
                .then(|| TapsLayout::packed(w, c, cp, e)),
        }
    }
}

/// `avx512vnni_depthwise_u8i8_64c`: one output pixel, channels `c0..c0 + valid` (`c0` a multiple
/// of 64, `valid ≤ 64`); tap `t` reads `tap(t) + c0`. See [`DepthwiseVnniLayout`].
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `tap(t) + c0` has `valid` readable bytes; `o8`/`o32`, when
/// given, point at the pixel's channel `c0` with `valid` writable elements; `e` has `zp/lo/hi`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise_pixel64<const SLOW: bool, const SINGLE: bool, const P: usize>(
    tap: impl Fn(usize, usize) -> *const u8,
    l: &DepthwiseVnniLayout,
    rq: &[Stage16; 4],
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: Option<[*mut u8; P]>,
    o32: Option<[*mut i32; P]>,
) {
    let mask = byte_mask(valid);
    let blk = c0 / 64;
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let at =
            |v: &Vec<i32>, b: usize| _mm512_loadu_si512(v.as_ptr().add(blk * 64 + b * 16).cast());
        let bias = [
            at(&l.bias, 0),
            at(&l.bias, 1),
            at(&l.bias, 2),
            at(&l.bias, 3),
        ];
        let mut acc = [bias; P];
        let wb = l.w.as_ptr().add(blk * l.taps * 256);
        for t in 0..l.taps {
            let wt = wb.add(t * 256);
            let w: [__m512i; 4] =
                std::array::from_fn(|b| _mm512_loadu_si512(wt.add(b * 64).cast()));
            for (p, accp) in acc.iter_mut().enumerate() {
                let x = if mask == u64::MAX {
                    _mm512_loadu_si512(tap(p, t).add(c0).cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask, tap(p, t).add(c0).cast())
                };
                for (a, &wv) in accp.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, x, wv);
                }
            }
        }
        if let Some(o) = o8 {
            let (zp, lo, hi) = (
                _mm512_set1_epi32(e.zp),
                _mm512_set1_epi32(e.lo),
                _mm512_set1_epi32(e.hi),
            );
            for (p, accp) in acc.iter().enumerate() {
                let q = |b: usize| stage16::<SLOW, SINGLE>(accp[b], &rq[b], zp, lo, hi);
                let r = _mm512_or_si512(
                    _mm512_or_si512(q(0), _mm512_slli_epi32::<8>(q(1))),
                    _mm512_or_si512(_mm512_slli_epi32::<16>(q(2)), _mm512_slli_epi32::<24>(q(3))),
                );
                _mm512_mask_storeu_epi8(o[p].cast(), mask, r);
            }
        }
        if let Some(o) = o32 {
            for (p, accp) in acc.iter().enumerate() {
                let mut tmp = [[0i32; 16]; 4];
                for (b, a) in accp.iter().enumerate() {
                    _mm512_storeu_si512(tmp[b].as_mut_ptr().cast(), *a);
                }
                for ch in 0..valid {
                    *o[p].add(ch) = tmp[ch % 4][ch / 4];
                }
            }
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c`, for a partial block (`valid ≤ 48` channels): one output
/// pixel, `V` vectors of 16 channels in natural order; activations zero-extended to int32 and
/// multiplied by the int32-widened weights with `vpdpwssd` (the high int16 of each activation lane
/// is 0, so each pair sum is exactly `x·w`). Cheaper than the 64-channel byte-lane kernel when
/// fewer than 48 channels remain.
///
/// # Safety
/// As [`depthwise_pixel64`]; `e` arrays have `cp` entries.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_narrow<const SLOW: bool, const SINGLE: bool, const V: usize>(
    tap: impl Fn(usize) -> *const u8,
    l: &DepthwiseVnniLayout,
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: Option<*mut u8>,
    o32: Option<*mut i32>,
) {
    // SAFETY: as documented; masked loads/stores touch only the `valid` channels.
    unsafe {
        let masks: [u16; V] = std::array::from_fn(|v| {
            let n = valid.saturating_sub(16 * v).min(16);
            ((1u32 << n) - 1) as u16
        });
        let mut acc: [__m512i; V] =
            std::array::from_fn(|v| _mm512_loadu_si512(e.bias.as_ptr().add(c0 + 16 * v).cast()));
        for t in 0..l.taps {
            let row = tap(t).add(c0);
            let wt = l.wide.as_ptr().add(t * l.cp + c0);
            for v in 0..V {
                let x =
                    _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(masks[v], row.add(16 * v).cast()));
                acc[v] = _mm512_dpwssd_epi32(acc[v], x, _mm512_loadu_si512(wt.add(16 * v).cast()));
            }
        }
        for v in 0..V {
            let col = c0 + 16 * v;
            if let (Some(o), true) = (o8, l.fused) {
                let f = RqFused16::load_at(&e.m0, &l.fused_nat, col, e.rounding);
                let q = _mm512_min_epi32(
                    _mm512_max_epi32(requantize16_fused(acc[v], &f), _mm512_set1_epi32(e.lo)),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(o.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            } else if let Some(o) = o8 {
                let rq = Stage16::load_at::<SINGLE>(&e.m0, &e.left, &e.right, col);
                let q = stage16::<SLOW, SINGLE>(
                    acc[v],
                    &rq,
                    _mm512_set1_epi32(e.zp),
                    _mm512_set1_epi32(e.lo),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(o.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            }
            if let Some(o) = o32 {
                _mm512_mask_storeu_epi32(o.add(16 * v).cast(), masks[v], acc[v]);
            }
        }
    }
}

/// The output pixels of one [`depthwise_run`]: a run of `npix` pixels (pixel `p`'s tap `t` at
/// `base + p·step + offs[t]`) or, when `taps` is given, a single pixel whose tap rows are listed;
/// u8 output at `o8` and/or int32 at `o32`, `c` elements per pixel.
#[derive(Clone, Copy)]
struct PixelRun<'a> {
    base: *const u8,
    step: usize,
    npix: usize,
    offs: &'a [usize],
    taps: Option<&'a [*const u8]>,
    o8: Option<*mut u8>,
    o32: Option<*mut i32>,
}

impl<'a> PixelRun<'a> {
    /// One pixel whose tap rows are listed.
    fn listed(taps: &'a [*const u8], o8: Option<*mut u8>, o32: Option<*mut i32>) -> Self {
        PixelRun {
            base: std::ptr::null(),
            step: 0,
            npix: 1,
            offs: &[],
            taps: Some(taps),
            o8,
            o32,
        }
    }
}

/// The pixels of `run`, all channels, requantized in the epilogue's rounding.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; every tap row has `c` readable bytes; `o8`/`o32` hold
/// `npix·c` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn depthwise_run(run: PixelRun<'_>, l: &DepthwiseVnniLayout, c: usize, e: &Epilogue) {
    // SAFETY: as documented.
    unsafe {
        match variant(e, run.o8.is_some()) {
            (false, false) => depthwise_run_in::<false, false>(run, l, c, e),
            (true, false) => depthwise_run_in::<true, false>(run, l, c, e),
            (false, true) => depthwise_run_in::<false, true>(run, l, c, e),
            (true, true) => depthwise_run_in::<true, true>(run, l, c, e),
        }
    }
}

/// [`depthwise_run`] for one output-stage variant (see [`stage16`]).
///
/// # Safety
/// As [`depthwise_run`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn depthwise_run_in<const SLOW: bool, const SINGLE: bool>(
    run: PixelRun<'_>,
    l: &DepthwiseVnniLayout,
    c: usize,
    e: &Epilogue,
) {
    let (base, step, npix, offs) = (run.base, run.step, run.npix, run.offs);
    let (taps, o8, o32) = (run.taps, run.o8, run.o32);
    // SAFETY: as documented. Blocks of 64 channels outer, pixels inner: the block's
    // multiplier constants stay in registers across the run.
    unsafe {
        let mut c0 = 0;
        while c0 < c {
            let valid = (c - c0).min(64);
            if valid <= 48 {
                for p in 0..npix {
                    let d8 = o8.map(|o| o.add(p * c + c0));
                    let d32 = o32.map(|o| o.add(p * c + c0));
                    let tap = |t: usize| match taps {
                        Some(tp) => tp[t],
                        None => base.add(p * step + offs[t]),
                    };
                    match valid.div_ceil(16) {
                        1 => depthwise_narrow::<SLOW, SINGLE, 1>(tap, l, c0, valid, e, d8, d32),
                        2 => depthwise_narrow::<SLOW, SINGLE, 2>(tap, l, c0, valid, e, d8, d32),
                        _ => depthwise_narrow::<SLOW, SINGLE, 3>(tap, l, c0, valid, e, d8, d32),
                    }
                }
                c0 += 64;
                continue;
            }
            let blk = c0 / 64;
            let rq: [Stage16; 4] = std::array::from_fn(|b| {
                Stage16::load_at::<SINGLE>(&l.m0, &l.left, &l.right, blk * 64 + b * 16)
            });
            let mut p = 0;
            if let Some(tp) = taps {
                // A single pixel whose tap rows are listed.
                let d8 = o8.map(|o| [o.add(c0)]);
                let d32 = o32.map(|o| [o.add(c0)]);
                depthwise_pixel64::<SLOW, SINGLE, 1>(|_, t| tp[t], l, &rq, c0, valid, e, d8, d32);
                p = npix;
            }
            // Two pixels per step: eight independent accumulation chains, weights loaded once.
            while p + 2 <= npix {
                let d8 = o8.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let tap = |q: usize, t: usize| base.add((p + q) * step + offs[t]);
                depthwise_pixel64::<SLOW, SINGLE, 2>(tap, l, &rq, c0, valid, e, d8, d32);
                p += 2;
            }
            if p < npix {
                let d8 = o8.map(|o| [o.add(p * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0)]);
                let tap = |_: usize, t: usize| base.add(p * step + offs[t]);
                depthwise_pixel64::<SLOW, SINGLE, 1>(tap, l, &rq, c0, valid, e, d8, d32);
            }
            c0 += 64;
        }
    }
}
