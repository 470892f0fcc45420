//! How a conv's `A` rows are made from the NHWC input: the indirection table of the implicit
//! im2col (tap-segment pointers) and the tiled im2col copy.

use std::ops::Range;

use super::ConvPlan;
use crate::kernels::copy::{copy_row, fill_small};

/// The `A` columns of one conv group: input channels `ch0..ch0 + cig`, rows of `kp` bytes
/// (columns `kh·kw·cig..kp` zero).
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupCols {
    /// First input channel of the group.
    pub(super) ch0: usize,
    /// Input channels per group.
    pub(super) cig: usize,
    /// Padded row length.
    pub(super) kp: usize,
}

impl ConvPlan {
    /// Indirection table for rows `row0..row0 + rows`: `ptrs[r·taps + (i·kw + j)]` points at the
    /// `C_in` input bytes of tap `(i, j)`, or at the `Z1` row for padding (groups == 1).
    pub(super) fn tap_pointers(
        &self,
        input: &[u8],
        row0: usize,
        rows: usize,
        ptrs: &mut [*const u8],
    ) {
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let [_, kh, kw, _] = self.geom.weight_shape;
        let ([sh, sw], [dh, dw]) = (self.geom.stride, self.geom.dilation);
        let (pt, pl) = (self.geom.padding[0], self.geom.padding[1]);
        let taps = kh * kw;
        let sample_len = h * w * cin;
        // (sample, oh, ow) of the first row, then advanced incrementally.
        let (mut s, mut oh, mut ow) = out_pos(row0, ho, wo);
        for r in 0..rows {
            let sample = &input[s * sample_len..(s + 1) * sample_len];
            let dst = &mut ptrs[r * taps..(r + 1) * taps];
            let inside = oh * sh >= pt
                && oh * sh + (kh - 1) * dh < h + pt
                && ow * sw >= pl
                && ow * sw + (kw - 1) * dw < w + pl;
            if inside {
                // Every tap is in bounds: base pointer plus fixed offsets.
                let base = ((oh * sh - pt) * w + (ow * sw - pl)) * cin;
                for i in 0..kh {
                    for j in 0..kw {
                        dst[i * kw + j] = sample[base + (i * dh * w + j * dw) * cin..].as_ptr();
                    }
                }
            } else {
                for i in 0..kh {
                    let ih = (oh * sh + i * dh) as isize - pt as isize;
                    for j in 0..kw {
                        let iw = (ow * sw + j * dw) as isize - pl as isize;
                        dst[i * kw + j] =
                            if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                                sample[(ih as usize * w + iw as usize) * cin..].as_ptr()
                            } else {
                                self.zero_row.as_ptr()
                            };
                    }
                }
            }
            ow += 1;
            carry_line(&mut s, &mut oh, &mut ow, ho, wo);
        }
    }

    /// Tiled im2col: `rows` of `A` (row = (sample, oh, ow)) for group `g` (column
    /// `(i·kw + j)·cig + ci` matching OHWI), padded cells = `Z1`, columns `k..kp` = 0.
    ///
    /// The output position advances row by row (no division per row). A row whose taps are all
    /// inside the input, of an undilated-in-width dense conv, is `kh` spans of `kw·C_in` bytes,
    /// copied with fixed-size moves when a span has at most 16 bytes (the small-`C_in` stems,
    /// whose rows would otherwise be a few `memcpy` calls of 3 bytes); other rows resolve their
    /// taps one by one.
    pub(super) fn im2col(&self, input: &[u8], g: GroupCols, rows: Range<usize>, dst: &mut [u8]) {
        let (kw, cin) = (self.geom.weight_shape[2], self.in_hwc[2]);
        let span = if g.cig == cin && self.geom.dilation[1] == 1 {
            kw * cin
        } else {
            0
        };
        macro_rules! spans {
            ($($n:literal)*) => {
                match span {
                    $($n => self.im2col_rows::<$n>(input, g, rows, dst),)*
                    _ => self.im2col_rows::<0>(input, g, rows, dst),
                }
            };
        }
        spans!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// [`ConvPlan::im2col`] with inside rows copied as spans of `L` bytes (`L = kw·C_in`; `L = 0`:
    /// spans of a run-time length, or no spans when `cig ≠ C_in` or the width is dilated).
    ///
    /// Rows go output line by output line: on a line whose kernel rows are all inside the input,
    /// the pixels whose taps are all inside (a range of `ow` fixed by the geometry) are copied by
    /// one loop that advances the source by `sw·C_in` bytes per row; the others go
    /// [`ConvPlan::im2col_row`].
    fn im2col_rows<const L: usize>(
        &self,
        input: &[u8],
        g: GroupCols,
        rows: Range<usize>,
        dst: &mut [u8],
    ) {
        let (cig, kp) = (g.cig, g.kp);
        let (row0, rows) = (rows.start, rows.len());
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let [_, kh, kw, _] = self.geom.weight_shape;
        let ([sh, sw], [dh, dw]) = (self.geom.stride, self.geom.dilation);
        let (pt, pl) = (self.geom.padding[0], self.geom.padding[1]);
        let k = kh * kw * cig;
        let fast = L > 0 && cig == cin && dw == 1 && kh * L == k && k <= kp;
        // Output columns whose taps are all inside the width: ow·sw ≥ pl and
        // ow·sw − pl + (kw − 1)·dw < w.
        let ow_lo = pl.div_ceil(sw).min(wo);
        let ow_hi = (w + pl)
            .checked_sub((kw - 1) * dw)
            .map_or(0, |e| e.div_ceil(sw))
            .clamp(ow_lo, wo);
        let hstep = dh * w * cin;
        let sample_len = h * w * cin;
        let (mut s, mut oh, mut ow) = out_pos(row0, ho, wo);
        let mut r = 0;
        while r < rows {
            // The rows of output line (s, oh) from column ow.
            let end = wo.min(ow + rows - r);
            let sample = &input[s * sample_len..(s + 1) * sample_len];
            let ih0 = (oh * sh) as isize - pt as isize;
            let inside_h = ih0 >= 0 && ih0 as usize + (kh - 1) * dh < h;
            let (a, b) = if fast && inside_h {
                (ow_lo.clamp(ow, end), ow_hi.clamp(ow, end))
            } else {
                (end, end)
            };
            for c in (ow..a).chain(b..end) {
                let row = &mut dst[(r + c - ow) * kp..(r + c - ow + 1) * kp];
                self.im2col_row(sample, [oh, c], g, row);
                fill_small(&mut row[k..], 0);
            }
            if a < b {
                let first = (ih0 as usize * w + a * sw - pl) * cin;
                let span = &mut dst[(r + a - ow) * kp..(r + b - ow) * kp];
                copy_spans::<L>(sample, [first, sw * cin, hstep], kh, kp, span);
            }
            r += end - ow;
            ow = end;
            carry_line(&mut s, &mut oh, &mut ow, ho, wo);
        }
    }

    /// Columns `0..kh·kw·cig` of the A row of output pixel `[oh, ow]` of `sample`: padded taps
    /// are `Z1`; a row whose taps are all inside, of a dense conv undilated in width, is `kh`
    /// spans of `kw·C_in` bytes.
    fn im2col_row(&self, sample: &[u8], [oh, ow]: [usize; 2], g: GroupCols, row: &mut [u8]) {
        let (ch0, cig) = (g.ch0, g.cig);
        let [h, w, cin] = self.in_hwc;
        let [_, kh, kw, _] = self.geom.weight_shape;
        let ([sh, sw], [dh, dw]) = (self.geom.stride, self.geom.dilation);
        let (pt, pl) = (self.geom.padding[0] as isize, self.geom.padding[1] as isize);
        let zp = self.zp_in.clamp(0, 255) as u8;
        let ih0 = (oh * sh) as isize - pt;
        let iw0 = (ow * sw) as isize - pl;
        let inside_w = iw0 >= 0 && iw0 as usize + (kw - 1) * dw < w;
        let inside_h = ih0 >= 0 && ih0 as usize + (kh - 1) * dh < h;
        if cig == cin && dw == 1 && inside_w && inside_h {
            let len = kw * cin;
            let base = (ih0 as usize * w + iw0 as usize) * cin;
            for i in 0..kh {
                let at = base + i * dh * w * cin;
                row[i * len..(i + 1) * len].copy_from_slice(&sample[at..at + len]);
            }
            return;
        }
        for i in 0..kh {
            let ih = ih0 + (i * dh) as isize;
            let seg = &mut row[i * kw * cig..(i + 1) * kw * cig];
            if ih < 0 || ih as usize >= h {
                fill_small(seg, zp);
                continue;
            }
            let line = &sample[ih as usize * w * cin..(ih as usize + 1) * w * cin];
            for j in 0..kw {
                let iw = iw0 + (j * dw) as isize;
                let tap = &mut seg[j * cig..(j + 1) * cig];
                if iw >= 0 && (iw as usize) < w {
                    let at = iw as usize * cin + ch0;
                    copy_row(tap, &line[at..at + cig]);
                } else {
                    fill_small(tap, zp);
                }
            }
        }
    }
}

/// `(sample, oh, ow)` of output row `row` (row = (sample, oh, ow), `ho × wo` rows per sample).
#[inline(always)]
pub(super) fn out_pos(row: usize, ho: usize, wo: usize) -> (usize, usize, usize) {
    let (s, pix) = (row / (ho * wo), row % (ho * wo));
    (s, pix / wo, pix % wo)
}

/// After `ow` was advanced: a finished output line (`ow == wo`) carries into the next line, the
/// last line of a sample into the next sample.
#[inline(always)]
pub(super) fn carry_line(s: &mut usize, oh: &mut usize, ow: &mut usize, ho: usize, wo: usize) {
    if *ow == wo {
        *ow = 0;
        *oh += 1;
        if *oh == ho {
            *oh = 0;
            *s += 1;
        }
    }
}

/// A rows from spans: row `c` of `out` (rows of `kp` bytes, `out.len() / kp` of them) is the `kh`
/// spans of `L` bytes at `src[first + c·step + i·hstep]` (`i < kh`), then zeros up to `kp`.
///
/// Panics if a span lies outside `src` or `kh·L > kp`.
#[inline(always)]
pub(super) fn copy_spans<const L: usize>(
    src: &[u8],
    [first, step, hstep]: [usize; 3],
    kh: usize,
    kp: usize,
    out: &mut [u8],
) {
    let (count, k) = (out.len() / kp, kh * L);
    if count == 0 {
        return;
    }
    let last = first + (count - 1) * step + (kh - 1) * hstep + L;
    assert!(kh >= 1 && last <= src.len() && k <= kp);
    // SAFETY: row c reads kh spans of L bytes from first + c·step, hstep apart, the last one
    // ending at `last` ≤ src.len() (assert); it writes its kp bytes inside `out` (c < count),
    // k ≤ kp (assert), the zero tail through a slice of its own; `out` and `src` are distinct
    // borrows.
    unsafe {
        let (mut from, mut to) = (src.as_ptr().add(first), out.as_mut_ptr());
        for _ in 0..count {
            for i in 0..kh {
                std::ptr::copy_nonoverlapping(from.add(i * hstep), to.add(i * L), L);
            }
            fill_small(std::slice::from_raw_parts_mut(to.add(k), kp - k), 0);
            from = from.add(step);
            to = to.add(kp);
        }
    }
}
