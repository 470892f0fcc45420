//! What the min/max and EMA observers do alike: observe a batch range on the device (checked
//! finite on the host, or not read at all in a training step) and turn their range into parameters
//! on the grid of their scheme. Each supplies its buffers, its channel axis, its grid and its own
//! update rule ([`RangeRecorder::record`]).

use qat_autograd::{DeviceQParams, TensorQParams};
use tch::Tensor;

use super::buffers::{RangeBuffers, RangeFold};
use super::range::{batch_range_device, check_finite, device_qparams, to_qparams};
use super::{ObserverError, ObserverErrorKind, QuantScheme};

/// An optional clamp `(lo, hi)` applied to the observed tensor (a fused activation).
pub(crate) type Clamp = Option<(f32, f32)>;

/// A range observer that records batch ranges into its [`RangeBuffers`].
pub(crate) trait RangeRecorder {
    /// The observer's buffers.
    fn buffers(&self) -> &RangeBuffers;

    /// The observer's buffers, to update.
    fn buffers_mut(&mut self) -> &mut RangeBuffers;

    /// How a batch range folds into the stored one (replace, widen, EMA).
    fn fold(&self) -> RangeFold;

    /// The channel axis of a per-channel range, `None` for one range per tensor.
    fn axis(&self) -> Option<usize>;

    /// The grid the range maps to: scheme and bit width.
    fn grid(&self) -> (QuantScheme, u32);

    /// Folds a batch range (`f32[channels]` tensors on the device) into the stored range, on the
    /// device.
    fn record(&mut self, lo: &Tensor, hi: &Tensor) -> Result<(), ObserverError> {
        let fold = self.fold();
        self.buffers_mut().update(lo, hi, fold)
    }

    /// [`RangeRecorder::record`] of a finite host range into buffers in CPU memory (`false`,
    /// nothing written, for buffers elsewhere).
    fn record_host(&mut self, lo: &[f32], hi: &[f32]) -> bool {
        let fold = self.fold();
        self.buffers_mut().update_host(lo, hi, fold)
    }

    /// Observes `clamp(x, lo, hi)` for `clamp = Some((lo, hi))` without materializing it (the
    /// batch range of `x` clamped; see [`super::ActObserver::observe_clamped`]), else `x`. Reads the
    /// batch range to reject a non-finite one with an error.
    fn observe_clamped(&mut self, x: &Tensor, clamp: Clamp) -> Result<(), ObserverError> {
        self.observe_batch(x, clamp, true)
    }

    /// [`RangeRecorder::observe_clamped`] without reading anything back (the training step): a
    /// non-finite batch range leaves the state unchanged.
    fn observe_device(&mut self, x: &Tensor, clamp: Clamp) -> Result<(), ObserverError> {
        self.observe_batch(x, clamp, false)
    }

    /// Records the batch range of `clamp(x)` unless frozen, first checked finite on the host if
    /// `checked`.
    fn observe_batch(
        &mut self,
        x: &Tensor,
        clamp: Clamp,
        checked: bool,
    ) -> Result<(), ObserverError> {
        let buf = self.buffers();
        if buf.frozen() {
            return Ok(());
        }
        if !checked
            && let Some((lo, hi, finite)) = host_batch_range(x, self.axis(), buf.channels(), clamp)
        {
            // The host form on the CPU: the same range and rule, no libtorch op.
            if !finite || self.record_host(&lo, &hi) {
                return Ok(());
            }
        }
        let buf = self.buffers();
        let (lo, hi) = batch_range_device(x, self.axis(), buf.channels(), &buf.name, clamp)?;
        if checked {
            check_finite(&lo, &hi, &buf.name)?;
        }
        self.record(&lo, &hi)
    }

    /// The parameters of the stored range, computed on the device (no read once calibrated);
    /// [`ObserverErrorKind::Uncalibrated`] before any data.
    fn device_qparams(&self) -> Result<DeviceQParams, ObserverError> {
        let buf = self.buffers();
        if !buf.is_calibrated() {
            return Err(buf.err(ObserverErrorKind::Uncalibrated));
        }
        if let Some(Some(d)) = buf.with_range_host(|lo, hi| self.cpu_params(lo, hi)) {
            return Ok(d);
        }
        let (lo, hi) = buf.range_tensors();
        self.device_params(lo, hi)
    }

    /// The parameters of the range `[lo, hi]` (device tensors), computed on the device.
    fn device_params(&self, lo: &Tensor, hi: &Tensor) -> Result<DeviceQParams, ObserverError> {
        let (scheme, bits) = self.grid();
        device_qparams(&self.buffers().name, scheme, bits, self.axis(), lo, hi)
    }

    /// On the CPU: qat-core's parameters of the host range `[lo, hi]` (what the device form computes
    /// bit for bit) in "device" tensors that are CPU tensors; `None` where qat-core refuses the range
    /// (the caller takes the device form, which does not refuse).
    fn cpu_params(&self, lo: &[f32], hi: &[f32]) -> Option<DeviceQParams> {
        let p = self.host_params(lo, hi).ok()?;
        DeviceQParams::from_host(&p, tch::Device::Cpu).ok()
    }

    /// The parameters of the range `[lo, hi]` (host values), through qat-core's constructors.
    fn host_params(&self, lo: &[f32], hi: &[f32]) -> Result<TensorQParams, ObserverError> {
        let (scheme, bits) = self.grid();
        to_qparams(&self.buffers().name, scheme, bits, self.axis(), lo, hi)
    }

    /// The parameters of the stored range (a host read): [`super::Observer::qparams`].
    fn stored_qparams(&self) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = self.buffers().read()?;
        self.host_params(&lo, &hi)
    }
}

/// The batch range of `clamp(x)` on the host, read in place from CPU memory: per tensor
/// (`axis = None`), or per channel along axis 0 (rows of a contiguous tensor), as
/// `(lo, hi, finite)`; `None` where that does not apply (another device or axis, an empty tensor,
/// the host fast paths off): the caller takes the device form, which gives the same values.
/// `finite` is false if a value is NaN or a bound is infinite after the clamp (libtorch's clamp
/// keeps NaN and bounds ±∞, as here).
pub(crate) fn host_batch_range(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    clamp: Clamp,
) -> Option<(Vec<f32>, Vec<f32>, bool)> {
    let shape = x.size();
    let rows = match axis {
        None => 1,
        Some(0) if shape.first().is_some_and(|&c| c as usize == channels) => channels,
        Some(_) => return None,
    };
    qat_autograd::cpu::with_slice(x, |xs: &[f32]| {
        if xs.is_empty() || rows == 0 || !xs.len().is_multiple_of(rows) {
            return None;
        }
        let (mut lo, mut hi, mut finite) =
            (Vec::with_capacity(rows), Vec::with_capacity(rows), true);
        for row in xs.chunks_exact(xs.len() / rows) {
            let (mut l, mut h, nan) = qat_autograd::min_max(row);
            if let Some((a, b)) = clamp {
                (l, h) = (l.max(a).min(b), h.max(a).min(b));
            }
            finite &= !nan && l.is_finite() && h.is_finite();
            lo.push(l);
            hi.push(h);
        }
        Some((lo, hi, finite))
    })
    .flatten()
}
