//! Conv2d and fully connected ops, prepared once per model ([`ConvPlan`], [`FcPlan`]) and run
//! on a batch with the kernel path chosen at plan time.
//!
//! Dispatch (all bit-exact with [`reference`](mod@super::reference)), decided once per plan:
//! - `KernelPath::Reference`, or uint8 weights (`Weights::Uint8`, the paper's asymmetric
//!   option, whose `Z2·ā1` row-sum term the packed kernels do not carry): reference loops.
//! - depthwise (`groups == C_in == C_out`): the frame's [`DepthwisePlan`].
//! - everything else: the packed GEMM ([`PackedB`]) per group, with `A` read directly for
//!   1×1/stride-1/unpadded convs whose `C_in` fills the k-groups, through an implicit im2col
//!   (tap-segment pointers into the input) for dense k×k convs with `C_in % 4 == 0`, else
//!   filled by a tiled im2col (one task's rows at a time, so it stays in cache; dense convs
//!   with short kernel rows, the stems, build their rows from a padded band of the input).
//!   Depthwise multipliers > 1 go through the grouped GEMM (`K = kh·kw`).

use qat_core::QuantParams;
use qat_core::target::Target;

use super::frame::{
    ASource, DepthwisePlan, DepthwiseShape, KernelError, LayerSpec, OutPtr, PackedB,
};
use super::par::for_each_chunk;
use super::{KernelPath, reference};
use crate::model::{Conv2d, FullyConnected, Weights};

mod im2col;
mod im2col_small;

use im2col::GroupCols;
use im2col_small::PaddedIm2col;

/// The tensors around a conv: shapes `[H, W, C]` and quantization params, and the model's
/// deployment target (the arithmetic of every requantization).
#[derive(Debug, Clone, Copy)]
pub struct ConvIo {
    /// Input `[H, W, C_in]`.
    pub in_hwc: [usize; 3],
    /// Input params (`Z1`).
    pub input: QuantParams,
    /// Output `[Ho, Wo, C_out]`.
    pub out_hwc: [usize; 3],
    /// Output params (`Z3`).
    pub output: QuantParams,
    /// The target whose arithmetic requantizes `acc` ([`Target::requantize`]).
    pub rounding: Target,
}

/// The [`LayerSpec`] of int8 weights `data` with a conv's or FC's bias, multipliers and clamp.
fn layer_spec<'a>(
    data: &'a [i8],
    bias: &'a [i32],
    multipliers: &'a [qat_core::fixed_point::QuantizedMultiplier],
    clamp: crate::model::Clamp,
    qi: &QuantParams,
    qo: &QuantParams,
    rounding: Target,
) -> LayerSpec<'a> {
    LayerSpec {
        weights: data,
        bias,
        multipliers,
        input_zero_point: qi.zero_point(),
        output_zero_point: qo.zero_point(),
        lo: clamp.lo as i32,
        hi: clamp.hi as i32,
        target: rounding,
        reals: None,
    }
}

#[derive(Debug)]
enum ConvImpl {
    Reference,
    Gemm(Vec<PackedB>),
    Depthwise(Box<DepthwisePlan>),
}

/// A conv op prepared for one kernel path.
#[derive(Debug)]
pub struct ConvPlan {
    in_hwc: [usize; 3],
    out_hwc: [usize; 3],
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
    rounding: Target,
    imp: ConvImpl,
    /// `C_in` bytes of `Z1`: what padded taps point at in the implicit im2col.
    zero_row: Vec<u8>,
    /// The geometry the plan was built for (the optimized paths never read it from the op).
    geom: ConvGeom,
    /// The band im2col of a dense conv with short kernel rows, when it applies.
    padded: Option<PaddedIm2col>,
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
    /// Prepares `conv` between the tensors `io` for `path`: packs weights and folds the
    /// zero-point correction into the bias.
    ///
    /// Errors: a path this CPU does not support, or a conv inconsistent with `io` (a validated
    /// model has none).
    pub fn new(conv: &Conv2d, io: &ConvIo, path: KernelPath) -> Result<Self, KernelError> {
        if !path.is_supported_here() {
            return Err(KernelError::Unsupported { path });
        }
        let ConvIo {
            in_hwc,
            input: qi,
            out_hwc,
            output: qo,
            rounding,
        } = *io;
        let imp = match (&conv.weights, path) {
            (_, KernelPath::Reference) | (Weights::Uint8 { .. }, _) => ConvImpl::Reference,
            (Weights::Int8 { data, .. }, _) => {
                let [cout, kh, kw, cig] = conv.weight_shape;
                let spec = |data, bias, multipliers| {
                    layer_spec(data, bias, multipliers, conv.clamp, &qi, &qo, rounding)
                };
                if conv.groups == in_hwc[2] && conv.groups == cout {
                    let shape = DepthwiseShape {
                        kernel: [kh, kw],
                        stride: conv.stride,
                        dilation: conv.dilation,
                        padding: conv.padding,
                        in_hwc,
                        out_hwc,
                    };
                    let layer = spec(data, &conv.bias, &conv.multipliers);
                    ConvImpl::Depthwise(Box::new(DepthwisePlan::new(path, shape, &layer)?))
                } else {
                    let k = kh * kw * cig;
                    let cog = cout / conv.groups.max(1);
                    let packed = (0..conv.groups)
                        .map(|g| {
                            let ms = if conv.multipliers.len() == 1 {
                                &conv.multipliers[..]
                            } else {
                                &conv.multipliers[g * cog..(g + 1) * cog]
                            };
                            let layer = spec(
                                &data[g * cog * k..(g + 1) * cog * k],
                                &conv.bias[g * cog..(g + 1) * cog],
                                ms,
                            );
                            PackedB::new(path, cog, k, &layer)
                        })
                        .collect::<Result<_, _>>()?;
                    ConvImpl::Gemm(packed)
                }
            }
        };
        let geom = ConvGeom {
            weight_shape: conv.weight_shape,
            stride: conv.stride,
            padding: conv.padding,
            dilation: conv.dilation,
            groups: conv.groups,
        };
        let padded = match &imp {
            ConvImpl::Gemm(g) if g.len() == 1 => PaddedIm2col::new(in_hwc, &geom, path, g[0].kp),
            _ => None,
        };
        Ok(Self {
            in_hwc,
            out_hwc,
            zp_in: qi.zero_point(),
            zp_out: qo.zero_point(),
            path,
            rounding,
            imp,
            zero_row: vec![qi.zero_point().clamp(0, 255) as u8; in_hwc[2]],
            geom,
            padded,
        })
    }

    /// Makes the packed kernels requantize through int32 and qat-core's scalar stage, as the
    /// frame does for a rounding an ISA does not fuse (tests of that fallback on every ISA).
    #[doc(hidden)]
    pub fn with_scalar_output_stage(mut self) -> Self {
        self.imp = match self.imp {
            ConvImpl::Gemm(g) => ConvImpl::Gemm(
                g.into_iter()
                    .map(PackedB::with_scalar_output_stage)
                    .collect(),
            ),
            ConvImpl::Depthwise(d) => ConvImpl::Depthwise(Box::new(d.with_scalar_output_stage())),
            r => r,
        };
        self
    }

    /// The kernel path this plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Whether the band im2col (padded input rows) builds this plan's `A` rows: `None` if not,
    /// `Some(true)` when by byte permutes (tests check that their shapes reach it).
    #[doc(hidden)]
    pub fn band_im2col(&self) -> Option<bool> {
        self.padded.as_ref().map(PaddedIm2col::gathers)
    }

    /// Keeps the band im2col only when `band`, and its byte-permute gather only when `gather`
    /// too (benchmarks compare the im2col forms on one plan; every form gives the same rows).
    #[doc(hidden)]
    pub fn with_im2col_forms(mut self, band: bool, gather: bool) -> Self {
        self.padded = self
            .padded
            .filter(|_| band)
            .map(|p| if gather { p } else { p.without_gather() });
        self
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
        let [_, kh, kw, cig] = self.geom.weight_shape;
        let work = (n * so).saturating_mul(kh * kw * cig);
        match &self.imp {
            ConvImpl::Reference => match (out, out_i32) {
                (Some(out), _) => for_each_chunk(&mut out[..n * so], so, work, |s, o| {
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
                (None, Some(out)) => for_each_chunk(&mut out[..n * so], so, work, |s, o| {
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
                        let src = ASource::Direct {
                            data: input,
                            lda: cin,
                        };
                        // SAFETY: input holds m rows of cin = kp bytes.
                        unsafe { b.gemm_unchecked(m, &src, gptr) };
                        continue;
                    }
                    if self.geom.groups == 1 && cin % 4 == 0 && b.kp == kh * kw * cin {
                        // Implicit im2col: segment pointers into the input (or the Z1 row).
                        let fill_ptrs = |row0: usize, rows: usize, ptrs: &mut [*const u8]| {
                            self.tap_pointers(input, row0, rows, ptrs);
                        };
                        // SAFETY: cin % 4 == 0 and taps·cin == kp (checked above); every pointer
                        // addresses cin bytes of `input` or of `zero_row`, both alive and
                        // unmodified for the call.
                        let src = unsafe { ASource::indirect(kh * kw, cin, &fill_ptrs) };
                        // SAFETY: as above.
                        unsafe { b.gemm_unchecked(m, &src, gptr) };
                        continue;
                    }
                    let fill = |row0: usize, rows: usize, dst: &mut [u8]| match &self.padded {
                        Some(p) if p.kp == b.kp => self.im2col_padded(p, input, row0, rows, dst),
                        _ => {
                            let cols = GroupCols {
                                ch0: g * cig,
                                cig,
                                kp: b.kp,
                            };
                            self.im2col(input, cols, row0..row0 + rows, dst)
                        }
                    };
                    // SAFETY: as above.
                    unsafe { b.gemm_unchecked(m, &ASource::Fill(&fill), gptr) };
                }
            }
        }
    }
}

/// The quantization around a fully connected layer.
#[derive(Debug, Clone, Copy)]
pub struct FcIo {
    /// Input params (`Z1`).
    pub input: QuantParams,
    /// Output params (`Z3`).
    pub output: QuantParams,
    /// The target whose arithmetic requantizes `acc` ([`Target::requantize`]).
    pub rounding: Target,
}

/// A fully connected op prepared for one kernel path.
#[derive(Debug)]
pub struct FcPlan {
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
    rounding: Target,
    /// The `f64` scales of a target that requantizes fully connected layers in `f64`
    /// ([`Target::fc_real_scale`]), one per output channel.
    reals: Option<Vec<f64>>,
    packed: Option<PackedB>,
}

/// `Some(eff[c])` for every output channel of `fc` when `target` requantizes fully connected
/// layers in `f64` (int8 weights; their scales, the input's and the output's, as the file
/// carries them).
pub fn fc_real_scales(
    fc: &FullyConnected,
    qi: &QuantParams,
    qo: &QuantParams,
    target: Target,
) -> Option<Vec<f64>> {
    let Weights::Int8 { scales, .. } = &fc.weights else {
        return None;
    };
    let sw = |c: usize| scales[if scales.len() == 1 { 0 } else { c }];
    (0..fc.weight_shape[0])
        .map(|c| target.fc_real_scale(qi.scale(), sw(c), qo.scale()))
        .collect()
}

impl FcPlan {
    /// Prepares `fc` between the params of `io` for `path`.
    ///
    /// Errors: a path this CPU does not support, or an inconsistent layer.
    pub fn new(fc: &FullyConnected, io: &FcIo, path: KernelPath) -> Result<Self, KernelError> {
        if !path.is_supported_here() {
            return Err(KernelError::Unsupported { path });
        }
        let [cout, cin] = fc.weight_shape;
        let FcIo {
            input: qi,
            output: qo,
            rounding,
        } = *io;
        let reals = fc_real_scales(fc, &qi, &qo, rounding);
        let packed = match (&fc.weights, path) {
            (_, KernelPath::Reference) | (Weights::Uint8 { .. }, _) => None,
            (Weights::Int8 { data, .. }, _) => {
                let layer = LayerSpec {
                    reals: reals.as_deref(),
                    ..layer_spec(
                        data,
                        &fc.bias,
                        &fc.multipliers,
                        fc.clamp,
                        &qi,
                        &qo,
                        rounding,
                    )
                };
                Some(PackedB::new(path, cout, cin, &layer)?)
            }
        };
        Ok(Self {
            zp_in: qi.zero_point(),
            zp_out: qo.zero_point(),
            path,
            rounding,
            reals,
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
            None => for_each_chunk(&mut out[..n * cout], cout, n * cout * cin, |s, o| {
                reference::fully_connected(
                    &input[s * cin..(s + 1) * cin],
                    self.zp_in,
                    fc,
                    self.zp_out,
                    self.rounding,
                    self.reals.as_deref(),
                    o,
                )
            }),
            Some(b) => {
                let ptr = OutPtr::U8(out.as_mut_ptr(), cout);
                if b.kp == cin {
                    let src = ASource::Direct {
                        data: input,
                        lda: cin,
                    };
                    // SAFETY: input holds n rows of cin bytes; out holds n × cout.
                    unsafe { b.gemm_unchecked(n, &src, ptr) };
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
                    unsafe { b.gemm_unchecked(n, &ASource::Fill(&fill), ptr) };
                }
            }
        }
    }
}
