//! # qat-int8-runtime — integer-arithmetic-only inference (paper §2)
//!
//! Module layout (filled in by the runtime issue):
//! - [`model`]: the `Int8Model` graph (tensors, ops, quantized weights, multipliers, clamps).
//! - `format`: the `.qat8` file (magic, version, checksum, bincode payload) and validation.
//! - `kernels/{frame,reference,portable,x86_64}`: kernel tiers (STYLE.md 1–4).
//! - `executor`: planned buffers, rayon parallelism.

pub mod model;

pub use model::{Clamp, Conv2d, DType, FullyConnected, Int8Model, Op, TensorId, TensorInfo, Weights};
