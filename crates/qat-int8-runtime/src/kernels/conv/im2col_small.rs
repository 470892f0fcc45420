//! The padded-band im2col of dense convs with short kernel rows (the stems: `kw·C_in ≤ 16`
//! bytes per kernel row, `C_in` of 1–3).
//!
//! A task's output rows read a band of input rows; the band is copied once into scratch with
//! its padding filled with `Z1` (the padded input `pt + H + pb` rows by `pl + W + pr` columns,
//! restricted to the rows the task reads). Every output pixel is then "inside": its A row is the
//! `kh` spans of `kw·C_in` bytes of the band at its window, with no per-tap border test. The
//! spans are copied with fixed-size moves, or, on the AVX-512 VNNI path of a CPU with AVX-512
//! VBMI, gathered by byte permutes, several A rows per permute.

use std::cell::RefCell;

use super::im2col::copy_spans;
use super::{ConvGeom, ConvPlan};
use crate::kernels::KernelPath;
use crate::kernels::copy::fill_small;

/// Largest padded sample, in bytes, the band path takes (its scratch holds at most one band, at
/// most one padded sample, per thread).
const PADDED_SAMPLE_MAX: usize = 1 << 20;

/// Bytes past a band's rows that the vector code's 64-byte loads and stores may cover (the
/// gather keeps no byte it loads from there; the band builder's stores spill into them).
const SLACK: usize = 64;

thread_local! {
    /// The band of the running task (per thread, reused across calls).
    static BAND: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The band im2col of one conv, decided at plan time.
#[derive(Debug)]
pub(super) struct PaddedIm2col {
    /// Padded width `pl + W + pr`, in pixels.
    wp: usize,
    /// Bytes of one kernel row of a window: `kw·C_in` (1..=16).
    span: usize,
    /// A row length the rows are built for (the packed GEMM's `kp`).
    pub(super) kp: usize,
    /// The byte-permute gather, when the path and the CPU have it.
    #[cfg(target_arch = "x86_64")]
    vbmi: Option<vbmi::Gather>,
}

impl PaddedIm2col {
    /// The band im2col of a conv over `in_hwc` with geometry `geom`, for A rows of `kp` bytes on
    /// `path`, when it applies: a dense conv (`groups == 1`) undilated in width, with
    /// `kw·C_in ≤ 16`, `kh·kw·C_in ≤ kp`, a padded sample of at most [`PADDED_SAMPLE_MAX`] bytes,
    /// and some padding or the vector gather (with neither, the plain im2col's inside-pixel copy
    /// does the same work without the band).
    pub(super) fn new(
        in_hwc: [usize; 3],
        geom: &ConvGeom,
        path: KernelPath,
        kp: usize,
    ) -> Option<Self> {
        let [h, w, cin] = in_hwc;
        let [_, kh, kw, cig] = geom.weight_shape;
        let p = geom.padding;
        let span = kw * cin;
        let wp = p[1] + w + p[3];
        let padded = (p[0] + h + p[2]).checked_mul(wp)?.checked_mul(cin)?;
        if geom.groups != 1
            || cig != cin
            || geom.dilation[1] != 1
            || !(1..=16).contains(&span)
            || kh == 0
            || kh * span > kp
            || padded > PADDED_SAMPLE_MAX
        {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        let vbmi = match path {
            KernelPath::Avx512Vnni => vbmi::Gather::new(kh, span, geom.stride[1] * cin, kp),
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = path;
        #[cfg(target_arch = "x86_64")]
        let gather = vbmi.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let gather = false;
        if p == [0; 4] && !gather {
            return None;
        }
        Some(Self {
            wp,
            span,
            kp,
            #[cfg(target_arch = "x86_64")]
            vbmi,
        })
    }

    /// The same band im2col with its rows copied by fixed-size moves.
    pub(super) fn without_gather(self) -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            vbmi: None,
            ..self
        }
    }

    /// Whether the rows are gathered by byte permutes.
    pub(super) fn gathers(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.vbmi.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The A rows of `seg` into `out` (`seg.count` rows of `kp` bytes): row `c` is the `kh`
    /// spans of `span` bytes at its window in `band` ([`Segment::window`]), then zeros to `kp`.
    fn rows(&self, band: &[u8], seg: &Segment, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(g) = &self.vbmi {
            g.rows(band, seg, out);
            return;
        }
        macro_rules! spans {
            ($($n:literal)*) => {
                match self.span {
                    $($n => seg.copy_spans::<$n>(band, self.kp, out),)*
                    _ => unreachable!("the span is checked in PaddedIm2col::new"),
                }
            };
        }
        spans!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// Fills `band[..rows·line]` with padded rows: band row `b` is input row `ih0 + b` of
    /// `sample` (`[H, W·C_in]` bytes) at byte `pl·C_in` with `Z1` around it, or all `Z1` when
    /// that row is outside the input.
    fn pad_rows(&self, band: &mut [u8], rows: usize, ih0: isize, sample: &[u8], p: PadGeom) {
        #[cfg(target_arch = "x86_64")]
        if let Some(g) = &self.vbmi {
            g.pad_rows(band, rows, ih0, sample, p);
            return;
        }
        for (b, row) in band[..rows * p.line].chunks_exact_mut(p.line).enumerate() {
            let ih = ih0 + b as isize;
            if ih < 0 || ih as usize >= p.h {
                row.fill(p.z1);
                continue;
            }
            let (left, rest) = row.split_at_mut(p.left);
            let (mid, right) = rest.split_at_mut(p.width);
            fill_small(left, p.z1);
            mid.copy_from_slice(&sample[ih as usize * p.width..(ih as usize + 1) * p.width]);
            fill_small(right, p.z1);
        }
    }
}

/// How input rows sit in a band line: `h` input rows of `width = W·C_in` bytes, placed at byte
/// `left = pl·C_in` of band lines of `line = (pl + W + pr)·C_in` bytes, the rest `z1`.
#[derive(Debug, Clone, Copy)]
struct PadGeom {
    h: usize,
    width: usize,
    left: usize,
    line: usize,
    z1: u8,
}

/// `count` consecutive A rows of one sample, in band coordinates: row `c` is output pixel
/// `ow + c` of a band whose output lines are `wo` pixels, the first line's windows starting at
/// band byte 0.
#[derive(Debug, Clone, Copy)]
struct Segment {
    ow: usize,
    count: usize,
    wo: usize,
    /// Band bytes between the windows of consecutive output lines (`sh·line`), pixels
    /// (`sw·C_in`) and kernel rows (`dh·line`).
    line_step: usize,
    step: usize,
    hstep: usize,
    kh: usize,
}

impl Segment {
    /// Band byte where row `c`'s window starts.
    fn window(&self, c: usize) -> usize {
        let (l, p) = ((self.ow + c) / self.wo, (self.ow + c) % self.wo);
        l * self.line_step + p * self.step
    }

    /// `(first row, rows)` of each output line of the segment, in order.
    fn lines(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut c = 0;
        std::iter::from_fn(move || {
            (c < self.count).then(|| {
                let p = (self.ow + c) % self.wo;
                let n = (self.wo - p).min(self.count - c);
                c += n;
                (c - n, n)
            })
        })
    }

    /// [`PaddedIm2col::rows`] by fixed-size moves of `L` bytes.
    fn copy_spans<const L: usize>(&self, band: &[u8], kp: usize, out: &mut [u8]) {
        for (c, n) in self.lines() {
            let at = [self.window(c), self.step, self.hstep];
            copy_spans::<L>(band, at, self.kh, kp, &mut out[c * kp..(c + n) * kp]);
        }
    }
}

impl ConvPlan {
    /// [`ConvPlan::im2col`] through the band: rows `row0..row0 + rows` of `A` (row =
    /// (sample, oh, ow), column `(i·kw + j)·C_in + ci`, padded cells `Z1`, columns `k..kp` 0).
    ///
    /// For each sample the rows touch, the band holds padded input rows
    /// `oh₀·sh ..= oh₁·sh + (kh − 1)·dh` (the first and last output lines of the sample's rows);
    /// output line `oh`, pixel `ow` then starts at band row `(oh − oh₀)·sh`, column `ow·sw`.
    pub(super) fn im2col_padded(
        &self,
        pad: &PaddedIm2col,
        input: &[u8],
        row0: usize,
        rows: usize,
        dst: &mut [u8],
    ) {
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let kh = self.geom.weight_shape[1];
        let ([sh, sw], dh) = (self.geom.stride, self.geom.dilation[0]);
        let [pt, pl, _, _] = self.geom.padding;
        let (kp, line) = (pad.kp, pad.wp * cin);
        let geom = PadGeom {
            h,
            width: w * cin,
            left: pl * cin,
            line,
            z1: self.zero_row[0],
        };
        let (sample_len, per_sample) = (h * w * cin, ho * wo);
        let (mut s, mut pix) = (row0 / per_sample, row0 % per_sample);
        let mut r = 0;
        BAND.with(|b| {
            let band = &mut *b.borrow_mut();
            while r < rows {
                // The rows of sample s from pixel `pix`: up to the call's end or the sample's.
                let count = (rows - r).min(per_sample - pix);
                let (oh, oh_last) = (pix / wo, (pix + count - 1) / wo);
                let band_rows = (oh_last - oh) * sh + (kh - 1) * dh + 1;
                if band.len() < band_rows * line + SLACK {
                    band.resize(band_rows * line + SLACK, 0);
                }
                let sample = &input[s * sample_len..(s + 1) * sample_len];
                let ih0 = (oh * sh) as isize - pt as isize;
                pad.pad_rows(band, band_rows, ih0, sample, geom);
                let seg = Segment {
                    ow: pix % wo,
                    count,
                    wo,
                    line_step: sh * line,
                    step: sw * cin,
                    hstep: dh * line,
                    kh,
                };
                pad.rows(band, &seg, &mut dst[r * kp..(r + count) * kp]);
                r += count;
                (s, pix) = (s + 1, 0);
            }
        });
    }
}

/// The AVX-512 VBMI gather: A rows of at most 64 bytes built by byte permutes, and the band
/// rows by masked byte loads and stores.
#[cfg(target_arch = "x86_64")]
mod vbmi {
    use std::arch::x86_64::*;

    use super::{PadGeom, Segment};

    /// Builds `per` A rows per 64-byte store: for each kernel row `i`, one 64-byte load of the
    /// band at the group's first window and one masked byte permute that places its spans.
    #[derive(Debug)]
    pub(super) struct Gather {
        /// A rows per store: `min(64 / kp, (64 − span) / step + 1)` (the last row's span must
        /// lie in the load).
        per: usize,
        kp: usize,
        /// Bytes between the windows of neighbouring pixels (`sw·C_in`).
        step: usize,
        /// Per kernel row `i`: store byte `q·kp + i·span + j` takes load byte `q·step + j`.
        idx: Box<[[u8; 64]]>,
        /// Per kernel row `i`: the store bytes it writes (columns `i·span..(i + 1)·span`).
        mask: Box<[u64]>,
    }

    impl Gather {
        /// The gather for `kh` kernel rows of `span` bytes, windows `step` bytes apart, rows of
        /// `kp ≤ 64` bytes; `None` unless the CPU has AVX-512 F, BW and VBMI.
        pub(super) fn new(kh: usize, span: usize, step: usize, kp: usize) -> Option<Self> {
            if kp > 64 || kh * span > kp || span == 0 || span > 64 || step == 0 {
                return None;
            }
            if !(is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vbmi"))
            {
                return None;
            }
            let per = (64 / kp).min((64 - span) / step + 1);
            let mut idx = vec![[0u8; 64]; kh];
            let mut mask = vec![0u64; kh];
            for q in 0..per {
                for i in 0..kh {
                    for j in 0..span {
                        let b = q * kp + i * span + j;
                        idx[i][b] = (q * step + j) as u8;
                        mask[i] |= 1 << b;
                    }
                }
            }
            Some(Self {
                per,
                kp,
                step,
                idx: idx.into(),
                mask: mask.into(),
            })
        }

        /// `PaddedIm2col::rows`.
        ///
        /// Panics if a load would leave `band`, `out` is short, or `seg` has another step or
        /// kernel height.
        pub(super) fn rows(&self, band: &[u8], seg: &Segment, out: &mut [u8]) {
            if seg.count == 0 {
                return;
            }
            let kh = self.idx.len();
            // The last row's window starts last (lines are further apart than a line's
            // windows); every group's loads start at or before it.
            let end = seg.window(seg.count - 1) + (kh - 1) * seg.hstep + 64;
            assert!(seg.step == self.step && seg.kh == kh);
            assert!(end <= band.len() && seg.count * self.kp <= out.len());
            // SAFETY: the gather exists only where the CPU has its features (`new`); every
            // load lies in `band` (assert), every store in `out`'s first count·kp bytes.
            unsafe {
                match kh {
                    1 => gather::<1>(self, band.as_ptr(), seg, out.as_mut_ptr()),
                    2 => gather::<2>(self, band.as_ptr(), seg, out.as_mut_ptr()),
                    3 => gather::<3>(self, band.as_ptr(), seg, out.as_mut_ptr()),
                    4 => gather::<4>(self, band.as_ptr(), seg, out.as_mut_ptr()),
                    _ => gather::<0>(self, band.as_ptr(), seg, out.as_mut_ptr()),
                }
            }
        }

        /// `PaddedIm2col::pad_rows`.
        ///
        /// Panics if `band` has fewer than `rows` lines and 64 bytes, a line is shorter than
        /// `left + width` bytes, or `sample` has fewer than `h` input rows.
        pub(super) fn pad_rows(
            &self,
            band: &mut [u8],
            rows: usize,
            ih0: isize,
            sample: &[u8],
            p: PadGeom,
        ) {
            assert!(rows * p.line + 64 <= band.len() && p.left + p.width <= p.line);
            assert!(p.h * p.width <= sample.len());
            // SAFETY: the gather exists only where the CPU has AVX-512 F and BW (`new`); the
            // stores lie in band[..rows·line], the loads in sample[..h·width] (asserts).
            unsafe { pad_rows(band.as_mut_ptr(), rows, ih0, sample.as_ptr(), p) }
        }
    }

    /// [`Gather::rows`] with `KH` kernel rows (`KH = 0`: the gather's own count, read per
    /// group; `KH ≥ 1`: index vectors kept in registers).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VBMI; `KH` is 0 or the gather's kernel height; for every
    /// row `c < seg.count`, `band + seg.window(c) + (kh − 1)·hstep` has 64 readable bytes;
    /// `out` has `seg.count·kp` writable bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn gather<const KH: usize>(g: &Gather, band: *const u8, seg: &Segment, out: *mut u8) {
        let (per, kp) = (g.per, g.kp);
        let mut ix = [_mm512_setzero_si512(); 4];
        let mut mk = [0u64; 4];
        for i in 0..KH {
            // SAFETY: idx[i] holds 64 bytes (KH is the gather's kernel height).
            ix[i] = unsafe { _mm512_loadu_si512(g.idx[i].as_ptr().cast()) };
            mk[i] = g.mask[i];
        }
        for (c0, n_line) in seg.lines() {
            let src = band.wrapping_add(seg.window(c0));
            let out = out.wrapping_add(c0 * kp);
            let mut c = 0;
            while c < n_line {
                let n = per.min(n_line - c);
                let at = src.wrapping_add(c * seg.step);
                let mut acc = _mm512_setzero_si512();
                if KH > 0 {
                    for i in 0..KH {
                        // SAFETY: the window of row c0 + c; in bounds (the caller's contract).
                        let v = unsafe { _mm512_loadu_si512(at.add(i * seg.hstep).cast()) };
                        acc = _mm512_mask_permutexvar_epi8(acc, mk[i], ix[i], v);
                    }
                } else {
                    for (i, (idx, &m)) in g.idx.iter().zip(g.mask.iter()).enumerate() {
                        // SAFETY: as above; idx holds 64 bytes.
                        unsafe {
                            let v = _mm512_loadu_si512(at.add(i * seg.hstep).cast());
                            let ix = _mm512_loadu_si512(idx.as_ptr().cast());
                            acc = _mm512_mask_permutexvar_epi8(acc, m, ix, v);
                        }
                    }
                }
                // SAFETY: rows c0 + c .. c0 + c + n of `out` (the caller's contract); a whole
                // 64-byte store, where it stays inside the segment's rows, runs into rows that
                // are written after it.
                unsafe {
                    if (c0 + c) * kp + 64 <= seg.count * kp {
                        _mm512_storeu_si512(out.add(c * kp).cast(), acc);
                    } else {
                        _mm512_mask_storeu_epi8(out.add(c * kp).cast(), bytes(n * kp), acc);
                    }
                }
                c += per;
            }
        }
    }

    /// [`Gather::pad_rows`], with whole 64-byte stores: each may run past its part of the row
    /// into later bytes, which are written after it (rows and their parts go in order: `Z1`
    /// over the row, the input row, `Z1` over the right padding); the last row's spill lands in
    /// the 64 bytes after the rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; `band` has `rows·p.line + 64` writable bytes, `sample`
    /// `p.h·p.width` readable ones; `p.left + p.width ≤ p.line`.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pad_rows(band: *mut u8, rows: usize, ih0: isize, sample: *const u8, p: PadGeom) {
        let z = _mm512_set1_epi8(p.z1 as i8);
        // SAFETY (every store below): it starts inside band row b < rows, at byte j < line, so
        // it ends before rows·line + 64.
        let fill = |at: *mut u8, from: usize| {
            let mut j = from;
            while j < p.line {
                unsafe { _mm512_storeu_si512(at.wrapping_add(j).cast(), z) };
                j += 64;
            }
        };
        for b in 0..rows {
            let row = band.wrapping_add(b * p.line);
            let ih = ih0 + b as isize;
            if ih < 0 || ih as usize >= p.h {
                fill(row, 0);
                continue;
            }
            if p.left > 0 {
                fill(row, 0);
            }
            let src = sample.wrapping_add(ih as usize * p.width);
            let mut j = 0;
            while j < p.width {
                // SAFETY: the load reads bytes j..min(j + 64, width) of input row ih < h; the
                // store starts at left + j < line.
                unsafe {
                    let v = _mm512_maskz_loadu_epi8(bytes(p.width - j), src.add(j).cast());
                    _mm512_storeu_si512(row.add(p.left + j).cast(), v);
                }
                j += 64;
            }
            fill(row, p.left + p.width);
        }
    }

    /// The mask of the first `min(n, 64)` bytes.
    #[inline(always)]
    fn bytes(n: usize) -> u64 {
        if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
    }
}
