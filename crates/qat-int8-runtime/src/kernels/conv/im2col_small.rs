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

use super::im2col::{carry_line, copy_spans, out_pos};
use super::{ConvGeom, ConvPlan};
use crate::kernels::KernelPath;

/// Largest padded sample, in bytes, the band path takes (its scratch holds at most one band, at
/// most one padded sample, per thread).
const PADDED_SAMPLE_MAX: usize = 1 << 20;

/// Bytes past a band's end, filled with `Z1`, that the vector gather's 64-byte loads may cover
/// (the bytes it keeps all lie inside the band).
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

    /// Whether the rows are gathered by byte permutes.
    pub(super) fn gathers(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.vbmi.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Rows of `out` (`out.len() / kp` of them): row `c` is the `kh` spans of `span` bytes at
    /// `band[first + c·step + i·hstep]`, then zeros up to `kp`.
    fn rows(&self, band: &[u8], at: [usize; 3], kh: usize, out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(g) = &self.vbmi {
            g.rows(band, at, out);
            return;
        }
        macro_rules! spans {
            ($($n:literal)*) => {
                match self.span {
                    $($n => copy_spans::<$n>(band, at, kh, self.kp, out),)*
                    _ => unreachable!("the span is checked in PaddedIm2col::new"),
                }
            };
        }
        spans!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }
}

impl ConvPlan {
    /// [`ConvPlan::im2col`] through the band: rows `row0..row0 + rows` of `A` (row =
    /// (sample, oh, ow), column `(i·kw + j)·C_in + ci`, padded cells `Z1`, columns `k..kp` 0).
    ///
    /// For each sample the rows touch, the band holds padded input rows
    /// `oh₀·sh ..= oh₁·sh + (kh − 1)·dh` (the first and last output lines of the sample's rows);
    /// output line `oh`, pixel `ow` then starts at band row `oh·sh − oh₀·sh`, column `ow·sw`.
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
        let kp = pad.kp;
        let (sample_len, per_sample) = (h * w * cin, ho * wo);
        let line = pad.wp * cin;
        let (mut s, mut oh, mut ow) = out_pos(row0, ho, wo);
        let mut r = 0;
        BAND.with(|b| {
            let band = &mut *b.borrow_mut();
            while r < rows {
                // The rows of sample s from (oh, ow): up to the call's end or the sample's.
                let r_end = r + (rows - r).min(per_sample - (oh * wo + ow));
                let oh_last = (oh * wo + ow + (r_end - r) - 1) / wo;
                let top = oh * sh;
                let sample = &input[s * sample_len..(s + 1) * sample_len];
                self.pad_band(sample, top, oh_last * sh + (kh - 1) * dh + 1, pad.wp, band);
                while r < r_end {
                    let end = wo.min(ow + r_end - r);
                    let first = (oh * sh - top) * line + ow * sw * cin;
                    let out = &mut dst[r * kp..(r + end - ow) * kp];
                    pad.rows(band, [first, sw * cin, dh * line], kh, out);
                    r += end - ow;
                    ow = end;
                    carry_line(&mut s, &mut oh, &mut ow, ho, wo);
                }
            }
        });
    }

    /// Fills `band` with padded input rows `top..bottom` of `sample` (`wp` pixels each, padding
    /// and rows outside the input `Z1`), then [`SLACK`] bytes of `Z1`.
    fn pad_band(&self, sample: &[u8], top: usize, bottom: usize, wp: usize, band: &mut Vec<u8>) {
        let [h, w, cin] = self.in_hwc;
        let (pt, pl) = (self.geom.padding[0], self.geom.padding[1]);
        let line = wp * cin;
        band.clear();
        band.resize((bottom - top) * line + SLACK, self.zero_row[0]);
        for (b, pr) in (top..bottom).enumerate() {
            if let Some(ih) = pr.checked_sub(pt).filter(|&ih| ih < h) {
                let at = b * line + pl * cin;
                band[at..at + w * cin].copy_from_slice(&sample[ih * w * cin..(ih + 1) * w * cin]);
            }
        }
    }
}

/// The AVX-512 VBMI gather: A rows of at most 64 bytes built by byte permutes.
#[cfg(target_arch = "x86_64")]
mod vbmi {
    use std::arch::x86_64::*;

    /// Builds `per` A rows per 64-byte store: for each kernel row `i`, one 64-byte load of the
    /// band at the group's first pixel and one masked byte permute that places its spans.
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

        /// `PaddedIm2col::rows` (`at = [first, step, hstep]`, `step` the gather's own).
        ///
        /// Panics if a load would leave `src` or `at` has another step.
        pub(super) fn rows(&self, src: &[u8], [first, step, hstep]: [usize; 3], out: &mut [u8]) {
            let count = out.len() / self.kp;
            if count == 0 {
                return;
            }
            let kh = self.idx.len();
            let last_group = (count - 1) / self.per * self.per;
            let end = first + last_group * step + (kh - 1) * hstep + 64;
            assert!(step == self.step && end <= src.len());
            // SAFETY: the gather exists only where the CPU has its features (`new`); every
            // load lies in `src` (assert), every store in `out`'s count·kp bytes.
            unsafe {
                gather(
                    self,
                    src.as_ptr().add(first),
                    hstep,
                    count,
                    out.as_mut_ptr(),
                )
            }
        }
    }

    /// [`Gather::rows`] from `src` (the first pixel's window).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VBMI; `src + ⌊(count − 1)/per⌋·per·step + (kh − 1)·hstep`
    /// has 64 readable bytes; `out` has `count·kp` writable bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn gather(g: &Gather, src: *const u8, hstep: usize, count: usize, out: *mut u8) {
        let (per, kp) = (g.per, g.kp);
        let mut c = 0;
        while c < count {
            let n = per.min(count - c);
            let mut acc = _mm512_setzero_si512();
            for (i, (idx, &mask)) in g.idx.iter().zip(g.mask.iter()).enumerate() {
                // SAFETY: the load is in bounds (the caller's contract).
                unsafe {
                    let v = _mm512_loadu_si512(src.add(c * g.step + i * hstep).cast());
                    let ix = _mm512_loadu_si512(idx.as_ptr().cast());
                    acc = _mm512_mask_permutexvar_epi8(acc, mask, ix, v);
                }
            }
            let m = if n * kp == 64 {
                u64::MAX
            } else {
                (1u64 << (n * kp)) - 1
            };
            // SAFETY: rows c..c + n of `out` (the caller's contract).
            unsafe { _mm512_mask_storeu_epi8(out.add(c * kp).cast(), m, acc) };
            c += per;
        }
    }
}
