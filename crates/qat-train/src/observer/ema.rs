//! Exponential-moving-average min/max observer: activation ranges during QAT (paper §3).

use tch::{Tensor, nn};

use super::buffers::{RangeBuffers, RangeFold, range_buffer_methods};
use super::range::check_bits;
use super::recorder::RangeRecorder;
use super::{
    Observer, ObserverError, ObserverErrorKind, PYTORCH_AVERAGING_CONSTANT, QuantScheme,
    TF_EMA_DECAY,
};

/// Exponential-moving-average min/max observer for activations (paper §3; TF
/// `_MovingAvgQuantize`), per tensor, on the asymmetric grid `[0, 2^b − 1]`.
///
/// The first batch sets the range (`m₁ = b₁`, as PyTorch; TF instead starts from variables
/// initialised to ±6 — an arbitrary range we do not want to leak into the first steps). Then, with
/// decay `d`: `mₜ = d·mₜ₋₁ + (1 − d)·bₜ`, i.e. in closed form
/// `mₙ = dⁿ⁻¹·b₁ + (1 − d)·Σₜ₌₂ⁿ dⁿ⁻ᵗ·bₜ`, separately for min and max. The update runs in f64 and
/// is stored in f32.
///
/// Default decay [`TF_EMA_DECAY`] = 0.999 (TensorFlow); PyTorch's averaging constant 0.01 is
/// [`EmaMinMaxObserver::pytorch`] (decay 0.99).
///
/// ```
/// use qat_train::observer::{EmaMinMaxObserver, Observer};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut obs = EmaMinMaxObserver::new(&(vs.root() / "act"), 8, 0.9)?;
/// obs.observe(&Tensor::from_slice(&[0.0f32, 1.0]))?;
/// obs.observe(&Tensor::from_slice(&[0.0f32, 2.0]))?;
/// let (lo, hi) = obs.range()?;
/// assert_eq!(lo, 0.0);
/// assert!((hi - 1.1).abs() < 1e-6); // 0.9·1 + 0.1·2
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct EmaMinMaxObserver {
    buf: RangeBuffers,
    bits: u32,
    decay: f32,
}

impl EmaMinMaxObserver {
    /// An EMA observer with `bits`-bit asymmetric output and decay `decay ∈ [0, 1)`.
    pub fn new(path: &nn::Path<'_>, bits: u32, decay: f32) -> Result<Self, ObserverError> {
        let buf = RangeBuffers::new(path, 1)?;
        check_bits(&buf.name, bits)?;
        if !(0.0..1.0).contains(&decay) {
            return Err(buf.err(ObserverErrorKind::Config(format!(
                "EMA decay {decay} must be in [0, 1)"
            ))));
        }
        Ok(Self { buf, bits, decay })
    }

    /// TensorFlow's default: decay [`TF_EMA_DECAY`] = 0.999.
    pub fn tensorflow(path: &nn::Path<'_>, bits: u32) -> Result<Self, ObserverError> {
        Self::new(path, bits, TF_EMA_DECAY)
    }

    /// PyTorch's default: averaging constant 0.01, i.e. decay 0.99.
    pub fn pytorch(path: &nn::Path<'_>, bits: u32) -> Result<Self, ObserverError> {
        Self::new(path, bits, 1.0 - PYTORCH_AVERAGING_CONSTANT)
    }

    /// The current `(min, max)`.
    pub fn range(&self) -> Result<(f32, f32), ObserverError> {
        let (lo, hi) = self.buf.read()?;
        Ok((lo[0], hi[0]))
    }

    /// The decay `d`.
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// Bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }
}

impl Observer for EmaMinMaxObserver {
    range_buffer_methods!(recorder);
}

impl RangeRecorder for EmaMinMaxObserver {
    fn grid(&self) -> (QuantScheme, u32) {
        (QuantScheme::AsymmetricUnsigned, self.bits)
    }

    fn axis(&self) -> Option<usize> {
        None
    }

    fn buffers(&self) -> &RangeBuffers {
        &self.buf
    }

    fn buffers_mut(&mut self) -> &mut RangeBuffers {
        &mut self.buf
    }

    /// The EMA, in f64 and stored in f32 (the first batch sets the range).
    fn fold(&self) -> RangeFold {
        RangeFold::Ema(f64::from(self.decay))
    }
}
