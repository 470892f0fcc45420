//! From a tensor to its batch range, and from a range to quantization parameters (always through
//! qat-core's constructors).

use qat_autograd::TensorQParams;
use qat_core::{PerChannelParams, QuantParams, QuantRange};
use tch::Tensor;

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
    let torch = ObserverError::torch(name);
    let shape = x.size();
    let (lo, hi) = match axis {
        None => tch::no_grad(|| x.f_detach()?.f_aminmax(None, false)).map_err(torch)?,
        Some(a) => {
            if a >= shape.len() || shape[a] as usize != channels {
                return Err(ObserverError::new(
                    name,
                    ObserverErrorKind::Shape {
                        expected: format!("{channels} channels along axis {a}"),
                        shape,
                    },
                ));
            }
            tch::no_grad(|| {
                x.f_detach()?
                    .f_movedim(a as i64, 0)?
                    .f_flatten(1, -1)?
                    .f_aminmax(1, false)
            })
            .map_err(torch)?
        }
    };
    let mut lo = read_f32(&lo, name)?;
    let mut hi = read_f32(&hi, name)?;
    if let Some((a, b)) = clamp {
        // `f32::clamp` keeps NaN (then reported below), as libtorch's clamp does.
        lo.iter_mut().chain(hi.iter_mut()).for_each(|v| {
            if !v.is_nan() {
                *v = v.clamp(a, b)
            }
        });
    }
    if let Some((a, b)) = lo
        .iter()
        .zip(&hi)
        .find(|(a, b)| !a.is_finite() || !b.is_finite())
    {
        return Err(ObserverError::new(
            name,
            ObserverErrorKind::NonFinite { min: *a, max: *b },
        ));
    }
    Ok((lo, hi))
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
