//! The activation observer of a layer: one of the three kinds, chosen by its quant config.

use qat_autograd::{DeviceQParams, TensorQParams};
use qat_core::QuantParams;
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::recorder::RangeRecorder;

use super::{
    EmaMinMaxObserver, HistogramObserver, MinMaxConfig, MinMaxObserver, Observer, ObserverError,
    ObserverErrorKind, ObserverState, QuantScheme, TF_EMA_DECAY,
};

/// Which observer an activation uses; chosen per layer in its quant config.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ActObserverConfig {
    /// [`EmaMinMaxObserver`] with this decay (QAT; default [`TF_EMA_DECAY`]).
    Ema {
        /// EMA decay `d`.
        decay: f32,
    },
    /// [`MinMaxObserver`], running min/max (PTQ).
    MinMax,
    /// [`HistogramObserver`] (PTQ).
    Histogram {
        /// Number of bins.
        bins: usize,
        /// Clip percentile in (50, 100].
        percentile: f64,
    },
}

impl Default for ActObserverConfig {
    fn default() -> Self {
        Self::Ema {
            decay: TF_EMA_DECAY,
        }
    }
}

/// An activation observer of any kind (see [`ActObserverConfig`]).
#[derive(Debug)]
pub enum ActObserver {
    /// EMA of batch min/max.
    Ema(EmaMinMaxObserver),
    /// Running min/max.
    MinMax(MinMaxObserver),
    /// Histogram with percentile clipping.
    Histogram(HistogramObserver),
}

impl ActObserver {
    /// Builds the observer `cfg` names with `bits`-bit asymmetric output under `path`.
    pub fn new(
        path: &nn::Path<'_>,
        cfg: ActObserverConfig,
        bits: u32,
    ) -> Result<Self, ObserverError> {
        Ok(match cfg {
            ActObserverConfig::Ema { decay } => {
                Self::Ema(EmaMinMaxObserver::new(path, bits, decay)?)
            }
            ActObserverConfig::MinMax => Self::MinMax(MinMaxObserver::new(
                path,
                MinMaxConfig::new(QuantScheme::AsymmetricUnsigned, bits).accumulate(true),
            )?),
            ActObserverConfig::Histogram { bins, percentile } => {
                Self::Histogram(HistogramObserver::new(path, bits, bins, percentile)?)
            }
        })
    }

    fn inner(&self) -> &dyn Observer {
        match self {
            Self::Ema(o) => o,
            Self::MinMax(o) => o,
            Self::Histogram(o) => o,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Observer {
        match self {
            Self::Ema(o) => o,
            Self::MinMax(o) => o,
            Self::Histogram(o) => o,
        }
    }

    /// The range the parameters come from: EMA/min-max range, or the histogram's clipped range.
    pub fn range(&self) -> Result<(f32, f32), ObserverError> {
        match self {
            Self::Ema(o) => o.range(),
            Self::MinMax(o) => o.range().map(|(lo, hi)| (lo[0], hi[0])),
            Self::Histogram(o) => o.range(),
        }
    }

    /// Observes `clamp(x, lo, hi)` (the output of a fused ReLU/ReLU6) for `clamp = Some((lo, hi))`.
    /// EMA and min/max observers clamp the batch range of `x` (`min clamp(x) = clamp(min x)`), so
    /// the clamped tensor is never built; the histogram observer, which needs every value, observes
    /// `x.clamp(lo, hi)`. Same state afterwards as `observe(&x.clamp(lo, hi))`.
    ///
    /// ```
    /// use qat_train::observer::{ActObserver, ActObserverConfig, Observer};
    /// use tch::{Tensor, nn::VarStore};
    /// let vs = VarStore::new(tch::Device::Cpu);
    /// let mut o = ActObserver::new(&(vs.root() / "a"), ActObserverConfig::MinMax, 8)?;
    /// o.observe_clamped(&Tensor::from_slice(&[-3.0f32, 2.0, 9.0]), Some((0.0, 6.0)))?; // ReLU6
    /// assert_eq!(o.range()?, (0.0, 6.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn observe_clamped(
        &mut self,
        x: &Tensor,
        clamp: Option<(f32, f32)>,
    ) -> Result<(), ObserverError> {
        match (self, clamp) {
            (Self::Ema(o), _) => o.observe_clamped(x, clamp),
            (Self::MinMax(o), _) => o.observe_clamped(x, clamp),
            (Self::Histogram(o), None) => o.observe(x),
            (Self::Histogram(o), Some((lo, hi))) => {
                let c = tch::no_grad(|| x.f_clamp(f64::from(lo), f64::from(hi)))
                    .map_err(ObserverError::torch(o.name()))?;
                o.observe(&c)
            }
        }
    }

    /// [`ActObserver::observe_clamped`] in a training step: EMA and min/max observers update on the
    /// device without reading anything back (a non-finite batch range leaves them unchanged); the
    /// histogram observer (PTQ calibration) needs every value on the host.
    pub(crate) fn observe_device(
        &mut self,
        x: &Tensor,
        clamp: Option<(f32, f32)>,
    ) -> Result<(), ObserverError> {
        match self {
            Self::Ema(o) => o.observe_device(x, clamp),
            Self::MinMax(o) => o.observe_device(x, clamp),
            Self::Histogram(_) => self.observe_clamped(x, clamp),
        }
    }

    /// The per-tensor parameters on `device`: computed there from the device-resident range (EMA,
    /// min/max; no read once calibrated), or the histogram's parameters uploaded.
    pub(crate) fn device_qparams(
        &self,
        device: tch::Device,
    ) -> Result<DeviceQParams, ObserverError> {
        match self {
            Self::Ema(o) => o.device_qparams(),
            Self::MinMax(o) => o.device_qparams(),
            Self::Histogram(o) => {
                let p = o.qparams()?;
                DeviceQParams::from_host(&p, device).map_err(|e| {
                    ObserverError::new(o.name(), ObserverErrorKind::Config(e.to_string()))
                })
            }
        }
    }

    /// The per-tensor parameters (activation observers are always per tensor).
    pub fn per_tensor_qparams(&self) -> Result<QuantParams, ObserverError> {
        match self.qparams()? {
            TensorQParams::PerTensor(p) => Ok(p),
            TensorQParams::PerChannel(_) => Err(ObserverError::new(
                self.name(),
                ObserverErrorKind::Config("activation observer must be per tensor".to_string()),
            )),
        }
    }
}

impl Observer for ActObserver {
    fn name(&self) -> &str {
        self.inner().name()
    }
    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError> {
        self.inner_mut().observe(x)
    }
    fn qparams(&self) -> Result<TensorQParams, ObserverError> {
        self.inner().qparams()
    }
    fn is_calibrated(&self) -> bool {
        self.inner().is_calibrated()
    }
    fn freeze(&mut self) {
        self.inner_mut().freeze()
    }
    fn unfreeze(&mut self) {
        self.inner_mut().unfreeze()
    }
    fn is_frozen(&self) -> bool {
        self.inner().is_frozen()
    }
    fn state(&self) -> Result<ObserverState, ObserverError> {
        self.inner().state()
    }
    fn load_state(&mut self, state: &ObserverState) -> Result<(), ObserverError> {
        self.inner_mut().load_state(state)
    }
}
