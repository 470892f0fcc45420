//! # qat-autograd — differentiable fake quantization for tch tensors
//!
//! Paper §3 (simulated quantization) as autograd ops. The forward pass of every op equals qat-core's
//! reference ([`qat_core::QuantParams::fake_quant`], [`qat_core::array::fake_quant_per_channel`]) bit
//! for bit — ties of `x·(1/S)` round to even in f32, as libtorch and qat-core both do — and the
//! backward pass is a straight-through estimator ([`Ste`]).
//!
//! | what | function | kernel |
//! |---|---|---|
//! | per-tensor fake quant, clipped or plain STE | [`fake_quant_per_tensor`], [`fake_quant_per_tensor_parts`] | one pass of our own (CPU, 1 thread) or vectorized libtorch ops; STE attached with `addcmul` (same values and masks as `fake_quantize_per_tensor_affine`) |
//! | fused clamp (ReLU, ReLU6) + per-tensor fake quant | [`clamp_fake_quant_per_tensor`] | one pass of our own (CPU, 1 thread, clipped STE) computing the value and the combined mask, gradient attached with one `addcmul`; else libtorch `relu`/`relu6`/`clamp` + [`fake_quant_per_tensor`] |
//! | the same with parameters in device tensors (no host read in a training step) | [`fake_quant_device`], [`clamp_fake_quant_device`] ([`DeviceQParams`]) | the same kernels, or libtorch's tensor-parameter overloads |
//! | per-channel fake quant along any axis | [`fake_quant_per_channel`] | libtorch `fake_quantize_per_channel_affine` |
//! | LSQ learnable scale (Esser et al. 2020) | [`lsq_fake_quant_per_tensor`], [`lsq_fake_quant_per_channel`] | libtorch `_fake_quantize_learnable_*` |
//! | PACT learnable activation clip (Choi et al. 2018) | [`pact_fake_quant`] | composition |
//!
//! Parameters (scale, zero point, grid) always come from qat-core; this crate never computes them
//! except where they are trained (LSQ's scale, PACT's α → [`qat_core::QuantParams::asymmetric`]).
//!
//! ```
//! use qat_autograd::{Ste, fake_quant_per_tensor};
//! use qat_core::QuantParams;
//! use tch::Tensor;
//! let p = QuantParams::asymmetric(-1.0, 3.0, 8)?;
//! let x = Tensor::from_slice(&[-2.0f32, 0.0, 1.0, 5.0]);
//! let y = fake_quant_per_tensor(&x, &p, Ste::Clipped)?;
//! let want: Vec<f32> = [-2.0f32, 0.0, 1.0, 5.0].iter().map(|&v| p.fake_quant(v)).collect();
//! assert_eq!(Vec::<f32>::try_from(&y)?, want);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cpu;
mod device;
mod error;
mod fake_quant;
pub mod host_read;
mod kernels;
mod learnable;
#[doc(hidden)]
pub mod testing;

pub use device::{DeviceQParams, clamp_fake_quant_device, fake_quant_device};
pub use error::FakeQuantError;
pub use fake_quant::{
    Ste, TensorQParams, clamp_fake_quant_per_tensor, fake_quant, fake_quant_per_channel,
    fake_quant_per_tensor, fake_quant_per_tensor_parts,
};
#[doc(hidden)]
pub use kernels::{min_max, plane_sums};
pub use learnable::{
    lsq_fake_quant_per_channel, lsq_fake_quant_per_tensor, lsq_grad_factor, lsq_init_scale,
    pact_fake_quant, pact_fake_quant_device, pact_qparams,
};
