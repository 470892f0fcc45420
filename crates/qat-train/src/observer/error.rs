//! The observers' error: which observer, and what went wrong.

use qat_core::QuantError;
use tch::TchError;
use thiserror::Error;

/// An observer's error: the observer's name (its VarStore path, given once) and what went wrong.
///
/// ```
/// use qat_train::observer::{EmaMinMaxObserver, Observer, ObserverErrorKind};
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let obs = EmaMinMaxObserver::tensorflow(&(vs.root() / "act"), 8)?;
/// let e = obs.qparams().unwrap_err();
/// assert_eq!(e.name, "act");
/// assert!(matches!(e.kind, ObserverErrorKind::Uncalibrated));
/// assert_eq!(e.to_string(), "observer 'act': uncalibrated: it has not observed any data yet");
/// # Ok::<(), qat_train::observer::ObserverError>(())
/// ```
#[derive(Debug)]
pub struct ObserverError {
    /// The observer's name (its VarStore path).
    pub name: String,
    /// What went wrong.
    pub kind: ObserverErrorKind,
}

/// What went wrong in an observer.
#[derive(Debug, Error)]
pub enum ObserverErrorKind {
    /// `qparams()`/`range()` before any data was observed — there is no silent default.
    #[error("uncalibrated: it has not observed any data yet")]
    Uncalibrated,
    /// A batch contained NaN or infinity (training diverged or the input is broken).
    #[error("non-finite batch range [{min}, {max}]")]
    NonFinite {
        /// Batch minimum.
        min: f32,
        /// Batch maximum.
        max: f32,
    },
    /// qat-core rejected the observed range.
    #[error(transparent)]
    Quant(QuantError),
    /// libtorch failed (shape, device).
    #[error("libtorch error: {0}")]
    Torch(#[source] TchError),
    /// The tensor's shape does not fit the observer (channel axis or count).
    #[error("expected {expected}, got tensor of shape {shape:?}")]
    Shape {
        /// What was expected.
        expected: String,
        /// The tensor's shape.
        shape: Vec<i64>,
    },
    /// A configuration value out of its domain.
    #[error("invalid config: {0}")]
    Config(String),
    /// An [`ObserverState`](super::ObserverState) that does not fit this observer.
    #[error("state does not fit: {0}")]
    State(String),
}

impl ObserverError {
    /// The error `kind` of the observer `name`.
    pub fn new(name: &str, kind: ObserverErrorKind) -> Self {
        Self {
            name: name.to_string(),
            kind,
        }
    }

    /// Maps a libtorch error of the observer `name`.
    pub(crate) fn torch(name: &str) -> impl Fn(TchError) -> Self + '_ {
        move |e| Self::new(name, ObserverErrorKind::Torch(e))
    }

    /// Maps a qat-core error of the observer `name`.
    pub(crate) fn quant(name: &str) -> impl Fn(QuantError) -> Self + '_ {
        move |e| Self::new(name, ObserverErrorKind::Quant(e))
    }
}

named_error!(ObserverError, name, "observer '{}': {}");
