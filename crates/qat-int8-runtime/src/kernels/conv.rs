//! Conv2d and fully connected ops, prepared once per model ([`ConvPlan`], [`FcPlan`]) and run
//! on a batch with the kernel path chosen at plan time.
//!
//! Dispatch (all bit-exact with [`reference`](mod@reference)):
//! - `KernelPath::Reference`, or uint8 weights (`Weights::Uint8`, the paper's asymmetric
//!   option, whose `Z2·ā1` row-sum term the packed kernels do not carry): reference loops.
//! - depthwise (`groups == C_in == C_out`): [`super::depthwise`].
//! - everything else: the packed GEMM ([`super::gemm`]) per group, with `A` read directly for
//!   1×1/stride-1/unpadded convs whose `C_in` fills the k-groups, else filled by a tiled
//!   im2col (one [`super::gemm::MC`]-row block at a time, so it stays in cache).
//!   Depthwise multipliers > 1 go through the grouped GEMM (`K = kh·kw`).

use qat_core::fixed_point::Rounding;
use qat_core::{QuantError, QuantParams};
use rayon::prelude::*;

use super::depthwise::{DepthwisePlan, DepthwiseShape};
use super::gemm::{ASource, OutPtr, PackedB, gemm};
use super::{KernelPath, reference};
use crate::model::{Conv2d, FullyConnected, Weights};

#[derive(Debug, Clone)]
enum ConvImpl {
    Reference,
    Gemm(Vec<PackedB>),
    Depthwise(Box<DepthwisePlan>),
}

/// A conv op prepared for one kernel path.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    in_hwc: [usize; 3],
    out_hwc: [usize; 3],
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
    rounding: Rounding,
    imp: ConvImpl,
    /// `C_in` bytes of `Z1`: what padded taps point at in the implicit im2col.
    zero_row: Vec<u8>,
    /// The geometry the plan was built for (the optimized paths never read it from the op).
    geom: ConvGeom,
}

/// Conv geometry copied at plan time.
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    weight_shape: [usize; 4],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
}

impl ConvPlan {
    /// Prepares `conv` (input `[H, W, C_in]` with params `qi`, output `[Ho, Wo, C_out]` with `qo`)
    /// for `path`, requantizing in `rounding` (the model's): packs weights and folds the
    /// zero-point correction into the bias.
    pub fn new(
        conv: &Conv2d,
        in_hwc: [usize; 3],
        qi: QuantParams,
        out_hwc: [usize; 3],
        qo: QuantParams,
        path: KernelPath,
        rounding: Rounding,
    ) -> Result<Self, QuantError> {
        let (z1, z3) = (qi.zero_point(), qo.zero_point());
        let (lo, hi) = (conv.clamp.lo as i32, conv.clamp.hi as i32);
        let imp = match (&conv.weights, path) {
            (_, KernelPath::Reference) | (Weights::Uint8 { .. }, _) => ConvImpl::Reference,
            (Weights::Int8 { data, .. }, _) => {
                let [cout, kh, kw, cig] = conv.weight_shape;
                if conv.groups == in_hwc[2] && conv.groups == cout {
                    ConvImpl::Depthwise(Box::new(DepthwisePlan::new(
                        path,
                        DepthwiseShape {
                            kernel: [kh, kw],
                            stride: conv.stride,
                            dilation: conv.dilation,
                            padding: conv.padding,
                            in_hwc,
                            out_hwc,
                        },
                        data,
                        &conv.bias,
                        &conv.multipliers,
                        z1,
                        z3,
                        lo,
                        hi,
                        rounding,
                    )))
                } else {
                    let k = kh * kw * cig;
                    let cog = cout / conv.groups;
                    let packed = (0..conv.groups)
                        .map(|g| {
                            let ms = if conv.multipliers.len() == 1 {
                                &conv.multipliers[..]
                            } else {
                                &conv.multipliers[g * cog..(g + 1) * cog]
                            };
                            PackedB::new(
                                path,
                                &data[g * cog * k..(g + 1) * cog * k],
                                cog,
                                k,
                                &conv.bias[g * cog..(g + 1) * cog],
                                ms,
                                z1,
                                z3,
                                lo,
                                hi,
                                rounding,
                            )
                        })
                        .collect();
                    ConvImpl::Gemm(packed)
                }
            }
        };
        Ok(Self {
            in_hwc,
            out_hwc,
            zp_in: z1,
            zp_out: z3,
            path,
            rounding,
            imp,
            zero_row: vec![z1.clamp(0, 255) as u8; in_hwc[2]],
            geom: ConvGeom {
                weight_shape: conv.weight_shape,
                stride: conv.stride,
                padding: conv.padding,
                dilation: conv.dilation,
                groups: conv.groups,
            },
        })
    }

    /// The kernel path this plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Runs the conv on a batch of `n` samples: `input` is `[n, H, W, C_in]`, `out` is
    /// `[n, Ho, Wo, C_out]`.
    pub fn run(&self, conv: &Conv2d, input: &[u8], n: usize, out: &mut [u8]) {
        self.run_any(conv, input, n, Some(out), None);
    }

    /// Like [`ConvPlan::run`] but writes the int32 accumulators `bias + Σ(q1 − Z1)(q2 − Z2)`
    /// (tests compare them exactly).
    pub fn run_i32(&self, conv: &Conv2d, input: &[u8], n: usize, out: &mut [i32]) {
        self.run_any(conv, input, n, None, Some(out));
    }

    fn run_any(
        &self,
        conv: &Conv2d,
        input: &[u8],
        n: usize,
        out: Option<&mut [u8]>,
        out_i32: Option<&mut [i32]>,
    ) {
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, cout] = self.out_hwc;
        let (si, so) = (h * w * cin, ho * wo * cout);
        if so == 0 || n == 0 {
            return;
        }
        // The SIMD kernels read and write through raw pointers: enforce the buffer contract.
        assert!(
            input.len() >= n * si,
            "conv input holds {} bytes, {n} samples need {}",
            input.len(),
            n * si
        );
        let out_len = out
            .as_deref()
            .map_or(0, <[u8]>::len)
            .max(out_i32.as_deref().map_or(0, <[i32]>::len));
        assert!(
            out_len >= n * so,
            "conv output holds {out_len} elements, {n} samples need {}",
            n * so
        );
        assert!(
            conv.weight_shape == self.geom.weight_shape && conv.groups == self.geom.groups,
            "conv op differs from the one the plan was built for"
        );
        match &self.imp {
            ConvImpl::Reference => match (out, out_i32) {
                (Some(out), _) => out.par_chunks_mut(so).enumerate().for_each(|(s, o)| {
                    reference::conv2d(
                        &input[s * si..(s + 1) * si],
                        self.in_hwc,
                        self.zp_in,
                        conv,
                        self.out_hwc,
                        self.zp_out,
                        self.rounding,
                        o,
                    )
                }),
                (None, Some(out)) => out.par_chunks_mut(so).enumerate().for_each(|(s, o)| {
                    reference::conv2d_acc(
                        &input[s * si..(s + 1) * si],
                        self.in_hwc,
                        self.zp_in,
                        conv,
                        self.out_hwc,
                        o,
                    )
                }),
                (None, None) => {}
            },
            ConvImpl::Depthwise(dw) => match (out, out_i32) {
                (Some(out), _) => dw.run(input, n, out),
                (None, Some(out)) => dw.run_i32(input, n, out),
                (None, None) => {}
            },
            ConvImpl::Gemm(groups) => {
                let m = n * ho * wo;
                let [_, kh, kw, cig] = self.geom.weight_shape;
                let cog = cout / self.geom.groups;
                let ptr = match (out, out_i32) {
                    (Some(o), _) => OutPtr::U8(o.as_mut_ptr(), cout),
                    (None, Some(o)) => OutPtr::I32(o.as_mut_ptr(), cout),
                    (None, None) => return,
                };
                let pointwise = kh == 1
                    && kw == 1
                    && self.geom.stride == [1, 1]
                    && self.geom.padding == [0; 4]
                    && self.geom.groups == 1;
                for (g, b) in groups.iter().enumerate() {
                    // SAFETY: `out` holds m × cout elements; group g writes columns g·cog..(g+1)·cog.
                    let gptr = unsafe { ptr.offset(0, g * cog) };
                    if pointwise && b.kp == cin {
                        // SAFETY: input holds m rows of cin = kp bytes.
                        unsafe {
                            gemm(
                                m,
                                &ASource::Direct {
                                    data: input,
                                    lda: cin,
                                },
                                b,
                                gptr,
                            )
                        };
                        continue;
                    }
                    if self.geom.groups == 1 && cin % 4 == 0 && b.kp == kh * kw * cin {
                        // Implicit im2col: segment pointers into the input (or the Z1 row).
                        let fill_ptrs = |row0: usize, rows: usize, ptrs: &mut [*const u8]| {
                            self.tap_pointers(input, row0, rows, ptrs);
                        };
                        let src = ASource::Indirect {
                            taps: kh * kw,
                            seg: cin,
                            fill_ptrs: &fill_ptrs,
                        };
                        // SAFETY: as above; every pointer addresses cin bytes of `input` or of
                        // `zero_row`, both alive for the call.
                        unsafe { gemm(m, &src, b, gptr) };
                        continue;
                    }
                    let fill = |row0: usize, rows: usize, dst: &mut [u8]| {
                        self.im2col(input, g * cig, cig, b.kp, row0, rows, dst);
                    };
                    // SAFETY: as above.
                    unsafe { gemm(m, &ASource::Fill(&fill), b, gptr) };
                }
            }
        }
    }

    /// Indirection table for rows `row0..row0 + rows`: `ptrs[r·taps + (i·kw + j)]` points at the
    /// `C_in` input bytes of tap `(i, j)`, or at the `Z1` row for padding (groups == 1).
    fn tap_pointers(&self, input: &[u8], row0: usize, rows: usize, ptrs: &mut [*const u8]) {
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let [_, kh, kw, _] = self.geom.weight_shape;
        let ([sh, sw], [dh, dw]) = (self.geom.stride, self.geom.dilation);
        let (pt, pl) = (self.geom.padding[0], self.geom.padding[1]);
        let taps = kh * kw;
        let sample_len = h * w * cin;
        // (sample, oh, ow) of the first row, then advanced incrementally.
        let (mut s, pix) = (row0 / (ho * wo), row0 % (ho * wo));
        let (mut oh, mut ow) = (pix / wo, pix % wo);
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
            if ow == wo {
                ow = 0;
                oh += 1;
                if oh == ho {
                    oh = 0;
                    s += 1;
                }
            }
        }
    }

    /// Tiled im2col: rows `row0..row0 + rows` of `A` (row = (sample, oh, ow), column
    /// `(i·kw + j)·cig + ci` matching OHWI), padded cells = `Z1`, columns `k..kp` = 0.
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &self,
        input: &[u8],
        ch0: usize,
        cig: usize,
        kp: usize,
        row0: usize,
        rows: usize,
        dst: &mut [u8],
    ) {
        let [h, w, cin] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let [_, kh, kw, _] = self.geom.weight_shape;
        let k = kh * kw * cig;
        let zp = self.zp_in.clamp(0, 255) as u8;
        let contiguous = cig == cin && self.geom.dilation[1] == 1;
        for r in 0..rows {
            let global = row0 + r;
            let (s, pix) = (global / (ho * wo), global % (ho * wo));
            let (oh, ow) = (pix / wo, pix % wo);
            let row = &mut dst[r * kp..(r + 1) * kp];
            let sample = &input[s * h * w * cin..(s + 1) * h * w * cin];
            for i in 0..kh {
                let ih = (oh * self.geom.stride[0] + i * self.geom.dilation[0]) as isize
                    - self.geom.padding[0] as isize;
                // Dense, undilated rows: the kw taps of a kernel row are one contiguous span.
                let iw0 = (ow * self.geom.stride[1]) as isize - self.geom.padding[1] as isize;
                if contiguous && ih >= 0 && (ih as usize) < h && iw0 >= 0 && iw0 as usize + kw <= w
                {
                    let at = (ih as usize * w + iw0 as usize) * cin;
                    row[i * kw * cin..(i + 1) * kw * cin]
                        .copy_from_slice(&sample[at..at + kw * cin]);
                    continue;
                }
                for j in 0..kw {
                    let iw = (ow * self.geom.stride[1] + j * self.geom.dilation[1]) as isize
                        - self.geom.padding[1] as isize;
                    let seg = &mut row[(i * kw + j) * cig..(i * kw + j + 1) * cig];
                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                        let at = (ih as usize * w + iw as usize) * cin + ch0;
                        seg.copy_from_slice(&sample[at..at + cig]);
                    } else {
                        seg.fill(zp);
                    }
                }
            }
            row[k..].fill(0);
        }
    }
}

/// A fully connected op prepared for one kernel path.
#[derive(Debug, Clone)]
pub struct FcPlan {
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
    rounding: Rounding,
    packed: Option<PackedB>,
}

impl FcPlan {
    /// Prepares `fc` (input params `qi`, output params `qo`), requantizing in `rounding`.
    pub fn new(
        fc: &FullyConnected,
        qi: QuantParams,
        qo: QuantParams,
        path: KernelPath,
        rounding: Rounding,
    ) -> Result<Self, QuantError> {
        let [cout, cin] = fc.weight_shape;
        let (z1, z3) = (qi.zero_point(), qo.zero_point());
        let packed = match (&fc.weights, path) {
            (_, KernelPath::Reference) | (Weights::Uint8 { .. }, _) => None,
            (Weights::Int8 { data, .. }, _) => Some(PackedB::new(
                path,
                data,
                cout,
                cin,
                &fc.bias,
                &fc.multipliers,
                z1,
                z3,
                fc.clamp.lo as i32,
                fc.clamp.hi as i32,
                rounding,
            )),
        };
        Ok(Self {
            zp_in: z1,
            zp_out: z3,
            path,
            rounding,
            packed,
        })
    }

    /// The kernel path this plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Runs the layer on a batch of `n` samples (`[n, C_in]` → `[n, C_out]`).
    pub fn run(&self, fc: &FullyConnected, input: &[u8], n: usize, out: &mut [u8]) {
        let [cout, cin] = fc.weight_shape;
        if n == 0 {
            return;
        }
        // The SIMD kernels read and write through raw pointers: enforce the buffer contract.
        assert!(
            input.len() >= n * cin && out.len() >= n * cout,
            "fully connected buffers too small for {n} samples"
        );
        if let Some(b) = &self.packed {
            assert!(
                b.n == cout && b.k == cin,
                "fully connected op differs from the one the plan was built for"
            );
        }
        match &self.packed {
            None => out.par_chunks_mut(cout).enumerate().for_each(|(s, o)| {
                reference::fully_connected(
                    &input[s * cin..(s + 1) * cin],
                    self.zp_in,
                    fc,
                    self.zp_out,
                    self.rounding,
                    o,
                )
            }),
            Some(b) => {
                let ptr = OutPtr::U8(out.as_mut_ptr(), cout);
                if b.kp == cin {
                    // SAFETY: input holds n rows of cin bytes; out holds n × cout.
                    unsafe {
                        gemm(
                            n,
                            &ASource::Direct {
                                data: input,
                                lda: cin,
                            },
                            b,
                            ptr,
                        )
                    };
                } else {
                    let fill = |row0: usize, rows: usize, dst: &mut [u8]| {
                        for r in 0..rows {
                            let row = &mut dst[r * b.kp..(r + 1) * b.kp];
                            row[..cin]
                                .copy_from_slice(&input[(row0 + r) * cin..(row0 + r + 1) * cin]);
                            row[cin..].fill(0);
                        }
                    };
                    // SAFETY: as above.
                    unsafe { gemm(n, &ASource::Fill(&fill), b, ptr) };
                }
            }
        }
    }
}
