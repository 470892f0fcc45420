//! Depthwise conv (`groups == C_in == C_out`) vectorized over channels (NHWC keeps a pixel's
//! channels contiguous).
//!
//! For each output pixel the `kh·kw` taps are resolved to input pixel rows; a tap that falls in
//! the padding points at a row filled with `Z1` (XNNPACK's "zero buffer" indirection), so the
//! inner loop has no bounds checks and the zero-point correction folds into the bias exactly as
//! in the GEMM: `bias'[c] = bias[c] − Z1·Σ_t w[t, c]`, `acc[c] = bias'[c] + Σ_t x_t[c]·w[t, c]`.
//! Weights are stored widened to int32 `[tap][channel]` (padded to 64 channels) so that one
//! `vpdpwssd` (AVX-512 VNNI) or `vpmaddwd` (AVX2) per 16/8 channels multiplies zero-extended u8
//! activations by them exactly.

use qat_core::fixed_point::{QuantizedMultiplier, Rounding};
use rayon::prelude::*;

use super::KernelPath;
use super::gemm::{Epilogue, epilogue_scalar, round_up};

/// Channel padding of the prepared weights and epilogue arrays.
pub const CHANNEL_BLOCK: usize = 64;

/// A depthwise conv prepared for one path.
#[derive(Debug, Clone)]
pub struct DepthwisePlan {
    path: KernelPath,
    /// Channels.
    pub c: usize,
    cp: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 4],
    in_hwc: [usize; 3],
    out_hwc: [usize; 3],
    /// `[tap][cp]` int32 weights.
    w: Vec<i32>,
    /// Byte offset of tap `(i, j)` from tap `(0, 0)`: `(i·d_h·W + j·d_w)·C`.
    offsets: Vec<usize>,
    /// The AVX-512 VNNI layout (VNNI path only).
    #[cfg(target_arch = "x86_64")]
    vnni: Option<super::x86_64::avx512vnni::DepthwiseVnniLayout>,
    /// `Z1` repeated `cp` times: the padding row.
    zero_row: Vec<u8>,
    /// Epilogue constants, `cp` entries.
    pub epi: Epilogue,
}

/// Geometry of a depthwise conv.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseShape {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Input `[H, W, C]`.
    pub in_hwc: [usize; 3],
    /// Output `[Ho, Wo, C]`.
    pub out_hwc: [usize; 3],
}

thread_local! {
    static TAPS: std::cell::RefCell<(Vec<*const u8>, Vec<i32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// Per-row scratch of the fused VNNI path: border pixels' tap rows and output pointers.
    static BORDER: std::cell::RefCell<(Vec<*const u8>, Vec<*mut u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl DepthwisePlan {
    /// Prepares OHWI weights `[C, kh, kw, 1]` with bias, multipliers (one or per channel), input
    /// zero point `z1` and output stage `(z3, lo, hi)` rounded as `rounding` says.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: KernelPath,
        shape: DepthwiseShape,
        weights: &[i8],
        bias: &[i32],
        multipliers: &[QuantizedMultiplier],
        z1: i32,
        z3: i32,
        lo: i32,
        hi: i32,
        rounding: Rounding,
    ) -> Self {
        let c = shape.in_hwc[2];
        let cp = round_up(c, CHANNEL_BLOCK);
        let taps = shape.kernel[0] * shape.kernel[1];
        let mut w = vec![0i32; taps * cp];
        for ch in 0..c {
            for t in 0..taps {
                w[t * cp + ch] = weights[ch * taps + t] as i32;
            }
        }
        let m = |ch: usize| {
            if multipliers.len() == 1 {
                multipliers[0]
            } else {
                multipliers[ch]
            }
        };
        let mut epi = Epilogue::new(cp, c, m, z3, lo, hi, rounding);
        for ch in 0..c {
            let sum = (0..taps).fold(0i32, |s, t| s.wrapping_add(w[t * cp + ch]));
            epi.bias[ch] = bias[ch].wrapping_sub(z1.wrapping_mul(sum));
        }
        #[cfg(target_arch = "x86_64")]
        let vnni = (path == KernelPath::Avx512Vnni)
            .then(|| super::x86_64::avx512vnni::DepthwiseVnniLayout::new(&w, taps, c, cp, &epi));
        Self {
            #[cfg(target_arch = "x86_64")]
            vnni,
            path,
            c,
            cp,
            kernel: shape.kernel,
            stride: shape.stride,
            dilation: shape.dilation,
            padding: shape.padding,
            in_hwc: shape.in_hwc,
            out_hwc: shape.out_hwc,
            w,
            offsets: (0..shape.kernel[0])
                .flat_map(|i| {
                    (0..shape.kernel[1]).map(move |j| {
                        (i * shape.dilation[0] * shape.in_hwc[1] + j * shape.dilation[1]) * c
                    })
                })
                .collect(),
            zero_row: vec![z1.clamp(0, 255) as u8; cp],
            epi,
        }
    }

    /// Runs on a batch of `n` samples: `input` `[n, H, W, C]` → `out` `[n, Ho, Wo, C]` (u8), or
    /// the int32 accumulators `acc + bias'` into `out_i32` when given (tests).
    pub fn run(&self, input: &[u8], n: usize, out: &mut [u8]) {
        self.run_any(input, n, Some(out), None);
    }

    /// Like [`DepthwisePlan::run`] but writes the int32 accumulators (bias included).
    pub fn run_i32(&self, input: &[u8], n: usize, out: &mut [i32]) {
        self.run_any(input, n, None, Some(out));
    }

    fn run_any(&self, input: &[u8], n: usize, out: Option<&mut [u8]>, out_i32: Option<&mut [i32]>) {
        let [h, w, c] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        if n == 0 || ho == 0 || wo == 0 || c == 0 {
            return;
        }
        // The SIMD kernels read and write through raw pointers: enforce the buffer contract.
        assert!(
            input.len() >= n * h * w * c,
            "depthwise input too small for {n} samples"
        );
        let out_len = out
            .as_deref()
            .map_or(0, <[u8]>::len)
            .max(out_i32.as_deref().map_or(0, <[i32]>::len));
        assert!(
            out_len >= n * ho * wo * c,
            "depthwise output too small for {n} samples"
        );
        let row_len = wo * c;
        let row = |idx: usize, o: Option<&mut [u8]>, o32: Option<&mut [i32]>| {
            let (s, oh) = (idx / ho, idx % ho);
            let sample = &input[s * h * w * c..(s + 1) * h * w * c];
            TAPS.with(|t| {
                let mut t = t.borrow_mut();
                let (taps, acc) = &mut *t;
                self.output_row(sample, oh, taps, acc, o, o32);
            });
        };
        match (out, out_i32) {
            (Some(o), _) => o
                .par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(i, o)| row(i, Some(o), None)),
            (None, Some(o)) => o
                .par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(i, o)| row(i, None, Some(o))),
            (None, None) => {}
        }
    }

    /// Appends output pixel `(oh, ow)`'s `kh·kw` tap rows (the `Z1` row for padding taps).
    fn push_taps(&self, sample: &[u8], oh: usize, ow: usize, taps: &mut Vec<*const u8>) {
        let [h, w, c] = self.in_hwc;
        for i in 0..self.kernel[0] {
            let ih =
                (oh * self.stride[0] + i * self.dilation[0]) as isize - self.padding[0] as isize;
            for j in 0..self.kernel[1] {
                let iw = (ow * self.stride[1] + j * self.dilation[1]) as isize
                    - self.padding[1] as isize;
                let inside = ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w;
                taps.push(if inside {
                    sample[(ih as usize * w + iw as usize) * c..].as_ptr()
                } else {
                    self.zero_row.as_ptr()
                });
            }
        }
    }

    /// One output row: resolve taps per pixel, then run the path's pixel kernel.
    fn output_row(
        &self,
        sample: &[u8],
        oh: usize,
        taps: &mut Vec<*const u8>,
        acc: &mut Vec<i32>,
        mut out: Option<&mut [u8]>,
        mut out_i32: Option<&mut [i32]>,
    ) {
        let [h, w, c] = self.in_hwc;
        let [_, wo, _] = self.out_hwc;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        let (pt, pl) = (self.padding[0], self.padding[1]);
        // Output columns whose taps are all inside the input (and the row is inside vertically):
        // they take the no-bounds-check interior kernel.
        let rows_inside = oh * sh >= pt && oh * sh + (kh - 1) * dh - pt < h;
        let ow_lo = pl.div_ceil(sw);
        let ow_hi = match (w - 1 + pl).checked_sub((kw - 1) * dw) {
            Some(v) if rows_inside => (v / sw + 1).min(wo),
            _ => 0,
        };
        let interior = self.path == KernelPath::Avx512Vnni && ow_lo < ow_hi;
        #[cfg(target_arch = "x86_64")]
        if let (Some(l), Some(o)) = (&self.vnni, out.as_deref_mut())
            && l.fused
        {
            let (ilo, ihi) = if interior { (ow_lo, ow_hi) } else { (0, 0) };
            // Every output pointer derives from one base pointer of the row (`wo·c` bytes).
            assert!(o.len() >= wo * c, "depthwise output row too small");
            let op = o.as_mut_ptr();
            BORDER.with(|b| {
                let mut b = b.borrow_mut();
                let (list, outs) = &mut *b;
                list.clear();
                outs.clear();
                for ow in (0..wo).filter(|&ow| ow < ilo || ow >= ihi) {
                    self.push_taps(sample, oh, ow, list);
                    outs.push(op.wrapping_add(ow * c));
                }
                let base = if interior {
                    sample[((oh * sh - pt) * w + (ow_lo * sw - pl)) * c..].as_ptr()
                } else {
                    sample.as_ptr()
                };
                // SAFETY: VNNI supported (path) and `l.fused`; interior pixels' taps are inside
                // the sample (checked above), listed taps point into the sample or at the
                // `Z1` row (`cp ≥ c` bytes); outputs are `c`-byte pixels of this row.
                unsafe {
                    super::x86_64::avx512vnni::depthwise_row_fused(
                        base,
                        sw * c,
                        ihi - ilo,
                        &self.offsets,
                        list,
                        outs,
                        l,
                        c,
                        &self.epi,
                        op.wrapping_add(ilo * c),
                    )
                };
            });
            return;
        }
        let mut ow = 0;
        while ow < wo {
            #[cfg(target_arch = "x86_64")]
            if interior && ow == ow_lo {
                let base = sample[((oh * sh - pt) * w + (ow_lo * sw - pl)) * c..].as_ptr();
                let npix = ow_hi - ow_lo;
                let o8 = out
                    .as_deref_mut()
                    .map(|o| o[ow_lo * c..ow_hi * c].as_mut_ptr());
                let o32 = out_i32
                    .as_deref_mut()
                    .map(|o| o[ow_lo * c..ow_hi * c].as_mut_ptr());
                // SAFETY: VNNI supported (path); every tap of pixels ow_lo..ow_hi is inside the
                // sample (checked above), so base + p·sw·c + offs[t] has c readable bytes.
                unsafe {
                    super::x86_64::avx512vnni::depthwise_run(
                        base,
                        sw * c,
                        npix,
                        &self.offsets,
                        None,
                        self.vnni
                            .as_ref()
                            .unwrap_or_else(|| unreachable!("VNNI layout built for the VNNI path")),
                        c,
                        &self.epi,
                        o8,
                        o32,
                    )
                };
                ow = ow_hi;
                continue;
            }
            taps.clear();
            self.push_taps(sample, oh, ow, taps);
            let o8 = out.as_deref_mut().map(|o| &mut o[ow * c..(ow + 1) * c]);
            let o32 = out_i32.as_deref_mut().map(|o| &mut o[ow * c..(ow + 1) * c]);
            match self.path {
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx512Vnni => {
                    // SAFETY: path selected only when supported; every tap row has ≥ c bytes.
                    unsafe {
                        super::x86_64::avx512vnni::depthwise_run(
                            std::ptr::null(),
                            0,
                            1,
                            &[],
                            Some(taps),
                            self.vnni.as_ref().unwrap_or_else(|| {
                                unreachable!("VNNI layout built for the VNNI path")
                            }),
                            c,
                            &self.epi,
                            o8.map(|o| o.as_mut_ptr()),
                            o32.map(|o| o.as_mut_ptr()),
                        )
                    }
                }
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2 => {
                    // SAFETY: as above.
                    unsafe {
                        super::x86_64::avx2::depthwise_pixel(
                            taps, &self.w, self.cp, c, &self.epi, o8, o32,
                        )
                    }
                }
                _ => {
                    acc.clear();
                    acc.resize(c, 0);
                    for (t, &p) in taps.iter().enumerate() {
                        // SAFETY: every tap row has ≥ c readable bytes.
                        let x = unsafe { std::slice::from_raw_parts(p, c) };
                        let wt = &self.w[t * self.cp..t * self.cp + c];
                        for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(wt) {
                            *a = a.wrapping_add(xv as i32 * wv);
                        }
                    }
                    if let Some(o) = o8 {
                        for (ch, (o, &a)) in o.iter_mut().zip(acc.iter()).enumerate() {
                            *o = epilogue_scalar(a, &self.epi, ch);
                        }
                    }
                    if let Some(o) = o32 {
                        for ((o, &a), &b) in o.iter_mut().zip(acc.iter()).zip(&self.epi.bias) {
                            *o = a.wrapping_add(b);
                        }
                    }
                }
            }
            ow += 1;
        }
    }
}
