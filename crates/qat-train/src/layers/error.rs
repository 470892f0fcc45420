//! The layers' error: which layer, and what went wrong.

use qat_autograd::FakeQuantError;
use tch::TchError;
use thiserror::Error;

use crate::observer::ObserverError;

/// A QAT layer's error: the layer's name (its VarStore path, given once) and what went wrong.
#[derive(Debug)]
pub struct LayerError {
    /// The layer's name (its VarStore path).
    pub layer: String,
    /// What went wrong.
    pub kind: LayerErrorKind,
}

/// What went wrong in a QAT layer.
#[derive(Debug, Error)]
pub enum LayerErrorKind {
    /// A fake-quant op failed.
    #[error(transparent)]
    FakeQuant(FakeQuantError),
    /// An observer failed (e.g. uncalibrated while fake quant is on in eval mode); the error
    /// names the observer.
    #[error(transparent)]
    Observer(ObserverError),
    /// libtorch failed.
    #[error("{op}: libtorch error: {source}")]
    Torch {
        /// Which step.
        op: &'static str,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
    /// The input does not have the shape the layer expects.
    #[error("expected input {expected}, got shape {got:?}")]
    Shape {
        /// What was expected.
        expected: String,
        /// The input's shape.
        got: Vec<i64>,
    },
    /// Invalid construction parameters.
    #[error("invalid config: {0}")]
    Config(String),
}

impl LayerError {
    /// The error `kind` of the layer `layer`.
    pub fn new(layer: &str, kind: LayerErrorKind) -> Self {
        Self {
            layer: layer.to_string(),
            kind,
        }
    }

    /// An invalid construction parameter of `layer`.
    pub(crate) fn config(layer: &str, what: impl Into<String>) -> Self {
        Self::new(layer, LayerErrorKind::Config(what.into()))
    }

    /// An input of the wrong shape.
    pub(crate) fn shape(layer: &str, expected: impl Into<String>, got: Vec<i64>) -> Self {
        Self::new(
            layer,
            LayerErrorKind::Shape {
                expected: expected.into(),
                got,
            },
        )
    }

    pub(crate) fn torch<'a>(
        layer: &'a str,
        op: &'static str,
    ) -> impl FnOnce(TchError) -> Self + 'a {
        move |source| Self::new(layer, LayerErrorKind::Torch { op, source })
    }

    pub(crate) fn observer(layer: &str) -> impl FnOnce(ObserverError) -> Self + '_ {
        move |e| Self::new(layer, LayerErrorKind::Observer(e))
    }

    pub(crate) fn fq(layer: &str) -> impl FnOnce(FakeQuantError) -> Self + '_ {
        move |e| Self::new(layer, LayerErrorKind::FakeQuant(e))
    }
}

named_error!(LayerError, layer, "layer '{}': {}");
