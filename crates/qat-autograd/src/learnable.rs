//! Learnable quantization ranges — research options beyond the paper, which learns no range.
//!
//! * **LSQ** (Esser et al. 2020, "Learned Step Size Quantization", arXiv 1902.08153): the scale `S`
//!   is a trained parameter. Forward as in [`crate::fake_quant_per_tensor`]; backward (LSQ eq. 3)
//!   `∂y/∂S = (round(x/S) − x/S)` inside the range and `qmin − Z` / `qmax − Z` outside, multiplied by
//!   the gradient scale `g = 1/√(N·qmax)` (LSQ §2.2, `N` = number of elements quantized, as PyTorch's
//!   `_LearnableFakeQuantize`). libtorch's `_fake_quantize_learnable_per_{tensor,channel}_affine`
//!   kernels implement it.
//! * **PACT** (Choi et al. 2018, arXiv 1805.06085): activations are clipped to `[0, α]` with a trained
//!   `α`, then quantized on `[0, 2^b − 1]` with `S = α/(2^b − 1)` (qat-core's
//!   [`QuantParams::asymmetric`]`(0, α, b)`). Backward (PACT eq. 2–3): `∂y/∂x = 1` for `0 ≤ x < α`,
//!   `∂y/∂α = 1` for `x ≥ α`, 0 elsewhere (STE through the rounding).

use qat_core::{MIN_SCALE, QuantParams, QuantRange};
use tch::Tensor;

use crate::FakeQuantError;
use crate::fake_quant::{channel_extent, check_f32, fake_quant_per_tensor};

/// LSQ's gradient scale `g = 1/√(numel·qmax)` (LSQ §2.2), as PyTorch's `_LearnableFakeQuantize`
/// uses for both per-tensor and per-channel scales.
///
/// ```
/// use qat_core::QuantRange;
/// let g = qat_autograd::lsq_grad_factor(1000, QuantRange::signed_narrow(8)?);
/// assert!((g - 1.0 / (1000.0f64 * 127.0).sqrt()).abs() < 1e-15);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn lsq_grad_factor(numel: i64, range: QuantRange) -> f64 {
    1.0 / ((numel.max(1) as f64) * f64::from(range.qmax.max(1))).sqrt()
}

/// LSQ's initial step size `S₀ = 2·mean(|x|)/√qmax` (LSQ §2.1), clamped below to [`MIN_SCALE`].
pub fn lsq_init_scale(x: &Tensor, range: QuantRange) -> Result<f32, FakeQuantError> {
    const OP: &str = "lsq_init_scale";
    check_f32(OP, x)?;
    let mean_abs = x
        .f_abs()
        .and_then(|a| a.f_mean(None))
        .and_then(|m| crate::host_read::scalar_f64(&m, "lsq init scale"))
        .map_err(FakeQuantError::torch(OP))?;
    let s = 2.0 * mean_abs / f64::from(range.qmax.max(1)).sqrt();
    Ok((s as f32).max(MIN_SCALE))
}

fn check_param_shape(
    op: &'static str,
    what: &'static str,
    t: &Tensor,
    expected: i64,
) -> Result<(), FakeQuantError> {
    let got = t.size();
    if got.as_slice() != [expected] {
        return Err(FakeQuantError::ParamShape {
            op,
            what,
            expected: vec![expected],
            got,
        });
    }
    Ok(())
}

/// LSQ's parameters for `x`: `scale` and `zero_point` checked to be `f32[channels]`, the scale
/// clamped below to [`MIN_SCALE`], and the gradient scale [`lsq_grad_factor`] of `x`'s element
/// count.
fn lsq_params(
    op: &'static str,
    x: &Tensor,
    (scale, zero_point): (&Tensor, &Tensor),
    channels: i64,
    range: QuantRange,
) -> Result<(Tensor, f64), FakeQuantError> {
    check_param_shape(op, "scale", scale, channels)?;
    check_param_shape(op, "zero_point", zero_point, channels)?;
    let g = lsq_grad_factor(x.numel() as i64, range);
    let s = scale
        .f_clamp_min(f64::from(MIN_SCALE))
        .map_err(FakeQuantError::torch(op))?;
    Ok((s, g))
}

/// LSQ fake quantization per tensor with a learnable `scale` (`f32[1]`) and `zero_point` (`f32[1]`;
/// leave `requires_grad` off to keep it fixed, e.g. `0` for symmetric weights). The zero point is
/// rounded half to even and clamped to the grid in the forward pass; the scale is clamped below to
/// [`MIN_SCALE`] (gradient passes while it is above). Gradient scale `g` from [`lsq_grad_factor`].
///
/// For a given scale and integer zero point, the forward equals
/// [`QuantParams::fake_quant`] with `QuantParams::new(scale, zero_point, range)`.
///
/// ```
/// use qat_autograd::lsq_fake_quant_per_tensor;
/// use qat_core::QuantRange;
/// use tch::Tensor;
/// let x = Tensor::from_slice(&[-20f32, 0.04, 0.15, 12.76, 20.0]);
/// let s = Tensor::from_slice(&[0.1f32]).set_requires_grad(true);
/// let z = Tensor::from_slice(&[0f32]);
/// let y = lsq_fake_quant_per_tensor(&x, &s, &z, QuantRange::signed(8)?)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![-12.8, 0.0, 0.2, 12.7, 12.7]);
/// y.sum(None).backward();
/// assert!(s.grad().double_value(&[0]).is_finite());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn lsq_fake_quant_per_tensor(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    range: QuantRange,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "lsq_fake_quant_per_tensor";
    check_f32(OP, x)?;
    let (s, g) = lsq_params(OP, x, (scale, zero_point), 1, range)?;
    x.f_internal_fake_quantize_learnable_per_tensor_affine(
        &s,
        zero_point,
        i64::from(range.qmin),
        i64::from(range.qmax),
        g,
    )
    .map_err(FakeQuantError::torch(OP))
}

/// LSQ fake quantization per channel along `axis` with learnable `scale` and `zero_point` (`f32[C]`,
/// `C` = extent of `axis`). Semantics as [`lsq_fake_quant_per_tensor`], channel by channel; the
/// gradient scale uses the whole tensor's element count (PyTorch's convention).
pub fn lsq_fake_quant_per_channel(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: usize,
    range: QuantRange,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "lsq_fake_quant_per_channel";
    check_f32(OP, x)?;
    let channels = channel_extent(OP, x, axis)?;
    let (s, g) = lsq_params(OP, x, (scale, zero_point), channels, range)?;
    x.f_internal_fake_quantize_learnable_per_channel_affine(
        &s,
        zero_point,
        axis as i64,
        i64::from(range.qmin),
        i64::from(range.qmax),
        g,
    )
    .map_err(FakeQuantError::torch(OP))
}

/// The quantization parameters PACT uses for a clip value `alpha` (`f32[1]`): qat-core's
/// [`QuantParams::asymmetric`]`(0, α, bits)`, i.e. `S = α/(2^b − 1)`, `Z = 0`.
pub fn pact_qparams(alpha: &Tensor, bits: u32) -> Result<QuantParams, FakeQuantError> {
    const OP: &str = "pact_qparams";
    check_param_shape(OP, "alpha", alpha, 1)?;
    let a = crate::host_read::scalar_f64(alpha, "pact alpha").map_err(FakeQuantError::torch(OP))?;
    if !a.is_finite() || a <= 0.0 {
        return Err(FakeQuantError::NonPositive {
            op: OP,
            what: "alpha",
            value: a,
        });
    }
    QuantParams::asymmetric(0.0, a as f32, bits).map_err(FakeQuantError::quant(OP))
}

/// PACT activation fake quantization: `y = FQ(clamp(x, 0, α))` on `[0, 2^b − 1]` with the parameters
/// of [`pact_qparams`]; the value equals [`QuantParams::fake_quant`] of `x` with those parameters.
///
/// Gradients: `∂y/∂x = 1` for `0 ≤ x ≤ α` (0 elsewhere), `∂y/∂α = 1` for `x > α` (PACT eq. 3), composed
/// as `y = FQ(x)⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾ + (c − c⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)` with `c = min(max(x, 0), α)`.
///
/// ```
/// use qat_autograd::pact_fake_quant;
/// use tch::Tensor;
/// let x = Tensor::from_slice(&[-1f32, 0.5, 3.0]).set_requires_grad(true);
/// let alpha = Tensor::from_slice(&[2.55f32]).set_requires_grad(true);
/// let y = pact_fake_quant(&x, &alpha, 8)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.5, 2.55]);
/// y.sum(None).backward();
/// assert_eq!(Vec::<f32>::try_from(x.grad())?, vec![0.0, 1.0, 0.0]);
/// assert_eq!(alpha.grad().double_value(&[0]), 1.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pact_fake_quant(x: &Tensor, alpha: &Tensor, bits: u32) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "pact_fake_quant";
    check_f32(OP, x)?;
    let p = pact_qparams(alpha, bits)?;
    let fq = tch::no_grad(|| fake_quant_per_tensor(x, &p, crate::Ste::Clipped))?;
    pact_ste(OP, x, alpha, fq)
}

/// PACT's straight-through composition: the fake-quantized value `fq` forward, the gradients of
/// `c = min(max(x, 0), α)` backward (`fq + (c − c⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)`); `fq` itself where nothing needs a gradient.
fn pact_ste(
    op: &'static str,
    x: &Tensor,
    alpha: &Tensor,
    fq: Tensor,
) -> Result<Tensor, FakeQuantError> {
    if !x.requires_grad() && !alpha.requires_grad() {
        return Ok(fq);
    }
    let clipped = x
        .f_clamp_min(0.0)
        .and_then(|c| c.f_minimum(alpha))
        .map_err(FakeQuantError::torch(op))?;
    Ok(fq + (&clipped - clipped.detach()))
}

/// PACT's parameters computed on `alpha`'s device, without reading `α` back: `S = max(α/(2^b − 1),
/// MIN_SCALE)`, `Z = 0` — [`pact_qparams`]'s values bit for bit (qat-core's
/// [`QuantParams::asymmetric`]`(0, α, b)`: `max(α, 0) − min(0, 0) = α`, one f32 division, and the
/// zero point `qmin − 0/S` clamps to `qmin = 0`).
fn pact_qparams_device(alpha: &Tensor, bits: u32) -> Result<crate::DeviceQParams, FakeQuantError> {
    const OP: &str = "pact_qparams_device";
    let range = QuantRange::unsigned(bits).map_err(FakeQuantError::quant(OP))?;
    let steps = f64::from(range.steps() as f32);
    let scale = tch::no_grad(|| {
        let a = alpha.f_detach()?.f_reshape([1])?;
        a.f_div(&a.f_full_like(steps)?)?
            .f_clamp_min(f64::from(MIN_SCALE))
    })
    .map_err(FakeQuantError::torch(OP))?;
    let zero = scale.f_zeros_like().map_err(FakeQuantError::torch(OP))?;
    crate::DeviceQParams::new(scale, zero, range, None)
}

/// [`pact_fake_quant`] without a device→host read (for the training step on a GPU): the
/// parameters are computed on the device ([`pact_qparams`]'s values bit for bit), and the values
/// and gradients equal [`pact_fake_quant`]'s for every finite `α > 0`.
///
/// `α` is not read, so a non-positive or non-finite `α` cannot be refused here as
/// [`pact_fake_quant`] refuses it ([`FakeQuantError::NonPositive`]). Instead every output is NaN:
/// the loss becomes non-finite and the trainer stops with its step, never a silently dead layer.
///
/// ```
/// use qat_autograd::{pact_fake_quant, pact_fake_quant_device};
/// use tch::Tensor;
/// let x = Tensor::from_slice(&[-1f32, 0.5, 3.0]);
/// let alpha = Tensor::from_slice(&[2.55f32]);
/// let y = pact_fake_quant_device(&x, &alpha, 8)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, Vec::<f32>::try_from(&pact_fake_quant(&x, &alpha, 8)?)?);
/// let bad = pact_fake_quant_device(&x, &Tensor::from_slice(&[-1f32]), 8)?;
/// assert!(Vec::<f32>::try_from(&bad)?.iter().all(|v| v.is_nan()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pact_fake_quant_device(
    x: &Tensor,
    alpha: &Tensor,
    bits: u32,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "pact_fake_quant_device";
    check_f32(OP, x)?;
    check_param_shape(OP, "alpha", alpha, 1)?;
    let p = pact_qparams_device(alpha, bits)?;
    let torch = || FakeQuantError::torch(OP);
    // 0 where α > 0 (NaN compares false), NaN elsewhere; α = +∞ gives S = ∞ and NaN outputs.
    let guard = tch::no_grad(|| {
        let positive = alpha.f_detach()?.f_reshape([1])?.f_gt(0.0)?;
        Tensor::f_where_scalar(&positive, 0.0, f64::NAN)?.f_to_kind(tch::Kind::Float)
    })
    .map_err(torch())?;
    let fq = tch::no_grad(|| crate::fake_quant_device(x, &p, crate::Ste::Clipped))?;
    let fq = tch::no_grad(|| fq.f_add(&guard)).map_err(torch())?;
    pact_ste(OP, x, alpha, fq)
}
