//! From a tensor to its batch range, and from a range to quantization parameters (always through
//! qat-core's constructors).

use qat_autograd::{DeviceQParams, TensorQParams};
use qat_core::{MIN_SCALE, PerChannelParams, QuantParams, QuantRange};
use tch::{Kind, Tensor};

use super::buffers::read_f32;
use super::{ObserverError, ObserverErrorKind, QuantScheme};

/// Batch `(min, max)` of a tensor, per tensor (`axis = None`) or per slice along `axis`,
/// checked finite.
pub(crate) fn batch_min_max(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    name: &str,
) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
    batch_min_max_clamped(x, axis, channels, name, None)
}

/// [`batch_min_max`] of `clamp(x, lo, hi)` for `clamp = Some((lo, hi))`, computed as the clamped
/// min/max of `x` (clamping is monotone: `min clamp(x) = clamp(min x)`, also for ±∞; NaN stays NaN
/// and is reported as non-finite). *Host read* of the batch range.
pub(crate) fn batch_min_max_clamped(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    name: &str,
    clamp: Option<(f32, f32)>,
) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
    let (lo, hi) = batch_range_device(x, axis, channels, name, clamp)?;
    check_finite(&lo, &hi, name)?;
    Ok((read_f32(&lo, name)?, read_f32(&hi, name)?))
}

/// Reads a batch range to the host and rejects it if not finite
/// ([`ObserverErrorKind::NonFinite`]). *Host read* (calibration and the public `observe`; the
/// training step skips a non-finite range on the device instead).
pub(crate) fn check_finite(lo: &Tensor, hi: &Tensor, name: &str) -> Result<(), ObserverError> {
    let lo = read_f32(lo, name)?;
    let hi = read_f32(hi, name)?;
    match lo
        .iter()
        .zip(&hi)
        .find(|(a, b)| !a.is_finite() || !b.is_finite())
    {
        Some((a, b)) => Err(ObserverError::new(
            name,
            ObserverErrorKind::NonFinite { min: *a, max: *b },
        )),
        None => Ok(()),
    }
}

/// The batch range of [`batch_min_max_clamped`] as `f32[channels]` tensors on `x`'s device, not
/// read back (nor checked finite: [`super::buffers::RangeBuffers::update`] skips a non-finite one).
/// The clamp is libtorch's, which keeps NaN, as `f32::clamp`.
pub(crate) fn batch_range_device(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    name: &str,
    clamp: Option<(f32, f32)>,
) -> Result<(Tensor, Tensor), ObserverError> {
    let torch = ObserverError::torch(name);
    let shape = x.size();
    if let Some(a) = axis
        && (a >= shape.len() || shape[a] as usize != channels)
    {
        return Err(ObserverError::new(
            name,
            ObserverErrorKind::Shape {
                expected: format!("{channels} channels along axis {a}"),
                shape,
            },
        ));
    }
    tch::no_grad(|| -> Result<(Tensor, Tensor), tch::TchError> {
        let xd = x.f_detach()?;
        let (lo, hi) = match axis {
            None => {
                let (lo, hi) = xd.f_aminmax(None, false)?;
                (lo.f_view([1])?, hi.f_view([1])?)
            }
            Some(a) => xd
                .f_movedim(a as i64, 0)?
                .f_flatten(1, -1)?
                .f_aminmax(1, false)?,
        };
        let (lo, hi) = (lo.f_to_kind(Kind::Float)?, hi.f_to_kind(Kind::Float)?);
        match clamp {
            Some((a, b)) => Ok((
                lo.f_clamp(f64::from(a), f64::from(b))?,
                hi.f_clamp(f64::from(a), f64::from(b))?,
            )),
            None => Ok((lo, hi)),
        }
    })
    .map_err(torch)
}

/// `round_half_away(v)` ([`qat_core::scheme::round_half_away`], `f32::round`) on tensors, exactly:
/// `t = trunc(v)`, `v − t` is exact, and `t ± 1` where `|v − t| ≥ 0.5`.
fn round_half_away(v: &Tensor) -> Result<Tensor, tch::TchError> {
    let t = v.f_trunc()?;
    let frac = (v - &t).f_abs()?;
    let step = v.f_sign()?.f_mul(&frac.f_ge(0.5)?)?;
    t.f_add(&step)
}

/// qat-core's parameters for the range `[min, max]` computed on the device from `f32[C]` tensors
/// `lo`, `hi` (finite, `lo ≤ hi` as the observers keep them), bit for bit [`to_qparams`]'s
/// ([`QuantParams::asymmetric`]/[`QuantParams::symmetric`] and their per-channel forms, the same f32
/// operations in the same order; divisions by tensors, as libtorch's CUDA division by a host scalar
/// multiplies by its reciprocal), without reading anything back:
/// * symmetric narrow: `m = max(|lo|, |hi|)`, `S = max(m/((qmax − qmin)/2), MIN_SCALE)`, `Z = 0`;
/// * asymmetric: `lo ← min(lo, 0)`, `hi ← max(hi, 0)`, `S = max((hi − lo)/(qmax − qmin), MIN_SCALE)`,
///   `Z = clamp(round_half_away(qmin − lo/S), qmin, qmax)`.
pub(crate) fn device_qparams(
    name: &str,
    scheme: QuantScheme,
    bits: u32,
    axis: Option<usize>,
    lo: &Tensor,
    hi: &Tensor,
) -> Result<DeviceQParams, ObserverError> {
    let quant = ObserverError::quant(name);
    let range = match scheme {
        QuantScheme::SymmetricNarrow => QuantRange::signed_narrow(bits),
        QuantScheme::AsymmetricUnsigned => QuantRange::unsigned(bits),
    }
    .map_err(&quant)?;
    let steps = f64::from(range.steps() as f32);
    let (qmin, qmax) = (f64::from(range.qmin), f64::from(range.qmax));
    let (scale, zp) = tch::no_grad(|| -> Result<(Tensor, Tensor), tch::TchError> {
        match scheme {
            QuantScheme::SymmetricNarrow => {
                let m = lo.f_abs()?.f_maximum(&hi.f_abs()?)?;
                let half = f64::from(range.steps() as f32 / 2.0);
                let s = m
                    .f_div(&m.f_full_like(half)?)?
                    .f_clamp_min(f64::from(MIN_SCALE))?;
                let z = s.f_zeros_like()?;
                Ok((s, z))
            }
            QuantScheme::AsymmetricUnsigned => {
                let l = lo.f_clamp_max(0.0)?;
                let h = hi.f_clamp_min(0.0)?;
                let s = (&h - &l)
                    .f_div(&h.f_full_like(steps)?)?
                    .f_clamp_min(f64::from(MIN_SCALE))?;
                let zf = l.f_div(&s)?.f_neg()?.f_add_scalar(qmin)?;
                let z = round_half_away(&zf)?.f_clamp(qmin, qmax)?;
                Ok((s, z))
            }
        }
    })
    .map_err(ObserverError::torch(name))?;
    DeviceQParams::new(scale, zp, range, axis).map_err(|e| {
        ObserverError::new(
            name,
            ObserverErrorKind::Config(format!("device quantization parameters: {e}")),
        )
    })
}

/// qat-core's parameters for the range `[min, max]` (per tensor: one entry; per channel along
/// `axis`: one per channel) on `scheme`'s `bits`-bit grid.
pub(crate) fn to_qparams(
    name: &str,
    scheme: QuantScheme,
    bits: u32,
    axis: Option<usize>,
    min: &[f32],
    max: &[f32],
) -> Result<TensorQParams, ObserverError> {
    let quant = ObserverError::quant(name);
    match (scheme, axis) {
        (QuantScheme::SymmetricNarrow, None) => {
            let m = min[0].abs().max(max[0].abs());
            let r = QuantRange::signed_narrow(bits).map_err(&quant)?;
            Ok(TensorQParams::PerTensor(
                QuantParams::symmetric(m, r).map_err(&quant)?,
            ))
        }
        (QuantScheme::AsymmetricUnsigned, None) => Ok(TensorQParams::PerTensor(
            QuantParams::asymmetric(min[0], max[0], bits).map_err(&quant)?,
        )),
        (QuantScheme::SymmetricNarrow, Some(a)) => {
            let m: Vec<f32> = min
                .iter()
                .zip(max)
                .map(|(lo, hi)| lo.abs().max(hi.abs()))
                .collect();
            let r = QuantRange::signed_narrow(bits).map_err(&quant)?;
            Ok(TensorQParams::PerChannel(
                PerChannelParams::symmetric(&m, r, a).map_err(&quant)?,
            ))
        }
        (QuantScheme::AsymmetricUnsigned, Some(a)) => {
            let r = QuantRange::unsigned(bits).map_err(&quant)?;
            Ok(TensorQParams::PerChannel(
                PerChannelParams::from_min_max(min, max, r, a).map_err(&quant)?,
            ))
        }
    }
}

/// Refuses bit widths qat-core has no grid for.
pub(crate) fn check_bits(name: &str, bits: u32) -> Result<(), ObserverError> {
    QuantRange::unsigned(bits)
        .map(|_| ())
        .map_err(ObserverError::quant(name))
}
