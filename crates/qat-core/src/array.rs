//! Reference quantize / dequantize / fake quant on ndarray tensors, per tensor and per channel.
//!
//! These are the ground truth the autograd ops (qat-autograd) and the export simulation twin
//! (qat-export) are tested against. They are plain element loops; speed is not their job.

use ndarray::{Array, ArrayView, Axis, Dimension, RemoveAxis, Zip};

use crate::{PerChannelParams, QuantError, QuantParams};

/// Quantizes every element: `q = clamp(round_half_even(r·(1/S)) + Z, qmin, qmax)`.
///
/// ```
/// use ndarray::array;
/// use qat_core::{QuantParams, array::quantize};
/// let p = QuantParams::from_min_max(-1.0, 1.0, 0, 255)?;
/// assert_eq!(p.zero_point(), 127); // 1/(2/255) = 127.49999 in f32
/// let q = quantize(array![-1.0f32, 0.0, 1.0].view(), &p);
/// assert_eq!(q, array![0, 127, 254]);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn quantize<D: Dimension>(x: ArrayView<'_, f32, D>, p: &QuantParams) -> Array<i32, D> {
    x.mapv(|r| p.quantize(r))
}

/// Dequantizes every element: `r = S·(q − Z)`.
pub fn dequantize<D: Dimension>(q: ArrayView<'_, i32, D>, p: &QuantParams) -> Array<f32, D> {
    q.mapv(|v| p.dequantize(v))
}

/// Fake quantization of every element (paper §3): `S·(clamp(round(r/S) + Z) − Z)`.
///
/// ```
/// use ndarray::array;
/// use qat_core::{QuantParams, array::fake_quant};
/// let p = QuantParams::asymmetric(0.0, 2.55, 8)?; // S = 0.01
/// let y = fake_quant(array![0.004f32, 0.016, 3.0].view(), &p);
/// assert_eq!(y, array![0.0, 0.02, 2.55]);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn fake_quant<D: Dimension>(x: ArrayView<'_, f32, D>, p: &QuantParams) -> Array<f32, D> {
    x.mapv(|r| p.fake_quant(r))
}

fn check_axis<D: Dimension>(shape: &D, p: &PerChannelParams) -> Result<(), QuantError> {
    let rank = shape.ndim();
    let axis = p.axis();
    if axis >= rank {
        return Err(QuantError::AxisOutOfRange { axis, rank });
    }
    let n = shape.slice()[axis];
    if n != p.len() {
        return Err(QuantError::ChannelMismatch {
            params: p.len(),
            axis,
            tensor: n,
        });
    }
    Ok(())
}

/// `f(params of channel c, v)` for every element `v` of `x`, `c` its index along `p.axis()`.
fn per_channel_map<D, T, O>(
    x: ArrayView<'_, T, D>,
    p: &PerChannelParams,
    f: impl Fn(&QuantParams, T) -> O,
) -> Result<Array<O, D>, QuantError>
where
    D: Dimension + RemoveAxis,
    T: Copy,
    O: Clone + Default,
{
    check_axis(&x.raw_dim(), p)?;
    let axis = Axis(p.axis());
    let mut out = Array::from_elem(x.raw_dim(), O::default());
    for (c, (xs, mut os)) in x.axis_iter(axis).zip(out.axis_iter_mut(axis)).enumerate() {
        let pc = p.channel(c)?;
        Zip::from(&mut os).and(&xs).for_each(|o, &v| *o = f(&pc, v));
    }
    Ok(out)
}

/// Per-channel quantization along `p.axis()`: slice `c` uses channel `c`'s `(S, Z)`.
///
/// Errors if the axis is out of range or its extent differs from the number of channels.
///
/// ```
/// use ndarray::array;
/// use qat_core::{PerChannelParams, QuantRange, array::quantize_per_channel};
/// let w = array![[1.0f32, -1.0], [0.1, 0.05]];           // [out_ch, in]
/// let p = PerChannelParams::symmetric(&[1.0, 0.1], QuantRange::signed_narrow(8)?, 0)?;
/// assert_eq!(quantize_per_channel(w.view(), &p)?, array![[127, -127], [127, 64]]);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn quantize_per_channel<D: Dimension + RemoveAxis>(
    x: ArrayView<'_, f32, D>,
    p: &PerChannelParams,
) -> Result<Array<i32, D>, QuantError> {
    per_channel_map(x, p, QuantParams::quantize)
}

/// Per-channel dequantization along `p.axis()`.
pub fn dequantize_per_channel<D: Dimension + RemoveAxis>(
    q: ArrayView<'_, i32, D>,
    p: &PerChannelParams,
) -> Result<Array<f32, D>, QuantError> {
    per_channel_map(q, p, QuantParams::dequantize)
}

/// Per-channel fake quantization along `p.axis()`.
pub fn fake_quant_per_channel<D: Dimension + RemoveAxis>(
    x: ArrayView<'_, f32, D>,
    p: &PerChannelParams,
) -> Result<Array<f32, D>, QuantError> {
    per_channel_map(x, p, QuantParams::fake_quant)
}

/// `(min, max)` of all finite elements; `None` if there is none. The building block of min/max
/// observers and PTQ calibration.
///
/// ```
/// use ndarray::array;
/// assert_eq!(qat_core::array::min_max(array![3.0f32, -1.0, f32::NAN].view()), Some((-1.0, 3.0)));
/// ```
pub fn min_max<D: Dimension>(x: ArrayView<'_, f32, D>) -> Option<(f32, f32)> {
    x.iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Per-slice `(min, max)` along `axis` (finite elements only; an empty or all-NaN slice is an error).
pub fn min_max_per_channel<D: Dimension + RemoveAxis>(
    x: ArrayView<'_, f32, D>,
    axis: usize,
) -> Result<(Vec<f32>, Vec<f32>), QuantError> {
    if axis >= x.ndim() {
        return Err(QuantError::AxisOutOfRange {
            axis,
            rank: x.ndim(),
        });
    }
    let mut mins = Vec::with_capacity(x.len_of(Axis(axis)));
    let mut maxs = Vec::with_capacity(mins.capacity());
    for s in x.axis_iter(Axis(axis)) {
        let (lo, hi) = min_max(s).ok_or(QuantError::Empty {
            what: "channel slice (no finite values)",
        })?;
        mins.push(lo);
        maxs.push(hi);
    }
    Ok((mins, maxs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QuantRange;
    use ndarray::{Array2, Array4};
    use proptest::prelude::*;

    #[test]
    fn per_channel_errors() {
        let x = Array2::<f32>::zeros((3, 4));
        let p = PerChannelParams::symmetric(&[1.0, 1.0], QuantRange::signed_narrow(8).unwrap(), 0)
            .unwrap();
        assert!(matches!(
            quantize_per_channel(x.view(), &p),
            Err(QuantError::ChannelMismatch { .. })
        ));
        let p = PerChannelParams::symmetric(&[1.0; 3], QuantRange::signed_narrow(8).unwrap(), 2)
            .unwrap();
        assert!(matches!(
            quantize_per_channel(x.view(), &p),
            Err(QuantError::AxisOutOfRange { .. })
        ));
    }

    proptest! {
        #[test]
        fn per_channel_equals_per_tensor_channel_by_channel(
            vals in proptest::collection::vec(-5.0f32..5.0, 2 * 3 * 2 * 5),
            axis in 0usize..4,
        ) {
            let x = Array4::from_shape_vec((2, 3, 2, 5), vals).unwrap();
            let (mins, maxs) = min_max_per_channel(x.view(), axis).unwrap();
            let p = PerChannelParams::from_min_max(&mins, &maxs, QuantRange::unsigned(8).unwrap(), axis).unwrap();
            let q = quantize_per_channel(x.view(), &p).unwrap();
            let fq = fake_quant_per_channel(x.view(), &p).unwrap();
            for c in 0..p.len() {
                let pc = p.channel(c).unwrap();
                let xs = x.index_axis(Axis(axis), c);
                prop_assert_eq!(q.index_axis(Axis(axis), c), quantize(xs, &pc));
                prop_assert_eq!(fq.index_axis(Axis(axis), c), fake_quant(xs, &pc));
                let dq = dequantize_per_channel(q.view(), &p).unwrap();
                prop_assert_eq!(dq.index_axis(Axis(axis), c), dequantize(q.index_axis(Axis(axis), c), &pc));
            }
        }
    }
}
