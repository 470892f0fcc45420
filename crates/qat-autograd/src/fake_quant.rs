//! Paper §3, simulated quantization with a straight-through estimator (STE).
//!
//! Forward (both estimators), per element with the parameters `(S, Z, [qmin, qmax])` that qat-core
//! computed:
//!
//! `y = S·(clamp(round_half_even(x·(1/S)) + Z, qmin, qmax) − Z)`
//!
//! which is exactly [`qat_core::QuantParams::fake_quant`] (libtorch's kernel computes `1/S` and the
//! product `x·(1/S)` in f32 and rounds half to even, as qat-core does; `x/S` would differ on
//! near-ties). The per-tensor op computes the same values and masks without that kernel, which is
//! slow on CPU (see [`fake_quant_per_tensor`]); the per-channel op (small weight tensors) is
//! libtorch's fused kernel.
//!
//! Backward:
//! * [`Ste::Clipped`] (default; PyTorch's and TF's choice): `∂y/∂x = 1` where the *rounded* code
//!   `round_half_even(x/S) + Z` lies in `[qmin, qmax]`, else 0 — the mask libtorch's fused
//!   `fake_quantize_*_affine` kernels cache in the forward pass; the per-tensor op carries it as
//!   `y = FQ(x)⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾ + (x − x⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)·m`.
//! * [`Ste::Plain`] (Bengio et al. 2013): `∂y/∂x = 1` everywhere. libtorch has no kernel for it; it is
//!   composed as `y = FQ(x)⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾ + (x − x⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)`, whose value is bit-for-bit `FQ(x)`
//!   (`x − x = 0` exactly for finite `x`) and whose gradient is the identity.

use qat_core::{PerChannelParams, QuantParams, QuantRange};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::FakeQuantError;
use crate::device::upload;
use crate::kernels::{fq_kernel, fq_ste_kernel};

/// Which straight-through estimator carries the gradient through rounding and clamping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Ste {
    /// Gradient 1 where the rounded code is representable (`qmin ≤ round(x/S) + Z ≤ qmax`), 0
    /// outside. Values clamped by the range get no gradient.
    #[default]
    Clipped,
    /// Gradient 1 everywhere (the estimator of Bengio et al. 2013, "identity" STE).
    Plain,
}

/// Quantization parameters of one tensor: one `(S, Z)` for all of it, or one per slice along an
/// axis. Always produced by qat-core (observers call its constructors), never by this crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorQParams {
    /// One scale and zero point for the whole tensor.
    PerTensor(QuantParams),
    /// One scale and zero point per slice along `axis`.
    PerChannel(PerChannelParams),
}

impl TensorQParams {
    /// The per-tensor parameters, if this is per tensor.
    pub fn per_tensor(&self) -> Option<&QuantParams> {
        match self {
            Self::PerTensor(p) => Some(p),
            Self::PerChannel(_) => None,
        }
    }

    /// The per-channel parameters, if this is per channel.
    pub fn per_channel(&self) -> Option<&PerChannelParams> {
        match self {
            Self::PerTensor(_) => None,
            Self::PerChannel(p) => Some(p),
        }
    }
}

pub(crate) fn check_f32(op: &'static str, x: &Tensor) -> Result<(), FakeQuantError> {
    let kind = x.f_kind().map_err(FakeQuantError::torch(op))?;
    if kind == Kind::Float {
        Ok(())
    } else {
        Err(FakeQuantError::NotF32 { op, kind })
    }
}

/// The extent of `x` along the channel axis `axis`; an error if `x` has no such axis.
pub(crate) fn channel_extent(
    op: &'static str,
    x: &Tensor,
    axis: usize,
) -> Result<i64, FakeQuantError> {
    let shape = x.size();
    let rank = shape.len();
    shape
        .get(axis)
        .copied()
        .ok_or(FakeQuantError::AxisOutOfRange { op, axis, rank })
}

/// Checks that `x` has `channels` channels along `axis`.
pub(crate) fn check_channels(
    op: &'static str,
    x: &Tensor,
    axis: usize,
    channels: usize,
) -> Result<(), FakeQuantError> {
    let extent = channel_extent(op, x, axis)?;
    if extent as usize != channels {
        return Err(FakeQuantError::ChannelMismatch {
            op,
            params: channels,
            axis,
            tensor: extent as usize,
        });
    }
    Ok(())
}

/// Turns a clipped-STE result into a plain-STE one: value of `fq` (detached), gradient 1 w.r.t. `x`.
pub(crate) fn plain_ste(x: &Tensor, fq: &Tensor) -> Tensor {
    if x.requires_grad() {
        fq.detach() + (x - x.detach())
    } else {
        fq.shallow_clone()
    }
}

/// Runs `run`, one of libtorch's fused fake-quant kernels (which cache the clipped-STE mask for
/// the backward), with the estimator `ste`: as it is for [`Ste::Clipped`], its value without
/// gradient turned into [`plain_ste`]'s for [`Ste::Plain`].
pub(crate) fn fused_with_ste(
    x: &Tensor,
    ste: Ste,
    run: impl FnOnce() -> Result<Tensor, tch::TchError>,
) -> Result<Tensor, tch::TchError> {
    match ste {
        Ste::Clipped => run(),
        Ste::Plain => Ok(plain_ste(x, &tch::no_grad(run)?)),
    }
}

/// Per-channel fake quantization along `axis` by libtorch's fused kernel, with the scales (`f32[C]`)
/// and zero points (`i32[C]`) already on `x`'s device, with the estimator `ste` (as
/// [`fused_with_ste`]).
pub(crate) fn fused_per_channel(
    op: &'static str,
    x: &Tensor,
    [scale, zero_point]: [&Tensor; 2],
    axis: usize,
    range: QuantRange,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    let run = || {
        x.f_fake_quantize_per_channel_affine(
            scale,
            zero_point,
            axis as i64,
            i64::from(range.qmin),
            i64::from(range.qmax),
        )
    };
    fused_with_ste(x, ste, run).map_err(FakeQuantError::torch(op))
}

/// Per-tensor fake quantization without libtorch's fused kernel, for parameters in any form: with
/// the clipped STE the one-pass CPU kernel ([`fq_ste_cpu`] with the parameters' `consts`) where it
/// applies; else `parts(want_mask)`, which gives `FQ(x)` and the clipped-STE mask (when asked)
/// without gradient, and the estimator's gradient attached: `fq + (x − x⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)·m` with the
/// mask, `fq + (x − x⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)` without (plain STE), `fq` itself where `x` needs no gradient.
/// The value is bit for bit `fq` (`x − x = +0` for finite `x`).
pub(crate) fn composed_fake_quant(
    x: &Tensor,
    ste: Ste,
    consts: impl FnOnce() -> Option<[f32; 4]>,
    parts: impl FnOnce(bool) -> Result<(Tensor, Option<Tensor>), tch::TchError>,
) -> Result<Tensor, tch::TchError> {
    if ste == Ste::Clipped
        && let Some(r) = fq_ste_cpu(x, consts, f32::NEG_INFINITY, f32::INFINITY)
    {
        return r;
    }
    let want_mask = ste == Ste::Clipped && x.requires_grad();
    let (fq, mask) = parts(want_mask)?;
    if !x.requires_grad() {
        return Ok(fq);
    }
    let zero_with_grad = x.f_sub(&x.f_detach()?)?;
    match mask {
        Some(m) => fq.f_addcmul(&zero_with_grad, &m),
        None => fq.f_add(&zero_with_grad),
    }
}

/// Per-tensor fake quantization `y = S·(clamp(round_half_even(x·(1/S)) + Z, qmin, qmax) − Z)`
/// (paper §3) with the chosen straight-through estimator.
///
/// The forward value equals [`QuantParams::fake_quant`] applied to every element, bit for bit,
/// including non-finite inputs (NaN → 0, ±∞ → the clamped end of the grid, as qat-core). `x` must be
/// `f32`.
///
/// It does not call libtorch's `fake_quantize_per_tensor_affine`, whose CPU kernel is a scalar loop
/// (`std::nearbyint`, `fmin`/`fmax` through the PLT) that cost ≈ 10 ns per element here: `FQ(x)` and
/// the clipped-STE mask come from one pass of our own over a contiguous CPU tensor when libtorch runs
/// one intra-op thread, else from vectorized libtorch ops (see [`fake_quant_per_tensor_parts`]);
/// the gradient is attached as `y = FQ(x)⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾ + (x − x⁽ᵈᵉᵗᵃᶜʰᵉᵈ⁾)·m` (`addcmul`), or, on the
/// one-pass path with the clipped STE, as `y = b + x·m` with `b = FQ(x) − m·x` from the same pass
/// (exact, see [`clamp_fake_quant_per_tensor`]; one pass less; with any number of threads). Values and
/// clipped-STE gradients are identical to libtorch's kernel on finite inputs (tested), 4–6× faster
/// forward + backward on MobileNet activations (`docs/benchmarks.md`, training section).
/// With gradients, a non-finite input element gives NaN (its STE term `x − x` is NaN).
///
/// ```
/// use qat_autograd::{Ste, fake_quant_per_tensor};
/// use qat_core::QuantParams;
/// use tch::Tensor;
/// let p = QuantParams::asymmetric(0.0, 2.55, 8)?; // S = 0.01, Z = 0
/// let x = Tensor::from_slice(&[0.004f32, 0.016, 3.0]).set_requires_grad(true);
/// let y = fake_quant_per_tensor(&x, &p, Ste::Clipped)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.02, 2.55]);
/// y.sum(None).backward();
/// assert_eq!(Vec::<f32>::try_from(x.grad())?, vec![1.0, 1.0, 0.0]); // 3.0 is clamped
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn fake_quant_per_tensor(
    x: &Tensor,
    p: &QuantParams,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "fake_quant_per_tensor";
    check_f32(OP, x)?;
    if x.device() != tch::Device::Cpu {
        // On a GPU libtorch's fused kernel (one launch, mask cached for the backward) beats the
        // composed ops (measured on an H200: QAT step 3.96× float with them); same formula and bits.
        let run = || {
            x.f_fake_quantize_per_tensor_affine(
                f64::from(p.scale()),
                i64::from(p.zero_point()),
                i64::from(p.qmin()),
                i64::from(p.qmax()),
            )
        };
        return fused_with_ste(x, ste, run).map_err(FakeQuantError::torch(OP));
    }
    composed_fake_quant(
        x,
        ste,
        || Some(kernel_consts(p)),
        |mask| fq_parts(x, p, mask),
    )
    .map_err(FakeQuantError::torch(OP))
}

/// Fake quantization of a clamped value (a fused ReLU, ReLU6 or other clip followed by the output
/// fake quant, paper §2.4/§3): `y = FQ(clamp(x, lo, hi))`, per tensor, with `FQ` as in
/// [`fake_quant_per_tensor`]. The gradient is the product of the clamp's and the STE's:
/// `∂y/∂x = [lo < x < hi]` (strict, as libtorch's `relu`/`hardtanh` backward) times, for
/// [`Ste::Clipped`], the clipped-STE mask of `clamp(x, lo, hi)`. Use `lo = 0, hi = ∞` for ReLU and
/// `lo = 0, hi = 6` for ReLU6.
///
/// The value is bit for bit `FQ(clamp(x))` of qat-core (NaN → 0, as `clamp` keeps NaN). On a
/// contiguous f32 CPU tensor that requires grad, with the clipped STE (and the host fast paths of
/// [`crate::cpu`] on, the default), one pass of our own computes the mask `m` and
/// `b = FQ(clamp(x)) − m·x`, and `y = b + x·m` (`addcmul`) attaches the gradient: the activation's
/// own forward and backward passes and the `x − x` of [`fake_quant_per_tensor`] are gone.
/// `b + x·m` is exactly `FQ(clamp(x))`: where `m = 0` it adds `±0` to `b`, and where `m = 1` the
/// value is on the grid and not clipped, so `FQ(x) − x` (at most `S/2` apart, same sign or zero) is
/// exact and adding `x` back gives `FQ(x)` exactly. Elsewhere (GPU, strided input, no gradient,
/// plain STE, fast paths off) it is libtorch's `relu`/`relu6`/`clamp`
/// followed by [`fake_quant_per_tensor`], with the same values and gradients. As there, with
/// gradients a non-finite input element gives NaN.
///
/// ```
/// use qat_autograd::{Ste, clamp_fake_quant_per_tensor};
/// use qat_core::QuantParams;
/// use tch::Tensor;
/// let p = QuantParams::asymmetric(0.0, 2.55, 8)?; // S = 0.01, Z = 0
/// let x = Tensor::from_slice(&[-1.0f32, 0.016, 2.0, 7.0]).set_requires_grad(true);
/// let y = clamp_fake_quant_per_tensor(&x, 0.0, 6.0, &p, Ste::Clipped)?; // ReLU6, then FQ
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.02, 2.0, 2.55]);
/// y.sum(None).backward();
/// assert_eq!(Vec::<f32>::try_from(x.grad())?, vec![0.0, 1.0, 1.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn clamp_fake_quant_per_tensor(
    x: &Tensor,
    lo: f32,
    hi: f32,
    p: &QuantParams,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    let consts = || Some(kernel_consts(p));
    clamp_then_fake_quant(
        "clamp_fake_quant_per_tensor",
        x,
        [lo, hi],
        ste,
        consts,
        |c| fake_quant_per_tensor(c, p, ste),
    )
}

/// `FQ(clamp(x, lo, hi))` per tensor with the parameters in any form (see
/// [`clamp_fake_quant_per_tensor`]): `x` and the bounds checked, then the one-pass CPU kernel
/// ([`fq_ste_cpu`] with the parameters' `consts`) where it applies, else [`activation_clamp`]
/// followed by `fq`.
pub(crate) fn clamp_then_fake_quant(
    op: &'static str,
    x: &Tensor,
    [lo, hi]: [f32; 2],
    ste: Ste,
    consts: impl FnOnce() -> Option<[f32; 4]>,
    fq: impl FnOnce(&Tensor) -> Result<Tensor, FakeQuantError>,
) -> Result<Tensor, FakeQuantError> {
    check_f32(op, x)?;
    check_clamp(op, lo, hi)?;
    if ste == Ste::Clipped
        && let Some(r) = fq_ste_cpu(x, consts, lo, hi)
    {
        return r.map_err(FakeQuantError::torch(op));
    }
    let clamped = activation_clamp(x, lo, hi).map_err(FakeQuantError::torch(op))?;
    fq(&clamped)
}

/// Rejects a clamp range with a NaN bound or `lo > hi` ([`FakeQuantError::InvalidClamp`]).
pub(crate) fn check_clamp(op: &'static str, lo: f32, hi: f32) -> Result<(), FakeQuantError> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(FakeQuantError::InvalidClamp { op, lo, hi });
    }
    Ok(())
}

/// The activation `clamp(x, lo, hi)` as libtorch's `relu` (`[0, ∞]`), `relu6` (`[0, 6]`), else
/// [`strict_clamp`].
pub(crate) fn activation_clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor, tch::TchError> {
    if lo == 0.0 && hi == f32::INFINITY {
        x.f_relu()
    } else if lo == 0.0 && hi == 6.0 {
        x.f_relu6()
    } else {
        strict_clamp(x, lo, hi)
    }
}

/// `clamp(x, lo, hi)` with the strict gradient mask `[lo < x < hi]` of `hardtanh` (libtorch's
/// `clamp` passes the gradient at the bounds too).
fn strict_clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor, tch::TchError> {
    let (l, h) = (f64::from(lo), f64::from(hi));
    let value = tch::no_grad(|| x.f_clamp(l, h))?;
    if !x.requires_grad() {
        return Ok(value);
    }
    let mask = tch::no_grad(|| {
        x.f_gt(l)?
            .f_logical_and(&x.f_lt(h)?)?
            .f_to_kind(Kind::Float)
    })?;
    value.f_addcmul(&x.f_sub(&x.f_detach()?)?, &mask)
}

/// `FQ(clamp(x, a, b))` with its gradient attached as `y = base + x·m` (see
/// [`clamp_fake_quant_per_tensor`]); `None` unless `x` is a contiguous CPU tensor that requires
/// grad (and the host fast paths of [`crate::cpu`] are on), or `consts` gives no
/// `[1/S, S, qmin − Z, qmax − Z]` (asked only once the rest applies).
///
/// The one pass runs on the calling thread also when libtorch has more: on the 2-core build
/// machine (Zen 5, MobileNet-v1 QAT steps with 2 threads, `bench_train`, alternated builds) it beat
/// the composed libtorch path, whose eight parallel passes over an activation larger than the
/// caches cost more than one serial pass (α 0.5, batch 256: 1.04–1.13× a float step against
/// 1.36–1.43× with the composed path from 2²⁰ elements on), and splitting the pass over rayon's
/// threads measured no gain (libtorch's OpenMP workers still spin on the cores after each op).
pub(crate) fn fq_ste_cpu(
    x: &Tensor,
    consts: impl FnOnce() -> Option<[f32; 4]>,
    a: f32,
    b: f32,
) -> Option<Result<Tensor, tch::TchError>> {
    if !crate::cpu::in_host_memory::<f32>(x) || !x.requires_grad() {
        return None;
    }
    let [inv, scale, lo, hi] = consts()?;
    let k = [inv, scale, lo, hi, a, b];
    let parts = tch::no_grad(|| -> Result<Option<(Tensor, Tensor)>, tch::TchError> {
        let xd = x.f_detach()?;
        let mut base = xd.f_empty_like()?;
        let mut mask = xd.f_empty_like()?;
        let done = in_place(&xd, &mut base, Some(&mut mask), |xs, bs, ms| {
            fq_ste_kernel(xs, bs, ms.unwrap_or_default(), k);
        });
        Ok(done.map(|()| (base, mask)))
    });
    match parts {
        Ok(Some((base, mask))) => Some(base.f_addcmul(x, &mask)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// `f(x, out, mask)` on the values of `x` and of the fresh tensors `out` and `mask` in CPU memory
/// (through [`crate::cpu`]); `None` where one of them is not there.
fn in_place(
    x: &Tensor,
    out: &mut Tensor,
    mask: Option<&mut Tensor>,
    f: impl FnOnce(&[f32], &mut [f32], Option<&mut [f32]>),
) -> Option<()> {
    use crate::cpu::{with_slice, with_slice_mut};
    with_slice(x, |xs: &[f32]| {
        with_slice_mut(out, |os: &mut [f32]| match mask {
            Some(m) => with_slice_mut(m, |ms: &mut [f32]| f(xs, os, Some(ms))),
            None => {
                f(xs, os, None);
                Some(())
            }
        })
    })
    .flatten()
    .flatten()
}

/// The constants of the one-pass kernels: `[1/S (rounded to f32 once, as qat-core), S, qmin − Z, qmax − Z]`.
fn kernel_consts(p: &QuantParams) -> [f32; 4] {
    let z = p.zero_point();
    [
        1.0f32 / p.scale(),
        p.scale(),
        (p.qmin() - z) as f32,
        (p.qmax() - z) as f32,
    ]
}

/// The two pieces [`fake_quant_per_tensor`] is built from, without autograd: the fake-quantized
/// value `FQ(x)` (bit for bit [`QuantParams::fake_quant`]) and the clipped-STE mask
/// `m = [qmin ≤ round_half_even(x·(1/S)) + Z ≤ qmax]` as `f32` 0/1 (1 for NaN inputs, which
/// quantize to `Z`).
///
/// Computed (on CUDA and on non-contiguous tensors; otherwise by
/// an equivalent single pass) as `t = round_half_even(x·(1/S)) + Z` (NaN → `Z`), `c = clamp(t, qmin, qmax)`,
/// `m = (c == t)`, `FQ = (c − Z)·S`, with `1/S` rounded to f32 once as qat-core does; every step is
/// exact in f32 except `x·(1/S)` and the final product, which are the same single roundings as
/// qat-core's. Adding `Z` (also `Z = 0`) turns a rounded `−0` into `+0`, as qat-core's integer
/// path does.
///
/// ```
/// use qat_autograd::fake_quant_per_tensor_parts;
/// use qat_core::QuantParams;
/// use tch::Tensor;
/// let p = QuantParams::asymmetric(0.0, 2.55, 8)?; // S = 0.01, Z = 0
/// let (fq, m) = fake_quant_per_tensor_parts(&Tensor::from_slice(&[-0.02f32, 0.016, 3.0]), &p)?;
/// assert_eq!(Vec::<f32>::try_from(&fq)?, vec![0.0, 0.02, 2.55]);
/// assert_eq!(Vec::<f32>::try_from(&m)?, vec![0.0, 1.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn fake_quant_per_tensor_parts(
    x: &Tensor,
    p: &QuantParams,
) -> Result<(Tensor, Tensor), FakeQuantError> {
    const OP: &str = "fake_quant_per_tensor_parts";
    check_f32(OP, x)?;
    match fq_parts(x, p, true).map_err(FakeQuantError::torch(OP))? {
        (fq, Some(mask)) => Ok((fq, mask)),
        // fq_parts(.., true) always computes the mask; a mask of ones keeps this total anyway.
        (fq, None) => {
            let ones = fq.f_ones_like().map_err(FakeQuantError::torch(OP))?;
            Ok((fq, ones))
        }
    }
}

/// `(FQ(x), mask if want_mask)` without gradient; see [`fake_quant_per_tensor_parts`].
fn fq_parts(
    x: &Tensor,
    p: &QuantParams,
    want_mask: bool,
) -> Result<(Tensor, Option<Tensor>), tch::TchError> {
    if let Some(r) = fq_parts_cpu(x, || Some(kernel_consts(p)), want_mask) {
        return r;
    }
    let inv = 1.0f32 / p.scale();
    let z = i64::from(p.zero_point());
    tch::no_grad(|| {
        let mut t = x.f_detach()?.f_mul_scalar(f64::from(inv))?;
        let _ = t.f_round_()?;
        let _ = t.f_add_scalar_(z)?;
        let _ = t.f_nan_to_num_(z as f64, None, None)?;
        let mut c = t.f_clamp(i64::from(p.qmin()), i64::from(p.qmax()))?;
        let mask = if want_mask {
            let m = t.f_empty_like()?;
            let _ = c.f_eq_tensor_out(&m, &t)?;
            Some(m)
        } else {
            None
        };
        if z != 0 {
            let _ = c.f_sub_scalar_(z)?;
        }
        let _ = c.f_mul_scalar_(f64::from(p.scale()))?;
        Ok((c, mask))
    })
}

/// The same `(FQ(x), mask)` in one pass over a contiguous f32 CPU tensor (`None` otherwise, or with
/// the host fast paths of [`crate::cpu`] off: the composed libtorch path; on the calling thread, see
/// [`fq_ste_cpu`]). Per element, with `lo = qmin − Z`, `hi = qmax − Z`:
/// `t = x·(1/S)` (f32), NaN → code `Z`; else `t` is clamped to `[lo − 1, hi + 1]` (which changes
/// neither the clamped code nor the mask) and rounded half to even by `(t + 1.5·2²³) − 1.5·2²³`
/// (exact for `|t| < 2²²`; it also turns `−0` into `+0`), `c = clamp(r, lo, hi)`, `m = [c = r]`,
/// `FQ = c·S`: the values of [`QuantParams::fake_quant`]. `consts` gives
/// `[1/S, S, qmin − Z, qmax − Z]` (asked only once the rest applies; `None`: the composed path).
pub(crate) fn fq_parts_cpu(
    x: &Tensor,
    consts: impl FnOnce() -> Option<[f32; 4]>,
    want_mask: bool,
) -> Option<Result<(Tensor, Option<Tensor>), tch::TchError>> {
    if !crate::cpu::in_host_memory::<f32>(x) {
        return None;
    }
    let [inv, scale, lo, hi] = consts()?;
    let r = tch::no_grad(
        || -> Result<Option<(Tensor, Option<Tensor>)>, tch::TchError> {
            let xd = x.f_detach()?;
            let mut out = xd.f_empty_like()?;
            let mut mask = if want_mask {
                Some(xd.f_empty_like()?)
            } else {
                None
            };
            let done = in_place(&xd, &mut out, mask.as_mut(), |xs, os, ms| {
                fq_kernel(xs, os, ms, [inv, scale, lo, hi]);
            });
            Ok(done.map(|()| (out, mask)))
        },
    );
    r.transpose()
}

/// Per-channel fake quantization along `p.axis()` (any axis: 0 for conv `OIHW` and linear `[out, in]`
/// weights, also 0 for depthwise `[C, 1, kh, kw]`): slice `c` uses `(S[c], Z[c])` in the formula of
/// [`fake_quant_per_tensor`].
///
/// The forward equals [`qat_core::array::fake_quant_per_channel`] (libtorch's
/// `fake_quantize_per_channel_affine` kernel). Errors if the axis is out of range or its extent is not
/// `p.len()`.
///
/// ```
/// use qat_autograd::{Ste, fake_quant_per_channel};
/// use qat_core::{PerChannelParams, QuantRange};
/// use tch::Tensor;
/// let w = Tensor::from_slice(&[1.0f32, -1.0, 0.1, 0.05]).view([2, 2]);
/// let p = PerChannelParams::symmetric(&[1.27, 0.127], QuantRange::signed_narrow(8)?, 0)?;
/// let y = fake_quant_per_channel(&w, &p, Ste::Clipped)?;
/// assert_eq!(Vec::<f32>::try_from(y.flatten(0, -1))?, vec![1.0, -1.0, 0.1, 0.05]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn fake_quant_per_channel(
    x: &Tensor,
    p: &PerChannelParams,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "fake_quant_per_channel";
    check_f32(OP, x)?;
    check_channels(OP, x, p.axis(), p.len())?;
    let torch = || FakeQuantError::torch(OP);
    let scale = upload(p.scales(), x.device()).map_err(torch())?;
    let zero_point = upload(p.zero_points(), x.device()).map_err(torch())?;
    fused_per_channel(OP, x, [&scale, &zero_point], p.axis(), p.range(), ste)
}

/// Fake quantization with per-tensor or per-channel parameters (dispatches to
/// [`fake_quant_per_tensor`] or [`fake_quant_per_channel`]).
pub fn fake_quant(x: &Tensor, p: &TensorQParams, ste: Ste) -> Result<Tensor, FakeQuantError> {
    match p {
        TensorQParams::PerTensor(p) => fake_quant_per_tensor(x, p, ste),
        TensorQParams::PerChannel(p) => fake_quant_per_channel(x, p, ste),
    }
}
