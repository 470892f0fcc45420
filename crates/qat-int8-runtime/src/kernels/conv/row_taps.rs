//! The row-tap form of a dense conv with few input channels (the stems: `C_in` = 1 or 3), which
//! replaces the im2col copy by an indirect GEMM over the kernel's rows.
//!
//! In NHWC one kernel row of an output pixel, `kw·C_in` input bytes, is contiguous. Each sample is
//! copied once into a buffer padded with `Z1` (the conv's padding, plus a few bytes of slack);
//! then A row `(s, oh, ow)` is `kh` segments of `seg = ⌈kw·C_in / 4⌉·4` bytes read in place at
//! `((oh·sh + i·dh)·Wp + ow·sw)·C_in`, and the packed weights hold `[kh][seg]` per output channel
//! with zero weights at the `seg − kw·C_in` bytes a segment reads past its kernel row. So a 3×3
//! stem on one channel is three 4-byte broadcasts and three `vpdpbusd` per output pixel, and
//! nothing is copied per pixel. Bit-exact with the im2col form: the extra bytes meet zero weights,
//! the padding cells hold `Z1` as the reference's do.

use std::cell::RefCell;

use super::ConvPlan;
use crate::kernels::KernelPath;
use crate::kernels::copy::copy_row;
use crate::kernels::frame::{ASource, KernelError, LayerSpec, OutPtr, PackedB};

/// Widest kernel row (`kw·C_in` bytes) the row-tap form takes.
const MAX_ROW_BYTES: usize = 32;

/// Padded batches up to this size stay allocated on their thread between calls.
const CACHED_BYTES: usize = 4 << 20;

/// A thread's padded samples and what they were built for (`[len, Hp, Wp, C_in, pt, pl, H, W,
/// Z1]`).
#[derive(Default)]
struct Padded {
    buf: Vec<u8>,
    key: [usize; 9],
}

thread_local! {
    /// The padded samples of the last row-tap conv on this thread (at most [`CACHED_BYTES`]).
    static PADDED: RefCell<Padded> = RefCell::new(Padded::default());
}

/// A dense conv's packed weights in the row-tap layout, and the padded geometry.
#[derive(Debug)]
pub(super) struct RowTaps {
    /// Bytes per kernel-row segment, `⌈kw·C_in / 4⌉·4`.
    seg: usize,
    /// Padded sample rows and columns.
    hp: usize,
    wp: usize,
    /// Bytes per padded sample, slack included.
    sample: usize,
    pub(super) packed: PackedB,
}

impl RowTaps {
    /// The row-tap form of a dense (`groups == 1`) conv with OHWI weights `data` of shape
    /// `[cout, kh, kw, cin]` on `[h, w, cin]` inputs, when it applies: `C_in % 4 ≠ 0` (the
    /// per-tap indirect GEMM takes the others), an undilated width, a kernel row of at most
    /// [`MAX_ROW_BYTES`] bytes.
    pub(super) fn new(
        path: KernelPath,
        weight_shape: [usize; 4],
        in_hw: [usize; 2],
        padding: [usize; 4],
        dilation_w: usize,
        layer: &LayerSpec<'_>,
    ) -> Option<Result<Self, KernelError>> {
        let [cout, kh, kw, cin] = weight_shape;
        let row = kw * cin;
        if cin % 4 == 0 || dilation_w != 1 || row > MAX_ROW_BYTES || path.kernels().is_none() {
            return None;
        }
        let [h, wi] = in_hw;
        let (hp, wp) = (h + padding[0] + padding[2], wi + padding[1] + padding[3]);
        // The padded copy stays within twice the input sample plus 64 KiB (huge paddings keep
        // the im2col form, which never materializes them).
        if hp.saturating_mul(wp).saturating_mul(cin) > (2 * h * wi * cin).saturating_add(1 << 16) {
            return None;
        }
        let seg = row.div_ceil(4) * 4;
        let mut w = vec![0i8; cout * kh * seg];
        for (o, chunk) in w.chunks_exact_mut(kh * seg).enumerate() {
            for i in 0..kh {
                let src = &layer.weights[(o * kh + i) * row..(o * kh + i + 1) * row];
                chunk[i * seg..i * seg + row].copy_from_slice(src);
            }
        }
        let spec = LayerSpec {
            weights: &w,
            ..*layer
        };
        Some(
            PackedB::new(path, cout, kh * seg, &spec).map(|packed| Self {
                seg,
                hp,
                wp,
                sample: hp * wp * cin + seg,
                packed,
            }),
        )
    }

    /// Runs the conv on `n` samples of `input` (NHWC) into `out`.
    ///
    /// # Safety
    /// `out` is valid for `n·Ho·Wo` rows of `C_out` elements at its stride; `input` holds `n`
    /// samples; `plan` is the plan this form was built for.
    pub(super) unsafe fn run(&self, plan: &ConvPlan, input: &[u8], n: usize, out: OutPtr) {
        let [h, w, cin] = plan.in_hwc;
        let (pt, pl) = (plan.geom.padding[0], plan.geom.padding[1]);
        let z1 = plan.zero_row.first().copied().unwrap_or(0);
        let key = [
            n * self.sample,
            self.hp,
            self.wp,
            cin,
            pt,
            pl,
            h,
            w,
            z1 as usize,
        ];
        let pad = |p: &mut Padded| {
            // The border (and the slack) is Z1 and never written: rebuilt only when the
            // geometry, the zero point or the batch changes; the rows are copied every call.
            if p.key != key || p.buf.len() != n * self.sample {
                p.buf.clear();
                p.buf.resize(n * self.sample, z1);
                p.key = key;
            }
            for (s, dst) in p.buf.chunks_exact_mut(self.sample).enumerate() {
                let src = &input[s * h * w * cin..(s + 1) * h * w * cin];
                for (y, line) in src.chunks_exact(w * cin).enumerate() {
                    let at = ((y + pt) * self.wp + pl) * cin;
                    copy_row(&mut dst[at..at + w * cin], line);
                }
            }
        };
        let small = n * self.sample <= CACHED_BYTES;
        PADDED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut p) if small => {
                pad(&mut p);
                // SAFETY: as documented.
                unsafe { self.gemm(plan, &p.buf, n, out) }
            }
            // Too large to keep, or the cache is in use further up this thread's stack (rayon
            // may run another conv here while this one waits): a buffer of this call's own.
            _ => {
                let mut p = Padded::default();
                pad(&mut p);
                // SAFETY: as documented.
                unsafe { self.gemm(plan, &p.buf, n, out) }
            }
        })
    }

    /// The GEMM over the padded samples `padded` (`n` of [`RowTaps::sample`] bytes each).
    ///
    /// # Safety
    /// As [`RowTaps::run`]; `padded` built for this form and `n` samples.
    unsafe fn gemm(&self, plan: &ConvPlan, padded: &[u8], n: usize, out: OutPtr) {
        let [_, _, cin] = plan.in_hwc;
        let [ho, wo, _] = plan.out_hwc;
        let [_, kh, _, _] = plan.geom.weight_shape;
        let ([sh, sw], dh) = (plan.geom.stride, plan.geom.dilation[0]);
        assert!(padded.len() >= n * self.sample, "padded samples too small");
        let buf: &[u8] = padded;
        let (sample, wp) = (self.sample, self.wp);
        // Row (s, oh, ow) starts at s·sample + (oh·sh·Wp + ow·sw)·C_in; its kernel rows are
        // dh·Wp·C_in apart. Positions advance incrementally (no division per row).
        let (rstep, pstep) = (dh * wp * cin, sw * cin);
        let fill_ptrs = |row0: usize, rows: usize, ptrs: &mut [*const u8]| {
            let geo = Walk {
                base: buf.as_ptr(),
                sample,
                line: sh * wp * cin,
                pstep,
                rstep,
                ho,
                wo,
            };
            match kh {
                1 => geo.fill::<1>(row0, rows, ptrs),
                3 => geo.fill::<3>(row0, rows, ptrs),
                5 => geo.fill::<5>(row0, rows, ptrs),
                7 => geo.fill::<7>(row0, rows, ptrs),
                _ => geo.fill::<0>(row0, rows, &mut ptrs[..rows * kh]),
            }
        };
        // SAFETY: seg % 4 == 0 and kh·seg == kp; every pointer addresses seg bytes inside
        // `padded` (the last kernel row of a sample ends at most seg − kw·C_in bytes past the
        // padded sample, inside its slack), which lives and is not modified during the call;
        // `out` as the caller guarantees.
        unsafe {
            let src = ASource::indirect(kh, self.seg, &fill_ptrs);
            self.packed.gemm_unchecked(n * ho * wo, &src, out);
        }
    }
}

/// Where the kernel rows of consecutive A rows start in the padded samples.
struct Walk {
    base: *const u8,
    /// Bytes per padded sample.
    sample: usize,
    /// Bytes between output lines (`sh·Wp·C_in`).
    line: usize,
    /// Bytes between output pixels (`sw·C_in`).
    pstep: usize,
    /// Bytes between kernel rows (`dh·Wp·C_in`).
    rstep: usize,
    ho: usize,
    wo: usize,
}

impl Walk {
    /// The kernel-row pointers of rows `row0..row0 + rows`, `KH` per row (`KH = 0`: as many as
    /// `ptrs` holds per row, `ptrs.len() / rows`). Positions advance incrementally.
    #[inline(always)]
    fn fill<const KH: usize>(&self, row0: usize, rows: usize, ptrs: &mut [*const u8]) {
        if rows == 0 {
            return;
        }
        let kh = if KH == 0 { ptrs.len() / rows } else { KH };
        let (ho, wo) = (self.ho, self.wo);
        let (mut s, mut oh, mut ow) = (row0 / (ho * wo), (row0 / wo) % ho, row0 % wo);
        let mut at = s * self.sample + oh * self.line + ow * self.pstep;
        for p in ptrs[..rows * kh].chunks_exact_mut(kh) {
            for (i, ptr) in p.iter_mut().enumerate() {
                *ptr = self.base.wrapping_add(at + i * self.rstep);
            }
            ow += 1;
            at += self.pstep;
            if ow == wo {
                ow = 0;
                oh += 1;
                if oh == ho {
                    oh = 0;
                    s += 1;
                }
                at = s * self.sample + oh * self.line;
            }
        }
    }
}
