//! # qat-core — the quantization math of Jacob et al. 2018
//!
//! Everything numeric that training, export and the integer runtime must agree on lives here, once
//! (one place for rounding, see docs/design.md):
//!
//! | paper section | module | what |
//! |---|---|---|
//! | §2.1 quantization scheme, r = S(q − Z) | [`scheme`] | [`QuantParams`], [`PerChannelParams`], [`QuantRange`], nudging so 0.0 is exact |
//! | §2.2 integer-arithmetic-only matrix multiplication, M = 2^−n·M0 | [`fixed_point`] | [`fixed_point::QuantizedMultiplier`], SRDHM, rounding divide by power of two |
//! | §2.4 fused layer (int32 bias, requantize, clamp) | [`fixed_point::requantize`] | the scalar epilogue every kernel must reproduce bit for bit |
//! | §3 simulated quantization | [`scheme::simulated_quantize`], [`array`](mod@array) | fake quant on scalars and ndarray, per tensor and per channel |
//! | §2.4 in the runtimes users deploy to | [`target`] | [`target::Target`]: the requantization arithmetic of `qat`, TFLite, onnxruntime and XNNPACK (conv/FC, add, pools, concat, input quantize) |
//!
//! The builder-style configs of the other crates write their by-value setters with
//! [`by_value_setters!`].
//!
//! ## Conventions
//! * Activations: asymmetric per tensor, `[0, 2^b − 1]`, range extended to include 0 and nudged
//!   (TFLite `NudgeQuantizationRange`).
//! * Weights: symmetric narrow range `[−(2^(b−1) − 1), 2^(b−1) − 1]`, zero point 0, per output channel.
//! * Rounding of real → integer in quantize/fake quant: ties to even of `x · (1/S)` computed in f32,
//!   exactly like libtorch's `fake_quantize_per_tensor_affine`.
//! * Zero points and multipliers: round half away from zero (TFLite / gemmlowp).
//!
//! ```
//! use qat_core::{QuantParams, fixed_point::QuantizedMultiplier};
//! let act = QuantParams::from_min_max(-1.0, 3.0, 0, 255)?;
//! assert_eq!(act.zero_point(), 64);
//! assert_eq!(act.fake_quant(0.0), 0.0); // zero is exact after nudging
//! let m = QuantizedMultiplier::from_f64(0.25)?;
//! assert_eq!(m.apply(1000), 250);
//! # Ok::<(), qat_core::QuantError>(())
//! ```

pub mod array;
mod builder;
mod error;
pub mod fixed_point;
pub mod scheme;
pub mod target;

pub use error::QuantError;
pub use scheme::{MIN_SCALE, PerChannelParams, QuantParams, QuantRange};
pub use target::Target;
