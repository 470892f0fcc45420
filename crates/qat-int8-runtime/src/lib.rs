//! # qat-int8-runtime — integer-arithmetic-only inference (paper §2)
//!
//! Loads `.qat8` models and runs them with uint8 activations, int8 (or uint8) weights, int32
//! accumulators and fixed-point requantization (Jacob et al. 2018, eq. 7–10; gemmlowp/TFLite
//! rounding from [`qat_core::fixed_point`]). No libtorch anywhere in its dependency tree.
//!
//! | module | what |
//! |---|---|
//! | [`model`] | the [`Int8Model`] graph: tensors, ops, quantized weights, multipliers, clamps |
//! | [`format`](mod@format) | the `.qat8` file: magic, version, CRC-32, bincode payload; [`LoadError`] |
//! | [`validate`] | [`Int8Model::validate`]: every invariant the executor relies on; [`ValidationError`] |
//! | `kernels` (private) | kernel tiers: reference loops, the kernel frame (packed GEMM, depthwise) with portable / AVX2 / AVX-512 VNNI micro-kernels; [`KernelPath`] names them |
//! | [`executor`] | [`Executor`]: planned buffers, rayon parallelism, `run` / `run_u8` / `run_all` |
//!
//! ## Main API
//! - `Int8Model::{load, save, from_bytes, to_bytes, validate}`.
//! - `Executor::new(&model)` (best kernel path, `QAT_KERNEL` override) or
//!   `Executor::with_path(&model, KernelPath::Reference)` (an error on a CPU that lacks the
//!   path); both borrow the model, `Executor::from_arc` shares it.
//! - `exec.run(x.view())` → `Vec<ArrayD<f32>>`: graph outputs dequantized, input `[N, ...]` f32 NHWC.
//! - `exec.run_u8(x.view())` → `Vec<ArrayD<u8>>`: the outputs' uint8 codes.
//! - `exec.run_all(x.view())` → `Vec<TensorValue>`: every tensor's value (codes or f32), for
//!   per-layer fidelity reports.
//!
//! ```
//! use qat_core::QuantParams;
//! use qat_int8_runtime::{Executor, Int8Model, TensorInfo, DType, Op, Target};
//! let q = QuantParams::asymmetric(0.0, 2.55, 8)?;
//! let model = Int8Model {
//!     name: "roundtrip".into(),
//!     tensors: vec![
//!         TensorInfo { name: "x".into(), shape: vec![3], dtype: DType::F32, quant: None },
//!         TensorInfo { name: "xq".into(), shape: vec![3], dtype: DType::U8, quant: Some(q) },
//!     ],
//!     ops: vec![Op::Quantize { input: 0, output: 1 }],
//!     input: 0,
//!     outputs: vec![1],
//!     rounding: Target::Qat,
//! };
//! let model = Int8Model::from_bytes(&model.to_bytes()?)?;
//! let mut exec = Executor::new(&model)?;
//! let x = ndarray::arr2(&[[0.0f32, 0.014, 9.0]]).into_dyn();
//! assert_eq!(exec.run_u8(x.view())?[0].as_slice().unwrap(), &[0, 1, 255]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod executor;
pub mod format;
mod kernels;
pub mod limits;
pub mod model;
#[doc(hidden)]
pub mod testing;
pub mod validate;

pub use executor::{Executor, OpTime, RunError, TensorValue};
pub use format::{LoadError, SaveError};
pub use kernels::{KERNEL_ENV, KernelPath};
pub use limits::{Cost, Limits, LoadOptions};
pub use model::{
    Clamp, Conv2d, DType, FullyConnected, Int8Model, Op, Pool2d, PoolWindow, Rounding, Target,
    TensorId, TensorInfo, Weights,
};
pub use validate::ValidationError;
