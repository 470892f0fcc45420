//! The depthwise conv frame (`groups == C_in == C_out`), vectorized over channels by the ISA
//! (NHWC keeps a pixel's channels contiguous).
//!
//! For each output pixel the `kh·kw` taps are resolved to input pixel rows; a tap that falls in
//! the padding points at a row filled with `Z1` (XNNPACK's "zero buffer" indirection), so the
//! kernels have no bounds checks and the zero-point correction folds into the bias exactly as
//! in the GEMM: `bias'[c] = bias[c] − Z1·Σ_t w[t, c]`, `acc[c] = bias'[c] + Σ_t x_t[c]·w[t, c]`.
//! Weights are kept widened to int32 `[tap][channel]` (padded to [`CHANNEL_BLOCK`] channels), so
//! that one `vpdpwssd` (AVX-512 VNNI) or `vpmaddwd` (AVX2) per 16/8 channels multiplies
//! zero-extended u8 activations by them exactly. The frame resolves taps, threads over output
//! rows and applies the scalar output stage for roundings the ISA does not fuse; the ISA
//! computes pixels ([`DepthwiseKernel::pixel`]) or whole rows ([`DepthwiseKernel::row`]).

use super::epilogue::{Epilogue, OutputStage};
use super::{LayerSpec, round_up};
use crate::kernels::KernelPath;
use crate::kernels::par::{for_each_chunk, threads};

/// Channel padding of the prepared weights and epilogue arrays.
pub(crate) const CHANNEL_BLOCK: usize = 64;

/// A padding tap in [`DepthwisePlan`]'s border table.
const PAD_TAP: u32 = u32::MAX;

/// The largest border table a plan keeps (entries); larger layers resolve border taps per call.
const BORDER_TABLE_MAX: usize = 1 << 20;

/// A layer whose border pixels are at least `1/PAD_SHARE` of its output pixels runs on a
/// `Z1`-padded copy of each sample ([`DepthwisePlan::padded`]).
const PAD_SHARE: usize = 8;

/// The largest padded sample (bytes) a plan copies: it stays in the per-thread scratch, in cache.
const PADDED_SAMPLE_MAX: usize = 1 << 18;

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

/// Where a depthwise kernel writes one pixel (`c` channels) or one row (`wo·c`).
pub(crate) enum DwOut<'a> {
    /// Requantized codes.
    U8(&'a mut [u8]),
    /// int32 accumulators `acc + bias'`.
    I32(&'a mut [i32]),
}

impl DwOut<'_> {
    /// The pixel at channel offset `at` (`c` channels).
    pub(crate) fn pixel(&mut self, at: usize, c: usize) -> DwOut<'_> {
        match self {
            DwOut::U8(o) => DwOut::U8(&mut o[at..at + c]),
            DwOut::I32(o) => DwOut::I32(&mut o[at..at + c]),
        }
    }
}

/// Per-thread scratch of one output row, reused across rows and calls.
#[derive(Default)]
pub(crate) struct RowScratch {
    /// Tap rows of one pixel (or of the listed pixels).
    pub(crate) taps: Vec<*const u8>,
    /// Output pointers of the listed pixels.
    pub(crate) outs: Vec<*mut u8>,
    /// Per-pixel int32 accumulators.
    pub(crate) acc: Vec<i32>,
    /// The row's int32 results for the scalar output stage.
    row: Vec<i32>,
    /// A `Z1`-padded sample ([`DepthwisePlan::padded`]).
    padded: Vec<u8>,
    /// The geometry and `Z1` whose padding `padded` holds: `[Hp, Wp, C, top, left, H, W, Z1]`.
    padded_key: [usize; 8],
}

/// One output row for an ISA: the plan, the sample, the row index and scratch.
pub(crate) struct RowJob<'a> {
    /// The plan.
    pub(crate) plan: &'a DepthwisePlan,
    /// The sample `[H, W, C]`.
    pub(crate) sample: &'a [u8],
    /// The output row.
    pub(crate) oh: usize,
}

/// An ISA's depthwise kernel.
pub(crate) trait DepthwiseKernel: OutputStage + Sized + Send + Sync + 'static {
    /// Weights and constants prepared for the kernel beyond the plan's own (`()` when none).
    type Layout: Default + Send + Sync + 'static;

    /// Prepares the layout from the `[tap][cp]` int32 weights (`c ≤ cp` real channels) and the
    /// epilogue (`cp` entries); by default none.
    fn layout(w: &[i32], taps: usize, c: usize, cp: usize, e: &Epilogue) -> Self::Layout {
        let _ = (w, taps, c, cp, e);
        Self::Layout::default()
    }

    /// One output pixel from its `kh·kw` tap rows (each with `c` readable bytes).
    ///
    /// # Safety
    /// The CPU supports the ISA; every tap row has `plan.c` readable bytes; `out` holds `plan.c`
    /// elements; u8 output only when `plan.epi.fused`.
    unsafe fn pixel(
        taps: &[*const u8],
        plan: &DepthwisePlan,
        l: &Self::Layout,
        s: &mut RowScratch,
        out: DwOut<'_>,
    );

    /// One output row (`wo·c` elements); by default pixel by pixel.
    ///
    /// # Safety
    /// The CPU supports the ISA; `job.sample` holds `H·W·C` bytes; `out` holds `wo·c` elements;
    /// u8 output only when `plan.epi.fused`.
    unsafe fn row(job: &RowJob<'_>, l: &Self::Layout, s: &mut RowScratch, mut out: DwOut<'_>) {
        let plan = job.plan;
        let c = plan.c;
        for ow in 0..plan.out_hwc[1] {
            let mut taps = std::mem::take(&mut s.taps);
            taps.clear();
            plan.push_taps(job.sample, job.oh, ow, &mut taps);
            // SAFETY: tap rows point into the sample or at the Z1 row (`cp ≥ c` bytes).
            unsafe { Self::pixel(&taps, plan, l, s, out.pixel(ow * c, c)) };
            s.taps = taps;
        }
    }

    /// Every output row of a sample of a plan without padding whose pixels are all interior
    /// (the padded-input plan, [`DepthwisePlan::padded`]); by default row by row.
    ///
    /// # Safety
    /// As [`DepthwiseKernel::row`], with `out` holding `ho·wo·c` elements.
    unsafe fn sample(job: &RowJob<'_>, l: &Self::Layout, s: &mut RowScratch, mut out: DwOut<'_>) {
        let plan = job.plan;
        let row_len = plan.out_hwc[1] * plan.c;
        for oh in 0..plan.out_hwc[0] {
            let job = RowJob { oh, ..*job };
            // SAFETY: as documented; the slice is row `oh` of the sample's output.
            unsafe { Self::row(&job, l, s, out.pixel(oh * row_len, row_len)) };
        }
    }
}

/// A depthwise conv prepared for one ISA. Built only by [`DepthwisePlan::new`] from a checked
/// layer, for a path this CPU supports.
#[derive(Debug)]
pub struct DepthwisePlan {
    path: KernelPath,
    /// Channels.
    pub(crate) c: usize,
    /// Channels padded to [`CHANNEL_BLOCK`].
    pub(crate) cp: usize,
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) dilation: [usize; 2],
    pub(crate) padding: [usize; 4],
    pub(crate) in_hwc: [usize; 3],
    pub(crate) out_hwc: [usize; 3],
    /// `[tap][cp]` int32 weights.
    pub(crate) w: Vec<i32>,
    /// Byte offset of tap `(i, j)` from tap `(0, 0)`: `(i·d_h·W + j·d_w)·C`.
    pub(crate) offsets: Vec<usize>,
    /// `Z1` repeated `cp` times: the padding row.
    pub(crate) zero_row: Vec<u8>,
    /// Epilogue constants, `cp` entries.
    pub(crate) epi: Epilogue,
    /// The tap offsets (bytes from the sample's start; [`PAD_TAP`]: the `Z1` row) of every
    /// border pixel ([`DepthwisePlan::border_columns`]), row after row, `kh·kw` per pixel; empty
    /// when the table would exceed [`BORDER_TABLE_MAX`] entries or a sample 2^32 bytes.
    border: Vec<u32>,
    /// Row `oh`'s entries of `border` start at `border_start[oh]` (`Ho + 1` entries).
    border_start: Vec<usize>,
    /// When border pixels are a large share of the output (small inputs): the same layer on the
    /// input padded to `[H + top + bottom, W + left + right, C]` with `Z1` and no padding, so
    /// that every output pixel runs the interior kernel. Exact: a padding tap reads `Z1` either
    /// way (the border path points it at the `Z1` row).
    padded: Option<Box<DepthwisePlan>>,
    /// The ISA's layout and the row frame instantiated for it.
    rows: Box<dyn Rows>,
}

/// The plan's single dispatch point into its ISA.
trait Rows: Send + Sync + std::fmt::Debug {
    /// [`output_row`] for the ISA.
    ///
    /// # Safety
    /// As [`DepthwiseKernel::row`], `out` of any type.
    unsafe fn row(&self, job: &RowJob<'_>, s: &mut RowScratch, out: DwOut<'_>);

    /// [`DepthwiseKernel::sample`] for the ISA, through the scalar output stage row by row when
    /// the ISA does not fuse the rounding.
    ///
    /// # Safety
    /// As [`DepthwiseKernel::sample`], `out` of any type.
    unsafe fn sample(&self, job: &RowJob<'_>, s: &mut RowScratch, out: DwOut<'_>);
}

struct RowsOf<K: DepthwiseKernel>(K::Layout);

impl<K: DepthwiseKernel> std::fmt::Debug for RowsOf<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("depthwise rows")
    }
}

impl<K: DepthwiseKernel> Rows for RowsOf<K> {
    unsafe fn row(&self, job: &RowJob<'_>, s: &mut RowScratch, out: DwOut<'_>) {
        // SAFETY: as documented.
        unsafe { output_row::<K>(job, &self.0, s, out) }
    }

    unsafe fn sample(&self, job: &RowJob<'_>, s: &mut RowScratch, mut out: DwOut<'_>) {
        if matches!(out, DwOut::U8(_)) && !job.plan.epi.fused {
            let row_len = job.plan.out_hwc[1] * job.plan.c;
            for oh in 0..job.plan.out_hwc[0] {
                let job = RowJob { oh, ..*job };
                // SAFETY: as documented; the slice is row `oh` of the sample's output.
                unsafe { output_row::<K>(&job, &self.0, s, out.pixel(oh * row_len, row_len)) };
            }
            return;
        }
        // SAFETY: as documented.
        unsafe { K::sample(job, &self.0, s, out) }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<RowScratch> = std::cell::RefCell::new(RowScratch::default());
}

/// One output row on ISA `K`; the scalar output stage when `K` does not fuse the rounding.
///
/// # Safety
/// As [`DepthwiseKernel::row`], `out` of any type.
unsafe fn output_row<K: DepthwiseKernel>(
    job: &RowJob<'_>,
    l: &K::Layout,
    s: &mut RowScratch,
    out: DwOut<'_>,
) {
    let e = &job.plan.epi;
    match out {
        DwOut::U8(o) if !e.fused => {
            let mut row = std::mem::take(&mut s.row);
            row.resize(o.len(), 0);
            // SAFETY: as documented; int32 output is always fused.
            unsafe { K::row(job, l, s, DwOut::I32(&mut row)) };
            let c = job.plan.c;
            for (i, (o, &v)) in o.iter_mut().zip(&row).enumerate() {
                *o = e.requantize(v, i % c);
            }
            s.row = row;
        }
        // SAFETY: as documented.
        out => unsafe { K::row(job, l, s, out) },
    }
}

impl DepthwisePlan {
    /// Prepares OHWI weights `[C, kh, kw, 1]` (`layer.weights`) for `path`.
    ///
    /// Errors: `Reference`, a path this CPU does not support, an inconsistent layer, or a
    /// shape whose input and output channel counts differ.
    pub fn new(
        path: KernelPath,
        shape: DepthwiseShape,
        layer: &LayerSpec<'_>,
    ) -> Result<Self, super::KernelError> {
        let kernels = path
            .kernels()
            .ok_or(super::KernelError::NotPacked { path })?;
        if !kernels.is_supported_here() {
            return Err(super::KernelError::Unsupported { path });
        }
        if shape.in_hwc[2] != shape.out_hwc[2] {
            return Err(super::KernelError::Layer {
                field: "shape",
                problem: format!(
                    "{:?} → {:?} changes the channel count",
                    shape.in_hwc, shape.out_hwc
                ),
            });
        }
        layer.check(shape.in_hwc[2], shape.kernel[0] * shape.kernel[1])?;
        Ok(kernels.depthwise(path, shape, layer))
    }

    /// [`DepthwisePlan::new`] for ISA `K` (the layer already checked).
    pub(crate) fn prepare<K: DepthwiseKernel>(
        path: KernelPath,
        shape: DepthwiseShape,
        layer: &LayerSpec<'_>,
    ) -> Self {
        let c = shape.in_hwc[2];
        let cp = round_up(c, CHANNEL_BLOCK);
        let taps = shape.kernel[0] * shape.kernel[1];
        let mut w = vec![0i32; taps * cp];
        for ch in 0..c {
            for t in 0..taps {
                w[t * cp + ch] = layer.weights[ch * taps + t] as i32;
            }
        }
        let col_sums = |ch: usize| {
            (0..taps).fold((0i32, 0u64), |(s, a), t| {
                let v = w[t * cp + ch];
                (s.wrapping_add(v), a + v.unsigned_abs() as u64)
            })
        };
        let epi = Epilogue::new(layer, c, cp, col_sums, K::fuses(layer.target));
        let layout = K::layout(&w, taps, c, cp, &epi);
        let mut plan = Self {
            path,
            c,
            cp,
            kernel: shape.kernel,
            stride: shape.stride,
            dilation: shape.dilation,
            padding: shape.padding,
            in_hwc: shape.in_hwc,
            out_hwc: shape.out_hwc,
            offsets: (0..shape.kernel[0])
                .flat_map(|i| {
                    (0..shape.kernel[1]).map(move |j| {
                        (i * shape.dilation[0] * shape.in_hwc[1] + j * shape.dilation[1]) * c
                    })
                })
                .collect(),
            zero_row: vec![layer.input_zero_point as u8; cp],
            w,
            epi,
            border: Vec::new(),
            border_start: Vec::new(),
            padded: None,
            rows: Box::new(RowsOf::<K>(layout)),
        };
        plan.build_border_table();
        if let Some(shape) = plan.padded_shape() {
            let inner = Self::prepare::<K>(path, shape, layer);
            let all_interior =
                (0..inner.out_hwc[0]).all(|oh| inner.interior(oh) == (0, inner.out_hwc[1]));
            if all_interior {
                plan.padded = Some(Box::new(inner));
            }
        }
        plan
    }

    /// The unpadded shape of the layer on its padded input, when worth it: some padding, border
    /// pixels at least `1/PAD_SHARE` of the output, a padded sample of at most
    /// [`PADDED_SAMPLE_MAX`] bytes.
    fn padded_shape(&self) -> Option<DepthwiseShape> {
        let [h, w, c] = self.in_hwc;
        let [ho, wo, _] = self.out_hwc;
        let [pt, pl, pb, pr] = self.padding;
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        let border: usize = (0..ho).map(|oh| self.border_columns(oh).count()).sum();
        let worth = self.padding != [0; 4]
            && border.saturating_mul(PAD_SHARE) >= ho.saturating_mul(wo)
            && hp.saturating_mul(wp).saturating_mul(c) <= PADDED_SAMPLE_MAX;
        worth.then_some(DepthwiseShape {
            kernel: self.kernel,
            stride: self.stride,
            dilation: self.dilation,
            padding: [0; 4],
            in_hwc: [hp, wp, c],
            out_hwc: self.out_hwc,
        })
    }

    /// Copies `sample` (`H·W·C` bytes) into `buf`, padded with `Z1` to the inner plan's input.
    /// The padding is rewritten only when `buf` last held another geometry or `Z1` (`key`).
    fn pad_sample(
        &self,
        inner: &DepthwisePlan,
        sample: &[u8],
        buf: &mut Vec<u8>,
        key: &mut [usize; 8],
    ) {
        let [h, w, c] = self.in_hwc;
        let [hp, wp, _] = inner.in_hwc;
        let (pt, pl) = (self.padding[0], self.padding[1]);
        let z1 = self.zero_row[0];
        let k = [hp, wp, c, pt, pl, h, w, z1 as usize];
        if *key != k || buf.len() != hp * wp * c {
            buf.clear();
            buf.resize(hp * wp * c, z1);
            *key = k;
        }
        for (r, src) in sample[..h * w * c].chunks_exact(w * c).enumerate() {
            let at = ((r + pt) * wp + pl) * c;
            crate::kernels::copy::copy_row(&mut buf[at..at + w * c], src);
        }
    }

    /// Fills the border table (see the field), unless it would be too large.
    fn build_border_table(&mut self) {
        let [h, w, c] = self.in_hwc;
        let ho = self.out_hwc[0];
        let taps = self.kernel[0] * self.kernel[1];
        let pixels: usize = (0..ho).map(|oh| self.border_columns(oh).count()).sum();
        if h.saturating_mul(w).saturating_mul(c) >= PAD_TAP as usize
            || pixels.saturating_mul(taps) > BORDER_TABLE_MAX
        {
            return;
        }
        let mut border = Vec::with_capacity(pixels * taps);
        let mut start = Vec::with_capacity(ho + 1);
        for oh in 0..ho {
            start.push(border.len());
            for ow in self.border_columns(oh) {
                self.for_each_tap(oh, ow, |o| border.push(o.map_or(PAD_TAP, |o| o as u32)));
            }
        }
        start.push(border.len());
        (self.border, self.border_start) = (border, start);
    }

    /// The path the plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Makes the frame requantize through int32 and qat-core's scalar stage (tests).
    #[doc(hidden)]
    pub fn with_scalar_output_stage(mut self) -> Self {
        self.epi.fused = false;
        self.padded = self.padded.map(|p| Box::new(p.with_scalar_output_stage()));
        self
    }

    /// Runs on a batch of `n` samples: `input` `[n, H, W, C]` → `out` `[n, Ho, Wo, C]` (u8).
    ///
    /// # Panics
    /// When a buffer is smaller than the batch needs.
    pub fn run(&self, input: &[u8], n: usize, out: &mut [u8]) {
        self.run_any(input, n, DwOut::U8(out));
    }

    /// Like [`DepthwisePlan::run`] but writes the int32 accumulators (bias included).
    ///
    /// # Panics
    /// When a buffer is smaller than the batch needs.
    pub fn run_i32(&self, input: &[u8], n: usize, out: &mut [i32]) {
        self.run_any(input, n, DwOut::I32(out));
    }

    fn run_any(&self, input: &[u8], n: usize, out: DwOut<'_>) {
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
        let out_len = match &out {
            DwOut::U8(o) => o.len(),
            DwOut::I32(o) => o.len(),
        };
        assert!(
            out_len >= n * ho * wo * c,
            "depthwise output too small for {n} samples"
        );
        let row_len = wo * c;
        let work = (n * ho * row_len).saturating_mul(self.kernel[0] * self.kernel[1]);
        // One sample per chunk: pad it once into this thread's scratch, then its rows. Used only
        // when every thread the op may use gets a sample (else the rows split, unpadded).
        if let Some(inner) = self.padded.as_deref().filter(|_| n >= threads(work)) {
            let sample_len = ho * row_len;
            let one = |i: usize, mut o: DwOut<'_>| {
                SCRATCH.with(|s| {
                    let s = &mut *s.borrow_mut();
                    let mut buf = std::mem::take(&mut s.padded);
                    let sample = &input[i * h * w * c..(i + 1) * h * w * c];
                    self.pad_sample(inner, sample, &mut buf, &mut s.padded_key);
                    let job = RowJob {
                        plan: inner,
                        sample: &buf,
                        oh: 0,
                    };
                    // SAFETY: the plan's ISA is supported (checked in `new`); `buf` holds the
                    // inner plan's Hp·Wp·C bytes, every pixel of which is interior, and `o` the
                    // sample's output.
                    unsafe { inner.rows.sample(&job, s, o.pixel(0, sample_len)) }
                    s.padded = buf;
                });
            };
            match out {
                DwOut::U8(o) => {
                    for_each_chunk(&mut o[..n * sample_len], sample_len, work, |i, o| {
                        one(i, DwOut::U8(o))
                    })
                }
                DwOut::I32(o) => {
                    for_each_chunk(&mut o[..n * sample_len], sample_len, work, |i, o| {
                        one(i, DwOut::I32(o))
                    })
                }
            }
            return;
        }
        let row = |idx: usize, o: DwOut<'_>| {
            let job = RowJob {
                plan: self,
                sample: &input[(idx / ho) * h * w * c..(idx / ho + 1) * h * w * c],
                oh: idx % ho,
            };
            SCRATCH.with(|s| {
                // SAFETY: the plan's ISA is supported (checked in `new`); the sample holds
                // H·W·C bytes and `o` one output row.
                unsafe { self.rows.row(&job, &mut s.borrow_mut(), o) }
            });
        };
        match out {
            DwOut::U8(o) => for_each_chunk(&mut o[..n * ho * row_len], row_len, work, |i, o| {
                row(i, DwOut::U8(o))
            }),
            DwOut::I32(o) => for_each_chunk(&mut o[..n * ho * row_len], row_len, work, |i, o| {
                row(i, DwOut::I32(o))
            }),
        }
    }

    /// Calls `f` with the byte offset in the sample of each of output pixel `(oh, ow)`'s `kh·kw`
    /// taps (`None`: padding), in tap order: a kernel row above or below the input is `kw`
    /// padding taps; the others test their column.
    #[inline]
    fn for_each_tap(&self, oh: usize, ow: usize, mut f: impl FnMut(Option<usize>)) {
        let [h, w, c] = self.in_hwc;
        let [kh, kw] = self.kernel;
        let ih0 = (oh * self.stride[0]) as isize - self.padding[0] as isize;
        let iw0 = (ow * self.stride[1]) as isize - self.padding[1] as isize;
        for i in 0..kh {
            let ih = ih0 + (i * self.dilation[0]) as isize;
            if ih < 0 || ih as usize >= h {
                (0..kw).for_each(|_| f(None));
                continue;
            }
            let line = ih as usize * w;
            for j in 0..kw {
                let iw = iw0 + (j * self.dilation[1]) as isize;
                f((iw >= 0 && (iw as usize) < w).then(|| (line + iw as usize) * c));
            }
        }
    }

    /// Appends output pixel `(oh, ow)`'s `kh·kw` tap rows (the `Z1` row for padding taps).
    /// `sample` holds `H·W·C` bytes (every pointer made is inside it or the `Z1` row).
    pub(crate) fn push_taps(&self, sample: &[u8], oh: usize, ow: usize, taps: &mut Vec<*const u8>) {
        debug_assert!(sample.len() >= self.in_hwc.iter().product());
        let (base, zero) = (sample.as_ptr(), self.zero_row.as_ptr());
        taps.reserve(self.kernel[0] * self.kernel[1]);
        self.for_each_tap(oh, ow, |o| {
            taps.push(o.map_or(zero, |o| base.wrapping_add(o)));
        });
    }

    /// The output columns of row `oh` that are not interior ([`DepthwisePlan::interior`]): the
    /// pixels whose taps are resolved one by one.
    pub(crate) fn border_columns(&self, oh: usize) -> impl Iterator<Item = usize> + use<> {
        let (lo, hi) = match self.interior(oh) {
            (lo, hi) if lo < hi => (lo, hi),
            _ => (0, 0),
        };
        (0..self.out_hwc[1]).filter(move |&ow| ow < lo || ow >= hi)
    }

    /// Appends the tap rows of every border pixel of row `oh` ([`DepthwisePlan::border_columns`],
    /// in order): from the plan's table when it has one, else resolved one by one.
    pub(crate) fn push_border_taps(&self, sample: &[u8], oh: usize, taps: &mut Vec<*const u8>) {
        if self.border_start.is_empty() {
            for ow in self.border_columns(oh) {
                self.push_taps(sample, oh, ow, taps);
            }
            return;
        }
        debug_assert!(sample.len() >= self.in_hwc.iter().product());
        let (base, zero) = (sample.as_ptr(), self.zero_row.as_ptr());
        let row = &self.border[self.border_start[oh]..self.border_start[oh + 1]];
        taps.extend(row.iter().map(|&o| {
            if o == PAD_TAP {
                zero
            } else {
                base.wrapping_add(o as usize)
            }
        }));
    }

    /// The output columns `ow_lo..ow_hi` of row `oh` whose taps are all inside the input (empty
    /// when the row itself reaches into the vertical padding): they need no tap resolution.
    pub(crate) fn interior(&self, oh: usize) -> (usize, usize) {
        let [h, w, _] = self.in_hwc;
        let [_, wo, _] = self.out_hwc;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        let (pt, pl) = (self.padding[0], self.padding[1]);
        let rows_inside = oh * sh >= pt && oh * sh + (kh - 1) * dh - pt < h;
        let ow_lo = pl.div_ceil(sw);
        let ow_hi = match (w - 1 + pl).checked_sub((kw - 1) * dw) {
            Some(v) if rows_inside => (v / sw + 1).min(wo),
            _ => 0,
        };
        (ow_lo, ow_hi)
    }
}

#[cfg(test)]
#[path = "depthwise_tests.rs"]
mod tests;
