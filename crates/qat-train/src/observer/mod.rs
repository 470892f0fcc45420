//! Range observers (paper §3): they watch tensors during training or calibration and turn the
//! observed range into quantization parameters — on the host through qat-core's constructors
//! ([`qat_core::QuantParams::asymmetric`], [`qat_core::QuantParams::symmetric`],
//! [`qat_core::PerChannelParams`]); in a training step on the device, with the same f32 operations in
//! the same order (`range.rs`, tested bit for bit against those constructors), so that the step reads
//! nothing back to the host.
//!
//! | observer | use | range |
//! |---|---|---|
//! | [`MinMaxObserver`] | weights (paper: "a = min w, b = max w"), per tensor or per channel | min/max of the last tensor, or running min/max (`accumulate`) |
//! | [`EmaMinMaxObserver`] | activations during QAT (paper §3: "exponential moving averages") | EMA of batch min/max |
//! | [`HistogramObserver`] | PTQ calibration | percentiles of a histogram of all values seen |
//! | [`ActObserver`] | a layer's activation observer: one of the three, by [`ActObserverConfig`] | |
//!
//! Every observer
//! * refuses to give parameters before it has seen data ([`ObserverErrorKind::Uncalibrated`]),
//! * can be frozen (it then ignores new data and keeps its range) and unfrozen,
//! * keeps its state in one struct of non-trainable VarStore buffers (`min`, `max`, `count`,
//!   `frozen`, and `hist` for the histogram), updated on the device in a training step (EMA and
//!   min/max; the histogram is for PTQ calibration and reads its values), so
//!   `VarStore::save`/`load` — and hence checkpoints — round-trip it; it also exports/imports a
//!   serde [`ObserverState`].
//!
//! | file | what |
//! |---|---|
//! | `error.rs` | [`ObserverError`]: the observer's name and an [`ObserverErrorKind`] |
//! | `buffers.rs` | the VarStore state every observer keeps, and every read of it to the host |
//! | `range.rs` | batch min/max of a tensor; range → qat-core parameters |
//! | `recorder.rs` | what min/max and EMA share: batch ranges observed on the device, range → parameters |
//! | `minmax.rs`, `ema.rs`, `histogram.rs` | the three observers |
//! | `activation.rs` | [`ActObserver`], [`ActObserverConfig`] |

mod activation;
mod buffers;
mod ema;
mod error;
mod histogram;
mod minmax;
mod range;
mod recorder;

pub use activation::{ActObserver, ActObserverConfig};
pub use ema::EmaMinMaxObserver;
pub use error::{ObserverError, ObserverErrorKind};
pub use histogram::HistogramObserver;
pub use minmax::{MinMaxConfig, MinMaxObserver};
pub(crate) use recorder::RangeRecorder;

use qat_autograd::TensorQParams;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// TensorFlow's default activation EMA decay, 0.999 (`tf.contrib.quantize`
/// `_MovingAvgQuantize(ema_decay=0.999)` in `quantize.py`, also the paper's "smoothing close to 1").
pub const TF_EMA_DECAY: f32 = 0.999;

/// PyTorch's `MovingAverageMinMaxObserver(averaging_constant=0.01)`, i.e. decay `1 − 0.01 = 0.99`
/// (`torch/ao/quantization/observer.py`).
pub const PYTORCH_AVERAGING_CONSTANT: f32 = 0.01;

/// Signedness/symmetry of the integer grid an observer's range maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantScheme {
    /// Paper's weights with its narrow-range tweak: `Z = 0`, grid `[−(2^(b−1) − 1), 2^(b−1) − 1]`,
    /// `S = max(|min|, |max|)/(2^(b−1) − 1)` ([`qat_core::QuantParams::symmetric`]).
    SymmetricNarrow,
    /// Asymmetric `[0, 2^b − 1]`, range extended to include 0 and nudged
    /// ([`qat_core::QuantParams::asymmetric`]): activations, and the paper's original uint8 weights.
    AsymmetricUnsigned,
}

/// One range for the whole tensor or one per slice along an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One `(S, Z)` per tensor.
    PerTensor,
    /// One `(S, Z)` per slice along `axis` (0 for conv/linear/depthwise weights).
    PerChannel {
        /// The channel axis.
        axis: usize,
    },
}

/// The serializable state of an observer (the same numbers the VarStore buffers hold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverState {
    /// Observed minimum per channel (one value per tensor for per-tensor observers).
    pub min: Vec<f32>,
    /// Observed maximum per channel.
    pub max: Vec<f32>,
    /// Number of batches observed.
    pub count: u64,
    /// Whether the observer is frozen.
    pub frozen: bool,
    /// Histogram bin counts (histogram observer only; empty otherwise).
    pub histogram: Vec<f64>,
}

/// Common interface of the observers.
pub trait Observer {
    /// Observer name (its VarStore path), used in errors.
    fn name(&self) -> &str;
    /// Updates the range with a batch; a no-op while frozen.
    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError>;
    /// Quantization parameters for the current range; [`ObserverErrorKind::Uncalibrated`] before any
    /// data was observed.
    fn qparams(&self) -> Result<TensorQParams, ObserverError>;
    /// Whether data has been observed.
    fn is_calibrated(&self) -> bool;
    /// Stops updating (the range is kept).
    fn freeze(&mut self);
    /// Resumes updating.
    fn unfreeze(&mut self);
    /// Whether frozen.
    fn is_frozen(&self) -> bool;
    /// The serializable state.
    fn state(&self) -> Result<ObserverState, ObserverError>;
    /// Restores a state produced by [`Observer::state`] of an observer of the same shape.
    fn load_state(&mut self, state: &ObserverState) -> Result<(), ObserverError>;
}

#[cfg(test)]
mod tests;
