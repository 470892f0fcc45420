//! Range observers (paper §3): they watch tensors during training or calibration and turn the
//! observed range into quantization parameters — always through qat-core's constructors
//! ([`QuantParams::asymmetric`], [`QuantParams::symmetric`], [`PerChannelParams`]), never by hand.
//!
//! | observer | use | range |
//! |---|---|---|
//! | [`MinMaxObserver`] | weights (paper: "a = min w, b = max w"), per tensor or per channel | min/max of the last tensor, or running min/max (`accumulate`) |
//! | [`EmaMinMaxObserver`] | activations during QAT (paper §3: "exponential moving averages") | EMA of batch min/max |
//! | [`HistogramObserver`] | PTQ calibration | percentiles of a histogram of all values seen |
//!
//! Every observer
//! * refuses to give parameters before it has seen data ([`ObserverError::Uncalibrated`]),
//! * can be frozen (it then ignores new data and keeps its range) and unfrozen,
//! * keeps its state in non-trainable VarStore buffers (`min`, `max`, `count`, `frozen`, and `hist`
//!   for the histogram), so `VarStore::save`/`load` — and hence checkpoints — round-trip it; it also
//!   exports/imports a serde [`ObserverState`].

use qat_autograd::TensorQParams;
use qat_core::{PerChannelParams, QuantError, QuantParams, QuantRange};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, TchError, Tensor, nn};
use thiserror::Error;

/// TensorFlow's default activation EMA decay, 0.999 (`tf.contrib.quantize`
/// `_MovingAvgQuantize(ema_decay=0.999)` in `quantize.py`, also the paper's "smoothing close to 1").
pub const TF_EMA_DECAY: f32 = 0.999;

/// PyTorch's `MovingAverageMinMaxObserver(averaging_constant=0.01)`, i.e. decay `1 − 0.01 = 0.99`
/// (`torch/ao/quantization/observer.py`).
pub const PYTORCH_AVERAGING_CONSTANT: f32 = 0.01;

/// Errors of the observers. Each names the observer (its VarStore path).
#[derive(Debug, Error)]
pub enum ObserverError {
    /// `qparams()`/`range()` before any data was observed — there is no silent default.
    #[error("observer '{name}' is uncalibrated: it has not observed any data yet")]
    Uncalibrated {
        /// Observer name.
        name: String,
    },
    /// A batch contained NaN or infinity (training diverged or the input is broken).
    #[error("observer '{name}' saw a non-finite batch range [{min}, {max}]")]
    NonFinite {
        /// Observer name.
        name: String,
        /// Batch minimum.
        min: f32,
        /// Batch maximum.
        max: f32,
    },
    /// qat-core rejected the observed range.
    #[error("observer '{name}': {source}")]
    Quant {
        /// Observer name.
        name: String,
        /// qat-core's error.
        #[source]
        source: QuantError,
    },
    /// libtorch failed (shape, device).
    #[error("observer '{name}': libtorch error: {source}")]
    Torch {
        /// Observer name.
        name: String,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
    /// The tensor's shape does not fit the observer (channel axis or count).
    #[error("observer '{name}': expected {expected}, got tensor of shape {shape:?}")]
    Shape {
        /// Observer name.
        name: String,
        /// What was expected.
        expected: String,
        /// The tensor's shape.
        shape: Vec<i64>,
    },
    /// A configuration value out of its domain.
    #[error("observer '{name}': invalid config: {what}")]
    Config {
        /// Observer name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// An [`ObserverState`] that does not fit this observer.
    #[error("observer '{name}': state does not fit: {what}")]
    State {
        /// Observer name.
        name: String,
        /// What does not fit.
        what: String,
    },
}

/// Signedness/symmetry of the integer grid an observer's range maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantScheme {
    /// Paper's weights with its narrow-range tweak: `Z = 0`, grid `[−(2^(b−1) − 1), 2^(b−1) − 1]`,
    /// `S = max(|min|, |max|)/(2^(b−1) − 1)` ([`QuantParams::symmetric`]).
    SymmetricNarrow,
    /// Asymmetric `[0, 2^b − 1]`, range extended to include 0 and nudged
    /// ([`QuantParams::asymmetric`]): activations, and the paper's original uint8 weights.
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
    /// Quantization parameters for the current range; [`ObserverError::Uncalibrated`] before any
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

/// The VarStore buffers every observer keeps: `min`, `max` (`f32[channels]`), `count` (`f64[1]`),
/// `frozen` (`f32[1]`, 0 or 1).
#[derive(Debug)]
struct RangeBuffers {
    name: String,
    min: Tensor,
    max: Tensor,
    count: Tensor,
    frozen: Tensor,
}

impl RangeBuffers {
    fn new(path: &nn::Path<'_>, channels: i64) -> Result<Self, ObserverError> {
        let name = path.components().collect::<Vec<_>>().join(".");
        let torch = |source| ObserverError::Torch {
            name: name.clone(),
            source,
        };
        let device = path.device();
        let min = path.f_zeros_no_train("min", &[channels]).map_err(torch)?;
        let max = path.f_zeros_no_train("max", &[channels]).map_err(torch)?;
        let count = path.add(
            "count",
            Tensor::f_zeros([1], (Kind::Double, device)).map_err(torch)?,
            false,
        );
        let frozen = path.f_zeros_no_train("frozen", &[1]).map_err(torch)?;
        Ok(Self {
            name,
            min,
            max,
            count,
            frozen,
        })
    }

    fn torch_err(&self) -> impl Fn(TchError) -> ObserverError + '_ {
        move |source| ObserverError::Torch {
            name: self.name.clone(),
            source,
        }
    }

    fn count(&self) -> u64 {
        self.count.double_value(&[0]) as u64
    }

    fn set_count(&mut self, n: u64) {
        tch::no_grad(|| {
            let _ = self.count.fill_(n as f64);
        });
    }

    fn frozen(&self) -> bool {
        self.frozen.double_value(&[0]) != 0.0
    }

    fn set_frozen(&mut self, f: bool) {
        tch::no_grad(|| {
            let _ = self.frozen.fill_(if f { 1.0 } else { 0.0 });
        });
    }

    fn read(&self) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
        if self.count() == 0 {
            return Err(ObserverError::Uncalibrated {
                name: self.name.clone(),
            });
        }
        Ok((
            read_f32(&self.min, &self.name)?,
            read_f32(&self.max, &self.name)?,
        ))
    }

    fn write(&mut self, min: &[f32], max: &[f32]) -> Result<(), ObserverError> {
        let name = self.name.clone();
        write_f32(&mut self.min, min, &name)?;
        write_f32(&mut self.max, max, &name)
    }

    fn state(&self, histogram: Vec<f64>) -> Result<ObserverState, ObserverError> {
        Ok(ObserverState {
            min: read_f32(&self.min, &self.name)?,
            max: read_f32(&self.max, &self.name)?,
            count: self.count(),
            frozen: self.frozen(),
            histogram,
        })
    }

    fn load_state(&mut self, s: &ObserverState) -> Result<(), ObserverError> {
        let n = self.min.size()[0] as usize;
        if s.min.len() != n || s.max.len() != n {
            return Err(ObserverError::State {
                name: self.name.clone(),
                what: format!(
                    "{} channels expected, state has min {} / max {}",
                    n,
                    s.min.len(),
                    s.max.len()
                ),
            });
        }
        self.write(&s.min, &s.max)?;
        self.set_count(s.count);
        self.set_frozen(s.frozen);
        Ok(())
    }
}

fn read_f32(t: &Tensor, name: &str) -> Result<Vec<f32>, ObserverError> {
    t.f_to_kind(Kind::Float)
        .and_then(|t| t.f_flatten(0, -1))
        .and_then(|t| Vec::<f32>::try_from(&t))
        .map_err(|source| ObserverError::Torch {
            name: name.to_string(),
            source,
        })
}

fn write_f32(t: &mut Tensor, v: &[f32], name: &str) -> Result<(), ObserverError> {
    let device = t.device();
    tch::no_grad(|| {
        let src = Tensor::f_from_slice(v)?.f_to_device(device)?;
        t.f_copy_(&src)
    })
    .map_err(|source| ObserverError::Torch {
        name: name.to_string(),
        source,
    })
}

/// Batch `(min, max)` of a tensor, per tensor (`axis = None`) or per slice along `axis`,
/// checked finite.
fn batch_min_max(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    name: &str,
) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
    batch_min_max_clamped(x, axis, channels, name, None)
}

/// [`batch_min_max`] of `clamp(x, lo, hi)` for `clamp = Some((lo, hi))`, computed as the clamped
/// min/max of `x` (clamping is monotone: `min clamp(x) = clamp(min x)`, also for ±∞; NaN stays NaN
/// and is reported as non-finite).
fn batch_min_max_clamped(
    x: &Tensor,
    axis: Option<usize>,
    channels: usize,
    name: &str,
    clamp: Option<(f32, f32)>,
) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
    let torch = |source| ObserverError::Torch {
        name: name.to_string(),
        source,
    };
    let shape = x.size();
    let (lo, hi) = match axis {
        None => tch::no_grad(|| x.f_detach()?.f_aminmax(None, false)).map_err(torch)?,
        Some(a) => {
            if a >= shape.len() || shape[a] as usize != channels {
                return Err(ObserverError::Shape {
                    name: name.to_string(),
                    expected: format!("{channels} channels along axis {a}"),
                    shape,
                });
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
        return Err(ObserverError::NonFinite {
            name: name.to_string(),
            min: *a,
            max: *b,
        });
    }
    Ok((lo, hi))
}

fn to_qparams(
    name: &str,
    scheme: QuantScheme,
    bits: u32,
    axis: Option<usize>,
    min: &[f32],
    max: &[f32],
) -> Result<TensorQParams, ObserverError> {
    let quant = |source| ObserverError::Quant {
        name: name.to_string(),
        source,
    };
    match (scheme, axis) {
        (QuantScheme::SymmetricNarrow, None) => {
            let m = min[0].abs().max(max[0].abs());
            let r = QuantRange::signed_narrow(bits).map_err(quant)?;
            Ok(TensorQParams::PerTensor(
                QuantParams::symmetric(m, r).map_err(quant)?,
            ))
        }
        (QuantScheme::AsymmetricUnsigned, None) => Ok(TensorQParams::PerTensor(
            QuantParams::asymmetric(min[0], max[0], bits).map_err(quant)?,
        )),
        (QuantScheme::SymmetricNarrow, Some(a)) => {
            let m: Vec<f32> = min
                .iter()
                .zip(max)
                .map(|(lo, hi)| lo.abs().max(hi.abs()))
                .collect();
            let r = QuantRange::signed_narrow(bits).map_err(quant)?;
            Ok(TensorQParams::PerChannel(
                PerChannelParams::symmetric(&m, r, a).map_err(quant)?,
            ))
        }
        (QuantScheme::AsymmetricUnsigned, Some(a)) => {
            let r = QuantRange::unsigned(bits).map_err(quant)?;
            Ok(TensorQParams::PerChannel(
                PerChannelParams::from_min_max(min, max, r, a).map_err(quant)?,
            ))
        }
    }
}

fn check_bits(name: &str, bits: u32) -> Result<(), ObserverError> {
    QuantRange::unsigned(bits)
        .map(|_| ())
        .map_err(|source| ObserverError::Quant {
            name: name.to_string(),
            source,
        })
}

/// Min/max observer: the range is the min/max of the last tensor seen (`accumulate = false`, the
/// paper's weight rule "a = min w, b = max w", recomputed every step), or the running min/max of all
/// tensors seen (`accumulate = true`, PTQ calibration as PyTorch's `MinMaxObserver`).
///
/// ```
/// use qat_train::observer::{Granularity, MinMaxObserver, Observer, QuantScheme};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut obs = MinMaxObserver::new(&(vs.root() / "w_obs"), QuantScheme::SymmetricNarrow, 8,
///     Granularity::PerChannel { axis: 0 }, 2, false)?;
/// assert!(obs.qparams().is_err()); // uncalibrated
/// obs.observe(&Tensor::from_slice(&[1.27f32, -0.5, 0.1, -0.254]).view([2, 2]))?;
/// let p = obs.qparams()?;
/// assert_eq!(p.per_channel().unwrap().scales(), &[0.01, 0.002]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MinMaxObserver {
    buf: RangeBuffers,
    scheme: QuantScheme,
    bits: u32,
    granularity: Granularity,
    accumulate: bool,
}

impl MinMaxObserver {
    /// A min/max observer with its buffers under `path`. `channels` is the extent of the channel
    /// axis for [`Granularity::PerChannel`] (ignored, 1, for per tensor).
    pub fn new(
        path: &nn::Path<'_>,
        scheme: QuantScheme,
        bits: u32,
        granularity: Granularity,
        channels: i64,
        accumulate: bool,
    ) -> Result<Self, ObserverError> {
        let n = match granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel { .. } => channels,
        };
        let buf = RangeBuffers::new(path, n.max(1))?;
        check_bits(&buf.name, bits)?;
        Ok(Self {
            buf,
            scheme,
            bits,
            granularity,
            accumulate,
        })
    }

    /// The observed `(min, max)` per channel (one entry for per tensor).
    pub fn range(&self) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
        self.buf.read()
    }

    /// Forgets everything observed (count 0; uncalibrated again).
    pub fn reset(&mut self) {
        self.buf.set_count(0);
    }

    /// Bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Grid scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// Granularity.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The parameters this observer would give for `x` alone, without recording it (export uses
    /// it for the final folded weights).
    pub fn qparams_of(&self, x: &Tensor) -> Result<TensorQParams, ObserverError> {
        let channels = self.buf.min.size()[0] as usize;
        let (lo, hi) = batch_min_max(x, self.axis(), channels, &self.buf.name)?;
        to_qparams(
            &self.buf.name,
            self.scheme,
            self.bits,
            self.axis(),
            &lo,
            &hi,
        )
    }

    fn axis(&self) -> Option<usize> {
        match self.granularity {
            Granularity::PerTensor => None,
            Granularity::PerChannel { axis } => Some(axis),
        }
    }
}

/// The [`Observer`] methods every range observer delegates to its [`RangeBuffers`] unchanged:
/// name, calibration flag, freeze/unfreeze; `with_state` adds the plain state save/restore.
macro_rules! range_buffer_methods {
    () => {
        fn name(&self) -> &str {
            &self.buf.name
        }

        fn is_calibrated(&self) -> bool {
            self.buf.count() > 0
        }

        fn freeze(&mut self) {
            self.buf.set_frozen(true);
        }

        fn unfreeze(&mut self) {
            self.buf.set_frozen(false);
        }

        fn is_frozen(&self) -> bool {
            self.buf.frozen()
        }
    };
    (with_state) => {
        range_buffer_methods!();

        fn state(&self) -> Result<ObserverState, ObserverError> {
            self.buf.state(Vec::new())
        }

        fn load_state(&mut self, state: &ObserverState) -> Result<(), ObserverError> {
            self.buf.load_state(state)
        }
    };
}

impl MinMaxObserver {
    /// Observes `clamp(x, lo, hi)` for `clamp = Some((lo, hi))` without materializing it (the batch
    /// range of `x` clamped; see [`ActObserver::observe_clamped`]), else `x`.
    pub(crate) fn observe_clamped(
        &mut self,
        x: &Tensor,
        clamp: Option<(f32, f32)>,
    ) -> Result<(), ObserverError> {
        if self.buf.frozen() {
            return Ok(());
        }
        let channels = self.buf.min.size()[0] as usize;
        let (mut lo, mut hi) =
            batch_min_max_clamped(x, self.axis(), channels, &self.buf.name, clamp)?;
        let n = self.buf.count();
        if self.accumulate && n > 0 {
            let (old_lo, old_hi) = self.buf.read()?;
            lo.iter_mut().zip(&old_lo).for_each(|(a, b)| *a = a.min(*b));
            hi.iter_mut().zip(&old_hi).for_each(|(a, b)| *a = a.max(*b));
        }
        self.buf.write(&lo, &hi)?;
        self.buf.set_count(n + 1);
        Ok(())
    }
}

impl Observer for MinMaxObserver {
    range_buffer_methods!(with_state);

    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError> {
        self.observe_clamped(x, None)
    }

    fn qparams(&self) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = self.buf.read()?;
        to_qparams(
            &self.buf.name,
            self.scheme,
            self.bits,
            self.axis(),
            &lo,
            &hi,
        )
    }
}

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
            return Err(ObserverError::Config {
                name: buf.name.clone(),
                what: format!("EMA decay {decay} must be in [0, 1)"),
            });
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

impl EmaMinMaxObserver {
    /// Observes `clamp(x, lo, hi)` for `clamp = Some((lo, hi))` without materializing it (the batch
    /// range of `x` clamped; see [`ActObserver::observe_clamped`]), else `x`.
    pub(crate) fn observe_clamped(
        &mut self,
        x: &Tensor,
        clamp: Option<(f32, f32)>,
    ) -> Result<(), ObserverError> {
        if self.buf.frozen() {
            return Ok(());
        }
        let (blo, bhi) = batch_min_max_clamped(x, None, 1, &self.buf.name, clamp)?;
        let n = self.buf.count();
        let (lo, hi) = if n == 0 {
            (blo[0], bhi[0])
        } else {
            let (lo, hi) = self.buf.read()?;
            let d = f64::from(self.decay);
            let ema = |m: f32, b: f32| (d * f64::from(m) + (1.0 - d) * f64::from(b)) as f32;
            (ema(lo[0], blo[0]), ema(hi[0], bhi[0]))
        };
        self.buf.write(&[lo], &[hi])?;
        self.buf.set_count(n + 1);
        Ok(())
    }
}

impl Observer for EmaMinMaxObserver {
    range_buffer_methods!(with_state);

    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError> {
        self.observe_clamped(x, None)
    }

    fn qparams(&self) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = self.buf.read()?;
        to_qparams(
            &self.buf.name,
            QuantScheme::AsymmetricUnsigned,
            self.bits,
            None,
            &lo,
            &hi,
        )
    }
}

/// Histogram observer for post-training calibration: accumulates a histogram of every value seen
/// (`bins` equal bins over the running `[min, max]`; when a batch widens the range, old counts are
/// moved to the new bins by their bin centres), and clips the range to the `percentile`:
/// `max = upper edge of the first bin where the CDF ≥ p/100`, `min = lower edge of the first bin
/// where the CDF ≥ 1 − p/100`. The clipped range then goes through [`QuantParams::asymmetric`]
/// (extended to include 0, nudged). `percentile = 100` gives plain min/max.
///
/// ```
/// use qat_train::observer::{HistogramObserver, Observer};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut obs = HistogramObserver::new(&(vs.root() / "calib"), 8, 100, 99.0)?;
/// let mut data: Vec<f32> = (0..999).map(|i| i as f32 / 1000.0).collect();
/// data.push(50.0); // one outlier
/// obs.observe(&Tensor::from_slice(&data))?;
/// let (lo, hi) = obs.range()?;
/// assert_eq!(lo, 0.0);
/// assert!(hi <= 1.0); // the outlier is clipped away
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HistogramObserver {
    buf: RangeBuffers,
    hist: Tensor,
    bits: u32,
    percentile: f64,
}

impl HistogramObserver {
    /// A histogram observer with `bins ≥ 2` bins clipping at `percentile ∈ (50, 100]`.
    pub fn new(
        path: &nn::Path<'_>,
        bits: u32,
        bins: usize,
        percentile: f64,
    ) -> Result<Self, ObserverError> {
        let buf = RangeBuffers::new(path, 1)?;
        check_bits(&buf.name, bits)?;
        if bins < 2 || !(percentile > 50.0 && percentile <= 100.0) {
            return Err(ObserverError::Config {
                name: buf.name.clone(),
                what: format!("bins {bins} must be ≥ 2 and percentile {percentile} in (50, 100]"),
            });
        }
        let hist = path.add(
            "hist",
            Tensor::f_zeros([bins as i64], (Kind::Double, path.device())).map_err(|source| {
                ObserverError::Torch {
                    name: buf.name.clone(),
                    source,
                }
            })?,
            false,
        );
        Ok(Self {
            buf,
            hist,
            bits,
            percentile,
        })
    }

    /// The clipped `(min, max)` the parameters are computed from.
    pub fn range(&self) -> Result<(f32, f32), ObserverError> {
        let (lo, hi) = self.buf.read()?;
        let (lo, hi) = (lo[0], hi[0]);
        let h = self.counts()?;
        let total: f64 = h.iter().sum();
        if total <= 0.0 || hi <= lo {
            return Ok((lo, hi));
        }
        let width = f64::from(hi - lo) / h.len() as f64;
        let p = self.percentile / 100.0;
        let mut cum = 0.0;
        let (mut cmin, mut cmax) = (lo, hi);
        let mut found_min = false;
        for (i, &c) in h.iter().enumerate() {
            cum += c;
            if !found_min && cum >= total * (1.0 - p) && c > 0.0 {
                cmin = (f64::from(lo) + i as f64 * width) as f32;
                found_min = true;
            }
            if cum >= total * p {
                cmax = (f64::from(lo) + (i + 1) as f64 * width) as f32;
                break;
            }
        }
        Ok((cmin.max(lo), cmax.min(hi)))
    }

    fn counts(&self) -> Result<Vec<f64>, ObserverError> {
        Vec::<f64>::try_from(&self.hist).map_err(self.buf.torch_err())
    }
}

impl Observer for HistogramObserver {
    range_buffer_methods!();

    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError> {
        if self.buf.frozen() {
            return Ok(());
        }
        let (blo, bhi) = batch_min_max(x, None, 1, &self.buf.name)?;
        let n = self.buf.count();
        let bins = self.hist.size()[0] as usize;
        let mut h = vec![0f64; bins];
        let (lo, hi) = if n == 0 {
            (blo[0], bhi[0])
        } else {
            let (lo, hi) = self.buf.read()?;
            let (nlo, nhi) = (lo[0].min(blo[0]), hi[0].max(bhi[0]));
            let old = self.counts()?;
            let ow = f64::from(hi[0] - lo[0]) / bins as f64;
            for (i, &c) in old.iter().enumerate() {
                let centre = f64::from(lo[0]) + (i as f64 + 0.5) * ow;
                h[bin_of(centre, nlo, nhi, bins)] += c;
            }
            (nlo, nhi)
        };
        let vals = tch::no_grad(|| {
            x.f_detach()?
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)
        })
        .and_then(|t| Vec::<f32>::try_from(&t))
        .map_err(self.buf.torch_err())?;
        for v in vals {
            h[bin_of(f64::from(v), lo, hi, bins)] += 1.0;
        }
        let device = self.hist.device();
        tch::no_grad(|| self.hist.f_copy_(&Tensor::from_slice(&h).to_device(device)))
            .map_err(self.buf.torch_err())?;
        self.buf.write(&[lo], &[hi])?;
        self.buf.set_count(n + 1);
        Ok(())
    }

    fn qparams(&self) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = self.range()?;
        to_qparams(
            &self.buf.name,
            QuantScheme::AsymmetricUnsigned,
            self.bits,
            None,
            &[lo],
            &[hi],
        )
    }

    fn state(&self) -> Result<ObserverState, ObserverError> {
        self.buf.state(self.counts()?)
    }

    fn load_state(&mut self, state: &ObserverState) -> Result<(), ObserverError> {
        let bins = self.hist.size()[0] as usize;
        if state.histogram.len() != bins {
            return Err(ObserverError::State {
                name: self.buf.name.clone(),
                what: format!(
                    "{bins} histogram bins expected, got {}",
                    state.histogram.len()
                ),
            });
        }
        self.buf.load_state(state)?;
        let device = self.hist.device();
        tch::no_grad(|| {
            self.hist
                .f_copy_(&Tensor::from_slice(&state.histogram).to_device(device))
        })
        .map_err(self.buf.torch_err())
    }
}

fn bin_of(v: f64, lo: f32, hi: f32, bins: usize) -> usize {
    let w = f64::from(hi) - f64::from(lo);
    if w <= 0.0 {
        return 0;
    }
    let i = ((v - f64::from(lo)) / w * bins as f64).floor();
    (i.max(0.0) as usize).min(bins - 1)
}

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
                QuantScheme::AsymmetricUnsigned,
                bits,
                Granularity::PerTensor,
                1,
                true,
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
                let name = o.name().to_string();
                let c = tch::no_grad(|| x.f_clamp(f64::from(lo), f64::from(hi)))
                    .map_err(|source| ObserverError::Torch { name, source })?;
                o.observe(&c)
            }
        }
    }

    /// The per-tensor parameters (activation observers are always per tensor).
    pub fn per_tensor_qparams(&self) -> Result<QuantParams, ObserverError> {
        match self.qparams()? {
            TensorQParams::PerTensor(p) => Ok(p),
            TensorQParams::PerChannel(_) => Err(ObserverError::Config {
                name: self.name().to_string(),
                what: "activation observer must be per tensor".to_string(),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;
    use qat_core::array;
    use tch::nn::VarStore;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn ema_matches_closed_form() {
        let vs = VarStore::new(Device::Cpu);
        for (k, decay) in [0.9f32, TF_EMA_DECAY, 1.0 - PYTORCH_AVERAGING_CONSTANT]
            .into_iter()
            .enumerate()
        {
            let mut obs =
                EmaMinMaxObserver::new(&(vs.root() / format!("ema{k}")), 8, decay).unwrap();
            let batches: Vec<(f32, f32)> = (0..12)
                .map(|i| (-(i as f32 % 5.0) - 0.5, 1.0 + (i * 7 % 11) as f32))
                .collect();
            for &(lo, hi) in &batches {
                obs.observe(&t(&[lo, 0.3, hi, 0.0])).unwrap();
            }
            // mₙ = dⁿ⁻¹·b₁ + (1 − d)·Σₜ₌₂ⁿ dⁿ⁻ᵗ·bₜ
            let d = f64::from(decay);
            let n = batches.len();
            let closed = |f: fn(&(f32, f32)) -> f32| {
                let mut m = d.powi(n as i32 - 1) * f64::from(f(&batches[0]));
                for (t, b) in batches.iter().enumerate().skip(1) {
                    m += (1.0 - d) * d.powi((n - 1 - t) as i32) * f64::from(f(b));
                }
                m
            };
            let (lo, hi) = obs.range().unwrap();
            let (clo, chi) = (closed(|b| b.0), closed(|b| b.1));
            assert!(
                (f64::from(lo) - clo).abs() < 1e-5 * (1.0 + clo.abs()),
                "{lo} vs {clo}"
            );
            assert!(
                (f64::from(hi) - chi).abs() < 1e-5 * (1.0 + chi.abs()),
                "{hi} vs {chi}"
            );
            assert_eq!(
                obs.qparams().unwrap(),
                TensorQParams::PerTensor(QuantParams::asymmetric(lo, hi, 8).unwrap())
            );
        }
        assert!(EmaMinMaxObserver::new(&(vs.root() / "bad"), 8, 1.0).is_err());
    }

    #[test]
    fn uncalibrated_is_an_error_for_every_observer() {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root();
        let e = EmaMinMaxObserver::tensorflow(&(&p / "e"), 8).unwrap();
        let m = MinMaxObserver::new(
            &(&p / "m"),
            QuantScheme::SymmetricNarrow,
            8,
            Granularity::PerTensor,
            1,
            false,
        )
        .unwrap();
        let h = HistogramObserver::new(&(&p / "h"), 8, 64, 99.9).unwrap();
        for r in [e.qparams(), m.qparams(), h.qparams()] {
            assert!(matches!(r, Err(ObserverError::Uncalibrated { .. })));
        }
        let err = e.qparams().unwrap_err().to_string();
        assert!(err.contains("'e'") && err.contains("uncalibrated"), "{err}");
    }

    #[test]
    fn freeze_keeps_the_range_and_unfreeze_resumes() {
        let vs = VarStore::new(Device::Cpu);
        let mut obs = EmaMinMaxObserver::new(&(vs.root() / "a"), 8, 0.5).unwrap();
        obs.observe(&t(&[0.0, 1.0])).unwrap();
        obs.freeze();
        assert!(obs.is_frozen());
        obs.observe(&t(&[-5.0, 9.0])).unwrap();
        assert_eq!(obs.range().unwrap(), (0.0, 1.0));
        obs.unfreeze();
        obs.observe(&t(&[0.0, 3.0])).unwrap();
        assert_eq!(obs.range().unwrap(), (0.0, 2.0));
    }

    #[test]
    fn minmax_per_channel_uses_qat_core() {
        let vs = VarStore::new(Device::Cpu);
        let vals: Vec<f32> = (0..4 * 3 * 2 * 2)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let x = Tensor::from_slice(&vals).view([4, 3, 2, 2]);
        let nd = ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 3, 2, 2]), vals.clone()).unwrap();
        for axis in [0usize, 1] {
            let ch = [4, 3][axis];
            let mut obs = MinMaxObserver::new(
                &(vs.root() / format!("w{axis}")),
                QuantScheme::SymmetricNarrow,
                8,
                Granularity::PerChannel { axis },
                ch,
                false,
            )
            .unwrap();
            obs.observe(&x).unwrap();
            let (mins, maxs) = array::min_max_per_channel(nd.view(), axis).unwrap();
            let max_abs: Vec<f32> = mins
                .iter()
                .zip(&maxs)
                .map(|(a, b)| a.abs().max(b.abs()))
                .collect();
            let want =
                PerChannelParams::symmetric(&max_abs, QuantRange::signed_narrow(8).unwrap(), axis)
                    .unwrap();
            assert_eq!(obs.qparams().unwrap(), TensorQParams::PerChannel(want));
            assert_eq!(obs.range().unwrap(), (mins, maxs));
        }
        let mut asym = MinMaxObserver::new(
            &(vs.root() / "asym"),
            QuantScheme::AsymmetricUnsigned,
            8,
            Granularity::PerChannel { axis: 0 },
            4,
            false,
        )
        .unwrap();
        asym.observe(&x).unwrap();
        let (mins, maxs) = array::min_max_per_channel(nd.view(), 0).unwrap();
        let want =
            PerChannelParams::from_min_max(&mins, &maxs, QuantRange::unsigned(8).unwrap(), 0)
                .unwrap();
        assert_eq!(asym.qparams().unwrap(), TensorQParams::PerChannel(want));
        let bad = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
        assert!(matches!(
            asym.observe(&bad),
            Err(ObserverError::Shape { .. })
        ));
    }

    #[test]
    fn minmax_replace_versus_accumulate() {
        let vs = VarStore::new(Device::Cpu);
        let mk = |name: &str, acc| {
            MinMaxObserver::new(
                &(vs.root() / name),
                QuantScheme::AsymmetricUnsigned,
                8,
                Granularity::PerTensor,
                1,
                acc,
            )
            .unwrap()
        };
        let (mut last, mut run) = (mk("last", false), mk("run", true));
        for b in [[-1.0f32, 2.0], [-0.5, 4.0], [0.0, 1.0]] {
            last.observe(&t(&b)).unwrap();
            run.observe(&t(&b)).unwrap();
        }
        assert_eq!(last.range().unwrap(), (vec![0.0], vec![1.0]));
        assert_eq!(run.range().unwrap(), (vec![-1.0], vec![4.0]));
        run.reset();
        assert!(!run.is_calibrated());
    }

    #[test]
    fn non_finite_batches_are_rejected() {
        let vs = VarStore::new(Device::Cpu);
        let mut obs = EmaMinMaxObserver::tensorflow(&(vs.root() / "a"), 8).unwrap();
        assert!(matches!(
            obs.observe(&t(&[0.0, f32::NAN])),
            Err(ObserverError::NonFinite { .. })
        ));
        assert!(!obs.is_calibrated());
    }

    #[test]
    fn histogram_percentile_clips_outliers() {
        let vs = VarStore::new(Device::Cpu);
        let mut full = HistogramObserver::new(&(vs.root() / "full"), 8, 1000, 100.0).unwrap();
        let mut clip = HistogramObserver::new(&(vs.root() / "clip"), 8, 1000, 99.0).unwrap();
        // 1000 values in [0, 1) plus one outlier at 100, spread over two batches (range grows).
        let body: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        for o in [&mut full, &mut clip] {
            o.observe(&t(&body[..500])).unwrap();
            o.observe(&t(&[&body[500..], &[100.0]].concat())).unwrap();
        }
        assert_eq!(full.range().unwrap(), (0.0, 100.0));
        let (lo, hi) = clip.range().unwrap();
        assert_eq!(lo, 0.0);
        assert!(hi > 0.9 && hi < 1.2, "clipped max {hi}");
        let p = clip.qparams().unwrap();
        assert_eq!(
            p,
            TensorQParams::PerTensor(QuantParams::asymmetric(lo, hi, 8).unwrap())
        );
    }

    #[test]
    fn state_round_trips_through_serde_and_the_varstore() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("obs.safetensors");
        let build = |vs: &VarStore| {
            (
                EmaMinMaxObserver::new(&(vs.root() / "ema"), 8, 0.9).unwrap(),
                HistogramObserver::new(&(vs.root() / "hist"), 8, 32, 99.0).unwrap(),
                MinMaxObserver::new(
                    &(vs.root() / "w"),
                    QuantScheme::SymmetricNarrow,
                    4,
                    Granularity::PerChannel { axis: 0 },
                    2,
                    false,
                )
                .unwrap(),
            )
        };
        let vs = VarStore::new(Device::Cpu);
        let (mut e, mut h, mut w) = build(&vs);
        for b in [[-1.0f32, 0.5, 2.0, 3.0], [0.0, 0.2, 5.0, -2.0]] {
            e.observe(&t(&b)).unwrap();
            h.observe(&t(&b)).unwrap();
            w.observe(&t(&b).view([2, 2])).unwrap();
        }
        e.freeze();
        vs.save(&file).unwrap();
        let mut vs2 = VarStore::new(Device::Cpu);
        let (e2, h2, w2) = build(&vs2);
        assert!(!e2.is_calibrated());
        vs2.load(&file).unwrap();
        assert_eq!(e2.state().unwrap(), e.state().unwrap());
        assert!(e2.is_frozen());
        assert_eq!(h2.qparams().unwrap(), h.qparams().unwrap());
        assert_eq!(w2.qparams().unwrap(), w.qparams().unwrap());
        // serde state
        let json = serde_json::to_string(&h.state().unwrap()).unwrap();
        let vs3 = VarStore::new(Device::Cpu);
        let (_, mut h3, _) = build(&vs3);
        h3.load_state(&serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(h3.state().unwrap(), h.state().unwrap());
        let mut wrong = h.state().unwrap();
        wrong.histogram.pop();
        assert!(matches!(
            h3.load_state(&wrong),
            Err(ObserverError::State { .. })
        ));
    }
}
