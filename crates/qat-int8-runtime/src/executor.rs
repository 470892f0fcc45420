//! The executor: runs a validated [`Int8Model`] on a batch.
//!
//! Buffers for every tensor are planned once per batch size (and split of the batch) and reused:
//! the input, the outputs and what a run reads back hold the whole batch, every other tensor one
//! tile of samples per chunk, which the chunk's tiles reuse, so that the intermediate tensors of a
//! large batch stay in cache (`run_all` keeps every tensor whole). Per-op constants (add and
//! rescale multipliers, packed weights, zero-point-corrected biases) are prepared once in
//! [`Executor::with_path`], each plan bound to its kernel path's ISA then. With several rayon
//! threads and several samples, the batch is split into chunks of whole samples (of near-equal
//! sizes; a multiple of the thread count when there are at least as many samples as threads)
//! that the threads take through the whole model, each op on one thread: no op waits for
//! another thread. Otherwise the ops run on the calling thread, each split across threads only
//! when its work is large enough to pay for it (also inside the chunks of a batch smaller than
//! the thread count). Either way a chunk runs in tiles of samples sized so that a tile's tensors
//! fit in about half of a core's L2 cache; on each tile the ops run in the model's (topological)
//! order. Every output element is computed by the same integer code whatever the split, so
//! results are identical for any thread count. The executor borrows the model
//! ([`Executor::new`]) or shares it ([`Executor::from_arc`]); it never copies it.

use std::ops::Deref;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use qat_core::QuantParams;
use rayon::prelude::*;
use thiserror::Error;

use crate::kernels::add::{AddParams, Rescale};
use crate::kernels::conv::{ConvIo, ConvPlan, FcIo, FcPlan};
use crate::kernels::pool::{AvgPoolRescale, PoolGeom};
use crate::kernels::quantize::QuantizePlan;
use crate::kernels::{KernelPath, par};
use crate::model::{DType, Int8Model, Op, TensorId};
use crate::validate::{ValidationError, elements};

/// Why a run failed.
#[derive(Debug, Error)]
pub enum RunError {
    /// The model is invalid (see [`Int8Model::validate`]).
    #[error("invalid model: {0}")]
    Invalid(#[from] ValidationError),
    /// The kernel path asked for needs instructions this CPU lacks.
    #[error("kernel path {path} is not supported by this CPU")]
    UnsupportedKernel {
        /// The path asked for.
        path: KernelPath,
    },
    /// The input array does not have shape `[N, ...per-sample shape]`.
    #[error("input must have shape [N, {expected:?}...], got {got:?}")]
    InputShape {
        /// Per-sample shape of the model input.
        expected: Vec<usize>,
        /// Shape given.
        got: Vec<usize>,
    },
    /// `run_u8` was asked for an output that has no uint8 codes.
    #[error(
        "graph output #{index} (tensor {tensor} '{name}') is F32 and not produced by a Dequantize"
    )]
    OutputNotQuantized {
        /// Position in the model's outputs.
        index: usize,
        /// Tensor index.
        tensor: TensorId,
        /// Tensor name.
        name: String,
    },
    /// An op's constants could not be prepared.
    #[error("op {op} ({kind}): {message}")]
    Plan {
        /// Op index.
        op: usize,
        /// Op kind.
        kind: &'static str,
        /// What failed.
        message: String,
    },
    /// The batch is too large to address.
    #[error("batch of {batch} samples overflows the buffer size for tensor {tensor}")]
    BatchTooLarge {
        /// Batch size.
        batch: usize,
        /// Tensor index.
        tensor: TensorId,
    },
}

/// The value of one tensor over the batch, shape `[N, ...per-sample shape]`.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValue {
    /// uint8 codes of a `U8` tensor.
    U8(ArrayD<u8>),
    /// Values of an `F32` tensor.
    F32(ArrayD<f32>),
}

/// Per-op constants prepared once.
enum OpPlan {
    Plain,
    Quantize(QuantizePlan),
    Conv(Box<ConvPlan>),
    Fc(Box<FcPlan>),
    Add(AddParams),
    Concat(Vec<Rescale>),
    /// Global average pool.
    Pool(Box<AvgPoolRescale>),
    AvgPool(Box<(AvgPoolRescale, PoolGeom)>),
    MaxPool(PoolGeom),
}

/// Runs an [`Int8Model`] on batches of NHWC f32 input.
///
/// ```
/// use ndarray::ArrayD;
/// use qat_core::{QuantParams, fixed_point::QuantizedMultiplier};
/// use qat_int8_runtime::{Executor, Int8Model, TensorInfo, DType, Op, FullyConnected, Weights, Clamp, Target};
/// let q = QuantParams::asymmetric(0.0, 2.55, 8)?; // S = 0.01, Z = 0
/// let t = |name: &str, dtype, quant| TensorInfo { name: name.into(), shape: vec![2], dtype, quant };
/// let model = Int8Model {
///     name: "swap".into(),
///     tensors: vec![t("x", DType::F32, None), t("xq", DType::U8, Some(q)), t("yq", DType::U8, Some(q)), t("y", DType::F32, None)],
///     ops: vec![
///         Op::Quantize { input: 0, output: 1 },
///         Op::FullyConnected(FullyConnected {
///             input: 1, output: 2,
///             weights: Weights::Int8 { data: vec![0, 100, 100, 0], scales: vec![0.01] },
///             weight_shape: [2, 2], bias: vec![0, 0],
///             multipliers: vec![QuantizedMultiplier::from_f64(0.01)?], // S_in·S_w/S_out
///             clamp: Clamp { lo: 0, hi: 255 },
///         }),
///         Op::Dequantize { input: 2, output: 3 },
///     ],
///     input: 0,
///     outputs: vec![3],
///     rounding: Target::Qat,
/// };
/// let mut exec = Executor::new(&model)?;
/// let x = ArrayD::from_shape_vec(vec![1, 2], vec![0.5f32, 1.25])?;
/// let y = exec.run(x.view())?;
/// assert_eq!(y[0].as_slice().unwrap(), &[1.25, 0.5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Executor<'m> {
    model: ModelRef<'m>,
    path: KernelPath,
    plans: Vec<OpPlan>,
    /// The quantize of a uint8 model input (`None` for an f32 input).
    input_plan: Option<QuantizePlan>,
    bufs: Vec<Buf>,
    /// The batch size and layout `bufs` are planned for (`None`: unplanned, or a run did not
    /// complete).
    layout: Option<Layout>,
    /// Whether a tensor is read after a run by [`Executor::run`] or [`Executor::run_u8`] (the
    /// input, the outputs, the codes a dequantized output is made from): such a tensor holds
    /// the whole batch, every other one only a tile of samples per chunk.
    kept: Vec<bool>,
    /// Per-sample element count of every tensor.
    sizes: Vec<usize>,
    /// Samples per tile of a run.
    tile: Tile,
    /// How a run uses rayon's threads.
    split: Split,
    /// Per-op time, when profiling ([`Executor::set_op_profiling`]).
    clock: Option<OpClock>,
}

/// How a run uses rayon's threads.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// Chunks of the batch per thread when there are several threads and samples, else ops
    /// split from the default work threshold.
    Auto,
    /// One chunk; ops split from this much work ([`Executor::with_op_split`]).
    PerOp(usize),
}

/// How many samples a tile of a run holds.
#[derive(Debug, Clone, Copy)]
enum Tile {
    /// As many as fit the cache budget ([`tile_samples`]), at least one per thread.
    Cache(usize),
    /// Exactly this many ([`Executor::with_tile_samples`]).
    Fixed(usize),
}

/// The model an executor runs: borrowed or shared, never copied.
enum ModelRef<'m> {
    Borrowed(&'m Int8Model),
    Shared(Arc<Int8Model>),
}

impl Deref for ModelRef<'_> {
    type Target = Int8Model;
    fn deref(&self) -> &Int8Model {
        match self {
            ModelRef::Borrowed(m) => m,
            ModelRef::Shared(m) => m,
        }
    }
}

fn quant(model: &Int8Model, t: TensorId) -> QuantParams {
    // Validated: every U8 tensor carries params; F32 tensors never reach this.
    model.tensors[t]
        .quant
        .unwrap_or_else(|| unreachable!("validated model: tensor {t} is U8"))
}

fn hwc(model: &Int8Model, t: TensorId) -> [usize; 3] {
    match model.tensors[t].shape.as_slice() {
        &[h, w, c] => [h, w, c],
        _ => unreachable!("validated model: tensor {t} is [H, W, C]"),
    }
}

impl<'m> Executor<'m> {
    /// An executor on the process-wide best kernel path ([`KernelPath::best`]), borrowing the
    /// model.
    pub fn new(model: &'m Int8Model) -> Result<Self, RunError> {
        Self::with_path(model, KernelPath::best())
    }

    /// An executor on a given kernel path, borrowing the model. Validates the model and prepares
    /// every op's constants. A path this CPU does not support is
    /// [`RunError::UnsupportedKernel`] ([`KernelPath::is_supported_here`] tells beforehand).
    pub fn with_path(model: &'m Int8Model, path: KernelPath) -> Result<Self, RunError> {
        Self::build(ModelRef::Borrowed(model), path)
    }
}

impl Executor<'static> {
    /// Like [`Executor::with_path`], sharing the model: an executor that owns no borrow, to
    /// keep in a long-lived structure.
    pub fn from_arc(model: Arc<Int8Model>, path: KernelPath) -> Result<Self, RunError> {
        Self::build(ModelRef::Shared(model), path)
    }
}

impl<'m> Executor<'m> {
    fn build(model: ModelRef<'m>, path: KernelPath) -> Result<Self, RunError> {
        if !path.is_supported_here() {
            return Err(RunError::UnsupportedKernel { path });
        }
        model.validate()?;
        let mut plans = Vec::with_capacity(model.ops.len());
        for (i, op) in model.ops.iter().enumerate() {
            let err = |message: String| RunError::Plan {
                op: i,
                kind: op.kind(),
                message,
            };
            let plan = match op {
                Op::Quantize { output, .. } => OpPlan::Quantize(QuantizePlan::new(
                    &quant(&model, *output),
                    model.rounding,
                    path,
                )),
                Op::Conv2d(c) => {
                    let io = ConvIo {
                        in_hwc: hwc(&model, c.input),
                        input: quant(&model, c.input),
                        out_hwc: hwc(&model, c.output),
                        output: quant(&model, c.output),
                        rounding: model.rounding,
                    };
                    OpPlan::Conv(Box::new(
                        ConvPlan::new(c, &io, path).map_err(|e| err(e.to_string()))?,
                    ))
                }
                Op::FullyConnected(f) => {
                    let io = FcIo {
                        input: quant(&model, f.input),
                        output: quant(&model, f.output),
                        rounding: model.rounding,
                    };
                    OpPlan::Fc(Box::new(
                        FcPlan::new(f, &io, path).map_err(|e| err(e.to_string()))?,
                    ))
                }
                Op::Add {
                    a,
                    b,
                    output,
                    clamp,
                } => OpPlan::Add(
                    AddParams::new(
                        &quant(&model, *a),
                        &quant(&model, *b),
                        &quant(&model, *output),
                        *clamp,
                        model.rounding,
                    )
                    .map_err(|e| err(e.to_string()))?,
                ),
                Op::Concat { inputs, output } => OpPlan::Concat(
                    inputs
                        .iter()
                        .map(|&t| {
                            Rescale::new(&quant(&model, t), &quant(&model, *output), model.rounding)
                        })
                        .collect::<Result<_, _>>()
                        .map_err(|e| err(e.to_string()))?,
                ),
                Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
                    let g = PoolGeom {
                        in_hwc: hwc(&model, p.input),
                        out_hwc: hwc(&model, p.output),
                        kernel: p.kernel,
                        stride: p.stride,
                        padding: p.padding,
                    };
                    if let Op::MaxPool2d(_) = op {
                        OpPlan::MaxPool(g)
                    } else {
                        let (qi, qo) = (quant(&model, p.input), quant(&model, p.output));
                        // onnxruntime runs an unpadded pool whose window covers the input as
                        // its global pool.
                        let global = g.kernel == [g.in_hwc[0], g.in_hwc[1]] && g.padding == [0; 4];
                        let r = AvgPoolRescale::avg_pool2d(&qi, &qo, &g)
                            .and_then(|r| r.for_target(model.rounding, &qi, &qo, global))
                            .map_err(|e| err(e.to_string()))?;
                        OpPlan::AvgPool(Box::new((r, g)))
                    }
                }
                Op::GlobalAvgPool { input, output } => {
                    let (qi, qo) = (quant(&model, *input), quant(&model, *output));
                    OpPlan::Pool(Box::new(
                        AvgPoolRescale::global(&qi, &qo, hwc(&model, *input))
                            .and_then(|r| r.for_target(model.rounding, &qi, &qo, true))
                            .map_err(|e| err(e.to_string()))?,
                    ))
                }
                _ => OpPlan::Plain,
            };
            plans.push(plan);
        }
        let sizes: Vec<usize> = model
            .tensors
            .iter()
            .map(|t| elements(&t.shape).unwrap_or(0))
            .collect();
        let tile = Tile::Cache(tile_samples(&model, &sizes));
        let input_plan = model.tensors[model.input]
            .quant
            .map(|q| QuantizePlan::new(&q, model.rounding, path));
        tracing::debug!(model = %model.name, kernel = path.name(), rounding = model.rounding.name(), ops = model.ops.len(), "executor planned");
        Ok(Self {
            plans,
            input_plan,
            bufs: vec![Buf::default(); model.tensors.len()],
            kept: kept_tensors(&model),
            model,
            path,
            layout: None,
            sizes,
            tile,
            split: Split::Auto,
            clock: None,
        })
    }

    /// Runs batches in tiles of `samples` samples (at least 1) instead of the L2-sized default
    /// (tests: every tiling gives the same results).
    #[doc(hidden)]
    pub fn with_tile_samples(mut self, samples: usize) -> Self {
        self.tile = Tile::Fixed(samples.max(1));
        self
    }

    /// Never splits the batch across threads; splits each op whose work (multiply-accumulates, or
    /// elements) is at least `min_work` instead (tests: `0` splits every op, and every split gives
    /// the same results).
    #[doc(hidden)]
    pub fn with_op_split(mut self, min_work: usize) -> Self {
        self.split = Split::PerOp(min_work);
        self
    }

    /// The kernel path in use.
    pub fn kernel_path(&self) -> KernelPath {
        self.path
    }

    /// The model (the one given, not a copy).
    pub fn model(&self) -> &Int8Model {
        &self.model
    }

    /// Runs the model and returns every graph output dequantized to f32 (`r = S·(q − Z)` for U8
    /// outputs), each of shape `[N, ...per-sample shape]`.
    ///
    /// `input` has shape `[N, ...]` with the model input's per-sample shape (NHWC). A U8 model
    /// input is quantized with its params first (qat-core's rounding).
    pub fn run(&mut self, input: ArrayViewD<'_, f32>) -> Result<Vec<ArrayD<f32>>, RunError> {
        self.execute(input, false)?;
        let model = &*self.model;
        let n = self.batch();
        Ok(model
            .outputs
            .iter()
            .map(|&t| {
                let shape = batch_shape(n, &model.tensors[t].shape);
                let data = match &self.bufs[t] {
                    Buf::F32(v) => v.clone(),
                    Buf::U8(v) => {
                        let q = quant(model, t);
                        v.iter().map(|&c| q.dequantize(c as i32)).collect()
                    }
                };
                array(shape, data)
            })
            .collect())
    }

    /// Runs the model and returns the uint8 codes of every graph output: a U8 output's own codes,
    /// or, for an F32 output written by `Dequantize`, the codes it dequantized.
    pub fn run_u8(&mut self, input: ArrayViewD<'_, f32>) -> Result<Vec<ArrayD<u8>>, RunError> {
        let model = &*self.model;
        let mut sources = Vec::with_capacity(model.outputs.len());
        for (index, &t) in model.outputs.iter().enumerate() {
            let src = if model.tensors[t].dtype == DType::U8 {
                Some(t)
            } else {
                model.ops.iter().find_map(|op| match op {
                    Op::Dequantize { input, output } if *output == t => Some(*input),
                    _ => None,
                })
            };
            sources.push(src.ok_or_else(|| RunError::OutputNotQuantized {
                index,
                tensor: t,
                name: model.tensors[t].name.clone(),
            })?);
        }
        self.execute(input, false)?;
        let model = &*self.model;
        let n = self.batch();
        Ok(sources
            .into_iter()
            .map(|t| {
                let data = match &self.bufs[t] {
                    Buf::U8(v) => v.clone(),
                    Buf::F32(_) => unreachable!("validated model: tensor {t} is U8"),
                };
                array(batch_shape(n, &model.tensors[t].shape), data)
            })
            .collect())
    }

    /// Runs the model and returns the value of every tensor, in [`Int8Model::tensors`] order
    /// (uint8 codes for U8 tensors, f32 for F32), for per-layer fidelity reports.
    pub fn run_all(&mut self, input: ArrayViewD<'_, f32>) -> Result<Vec<TensorValue>, RunError> {
        self.execute(input, true)?;
        let n = self.batch();
        Ok(self
            .model
            .tensors
            .iter()
            .zip(&self.bufs)
            .map(|(t, b)| {
                let shape = batch_shape(n, &t.shape);
                match b {
                    Buf::U8(v) => TensorValue::U8(array(shape, v.clone())),
                    Buf::F32(v) => TensorValue::F32(array(shape, v.clone())),
                }
            })
            .collect())
    }

    /// Runs the model on `input`; `all`: every tensor keeps the whole batch (for `run_all`).
    fn execute(&mut self, input: ArrayViewD<'_, f32>, all: bool) -> Result<(), RunError> {
        let tin = &self.model.tensors[self.model.input];
        let shape = input.shape();
        if shape.len() != tin.shape.len() + 1 || shape[1..] != tin.shape[..] {
            return Err(RunError::InputShape {
                expected: tin.shape.clone(),
                got: shape.to_vec(),
            });
        }
        let n = shape[0];
        let threads = rayon::current_num_threads();
        let (tile, chunks, min_work) = match (self.tile, self.split) {
            (Tile::Fixed(t) | Tile::Cache(t), Split::Auto) => {
                (t, chunks(n, threads, t), par::MIN_SPLIT_WORK)
            }
            // A tile holds at least one sample per thread, so that ops split over samples keep
            // every thread busy.
            (Tile::Cache(t), Split::PerOp(w)) => (t.max(threads), chunks(n, 1, t), w),
            (Tile::Fixed(t), Split::PerOp(w)) => (t, chunks(n, 1, t), w),
        };
        let tile = tile.clamp(1, n.max(1));
        self.plan_buffers(Layout {
            n,
            chunks: chunks.clone(),
            tile,
            all,
        })?;
        // Until this run completes the buffers count as unplanned: if an op panics (and the
        // caller catches it) with its output buffer taken, the next run replans every buffer.
        let layout = self.layout.take();
        let model = &*self.model;
        let x = input.as_standard_layout();
        let xs = x.as_slice().unwrap_or_default();
        match &mut self.bufs[model.input] {
            Buf::F32(v) => v.copy_from_slice(xs),
            Buf::U8(v) => match &self.input_plan {
                Some(p) => p.run(xs, v),
                None => unreachable!("validated model: the U8 input has params"),
            },
        }
        // The buffers leave `self` for the run: each chunk gets its samples of every tensor
        // (of a tensor that holds one tile per chunk, that tile).
        let mut bufs = std::mem::take(&mut self.bufs);
        let whole: Vec<bool> = (0..self.sizes.len()).map(|t| self.whole(t, all)).collect();
        let mut views = chunk_views(&mut bufs, &self.sizes, &whole, tile, &chunks);
        let this = &*self;
        if let [view] = views.as_mut_slice() {
            par::with_min_split_work(min_work, || this.run_chunk(view, &whole, n, tile));
        } else {
            // As many chunks as threads or more: every thread has whole samples, no op splits.
            // Fewer (a batch smaller than the thread count): large ops may still split.
            let inner = if chunks.len() >= threads {
                usize::MAX
            } else {
                min_work
            };
            views
                .into_par_iter()
                .zip(chunks)
                .with_max_len(1)
                .for_each(|(mut view, c)| {
                    par::with_min_split_work(inner, || {
                        this.run_chunk(&mut view, &whole, c.len(), tile)
                    })
                });
        }
        self.bufs = bufs;
        self.layout = layout;
        Ok(())
    }

    /// Runs the whole model on `samples` samples (`views`: their part of every tensor, all of the
    /// chunk's samples where `whole`, else one tile's), one tile of samples after the other, so
    /// that a tile's tensors stay in cache from the op that writes them to the ops that read them.
    fn run_chunk(&self, views: &mut [View<'_>], whole: &[bool], samples: usize, tile: usize) {
        for s0 in (0..samples).step_by(tile) {
            let tile = s0..(s0 + tile).min(samples);
            for (i, op) in self.model.ops.iter().enumerate() {
                let out_id = op.output();
                let mut out = std::mem::take(&mut views[out_id]);
                #[cfg(test)]
                tests::fault_point(i);
                match &self.clock {
                    None => self.run_op(i, op, views, whole, tile.clone(), &mut out),
                    Some(c) => c.time(i, || {
                        self.run_op(i, op, views, whole, tile.clone(), &mut out)
                    }),
                }
                views[out_id] = out;
            }
        }
    }
}

fn batch_shape(n: usize, shape: &[usize]) -> Vec<usize> {
    std::iter::once(n).chain(shape.iter().copied()).collect()
}

fn array<T>(shape: Vec<usize>, data: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .unwrap_or_else(|_| unreachable!("buffer sized from the shape"))
}

mod buffers;
mod chunks;
mod ops;
mod profile;

use profile::OpClock;
pub use profile::OpTime;

use buffers::{Buf, Layout, kept_tensors};
use chunks::{View, chunk_views, chunks, tile_samples};

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
