//! Min/max observer: weights (the paper's rule) and running min/max for PTQ calibration.

use qat_autograd::{DeviceQParams, TensorQParams};
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::buffers::{RangeBuffers, RangeFold, range_buffer_methods};
use super::range::{batch_min_max, batch_range_device, check_bits};
use super::recorder::{RangeRecorder, host_batch_range};
use super::{Granularity, Observer, ObserverError, QuantScheme};

/// Configuration of a [`MinMaxObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MinMaxConfig {
    /// Grid scheme the range maps to.
    pub scheme: QuantScheme,
    /// Bit width.
    pub bits: u32,
    /// One range per tensor or per channel.
    pub granularity: Granularity,
    /// Extent of the channel axis for [`Granularity::PerChannel`] (ignored, 1, for per tensor).
    pub channels: i64,
    /// `false`: the range of the last tensor seen; `true`: the running min/max of all of them.
    pub accumulate: bool,
}

impl MinMaxConfig {
    /// Per tensor, `bits`-bit `scheme`, range of the last tensor seen.
    pub fn new(scheme: QuantScheme, bits: u32) -> Self {
        Self {
            scheme,
            bits,
            granularity: Granularity::PerTensor,
            channels: 1,
            accumulate: false,
        }
    }

    /// One range per slice along `axis`, which has extent `channels`.
    pub fn per_channel(self, axis: usize, channels: i64) -> Self {
        Self {
            granularity: Granularity::PerChannel { axis },
            channels,
            ..self
        }
    }

    /// Running min/max of every tensor seen (`true`) or range of the last one (`false`).
    pub fn accumulate(self, accumulate: bool) -> Self {
        Self { accumulate, ..self }
    }
}

/// Min/max observer: the range is the min/max of the last tensor seen (`accumulate = false`, the
/// paper's weight rule "a = min w, b = max w", recomputed every step), or the running min/max of all
/// tensors seen (`accumulate = true`, PTQ calibration as PyTorch's `MinMaxObserver`).
///
/// ```
/// use qat_train::observer::{MinMaxConfig, MinMaxObserver, Observer, QuantScheme};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let cfg = MinMaxConfig::new(QuantScheme::SymmetricNarrow, 8).per_channel(0, 2);
/// let mut obs = MinMaxObserver::new(&(vs.root() / "w_obs"), cfg)?;
/// assert!(obs.qparams().is_err()); // uncalibrated
/// obs.observe(&Tensor::from_slice(&[1.27f32, -0.5, 0.1, -0.254]).view([2, 2]))?;
/// let p = obs.qparams()?;
/// assert_eq!(p.per_channel().unwrap().scales(), &[0.01, 0.002]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MinMaxObserver {
    buf: RangeBuffers,
    cfg: MinMaxConfig,
}

impl MinMaxObserver {
    /// A min/max observer with its buffers under `path`.
    pub fn new(path: &nn::Path<'_>, cfg: MinMaxConfig) -> Result<Self, ObserverError> {
        let n = match cfg.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel { .. } => cfg.channels,
        };
        let buf = RangeBuffers::new(path, n.max(1))?;
        check_bits(&buf.name, cfg.bits)?;
        Ok(Self { buf, cfg })
    }

    /// The observed `(min, max)` per channel (one entry for per tensor).
    pub fn range(&self) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
        self.buf.read()
    }

    /// Forgets everything observed (count 0; uncalibrated again).
    pub fn reset(&mut self) {
        self.buf.set_count(0);
    }

    /// The configuration.
    pub fn config(&self) -> &MinMaxConfig {
        &self.cfg
    }

    /// The parameters this observer would give for `x` alone, without recording it (export uses
    /// it for the final folded weights).
    pub fn qparams_of(&self, x: &Tensor) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = batch_min_max(x, self.axis(), self.buf.channels(), &self.buf.name)?;
        self.host_params(&lo, &hi)
    }

    /// Observes `x` on the device (unless frozen) and returns the parameters of `x`'s own range,
    /// computed on the device: the weight quantizer's step (the range of the current weights), no
    /// read back.
    pub(crate) fn observe_params_device(
        &mut self,
        x: &Tensor,
    ) -> Result<DeviceQParams, ObserverError> {
        // On the CPU, a finite range: its parameters and the record on the host (parameters
        // first: where qat-core refuses the range, the device form does both, once).
        if let Some((lo, hi, true)) = host_batch_range(x, self.axis(), self.buf.channels(), None)
            && let Some(p) = self.cpu_params(&lo, &hi)
            && (self.buf.frozen() || self.record_host(&lo, &hi))
        {
            return Ok(p);
        }
        let (lo, hi) =
            batch_range_device(x, self.axis(), self.buf.channels(), &self.buf.name, None)?;
        if !self.buf.frozen() {
            self.record(&lo, &hi)?;
        }
        self.device_params(&lo, &hi)
    }
}

impl Observer for MinMaxObserver {
    range_buffer_methods!(recorder);
}

impl RangeRecorder for MinMaxObserver {
    fn buffers(&self) -> &RangeBuffers {
        &self.buf
    }

    fn buffers_mut(&mut self) -> &mut RangeBuffers {
        &mut self.buf
    }

    /// Replaces the range, or (`accumulate`) widens it.
    fn fold(&self) -> RangeFold {
        if self.cfg.accumulate {
            RangeFold::Widen
        } else {
            RangeFold::Replace
        }
    }

    fn axis(&self) -> Option<usize> {
        match self.cfg.granularity {
            Granularity::PerTensor => None,
            Granularity::PerChannel { axis } => Some(axis),
        }
    }

    fn grid(&self) -> (QuantScheme, u32) {
        (self.cfg.scheme, self.cfg.bits)
    }
}
