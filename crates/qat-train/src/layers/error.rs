use qat_autograd::FakeQuantError;
use tch::TchError;
use thiserror::Error;

use crate::observer::ObserverError;

/// Errors of the QAT layers; each names the layer (its VarStore path).
#[derive(Debug, Error)]
pub enum LayerError {
    /// A fake-quant op failed.
    #[error("layer '{layer}': {source}")]
    FakeQuant {
        /// Layer name.
        layer: String,
        /// The op's error.
        #[source]
        source: FakeQuantError,
    },
    /// An observer failed (e.g. uncalibrated while fake quant is on in eval mode).
    #[error("layer '{layer}': {source}")]
    Observer {
        /// Layer name.
        layer: String,
        /// The observer's error.
        #[source]
        source: ObserverError,
    },
    /// libtorch failed.
    #[error("layer '{layer}': {op}: libtorch error: {source}")]
    Torch {
        /// Layer name.
        layer: String,
        /// Which step.
        op: &'static str,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
    /// The input does not have the shape the layer expects.
    #[error("layer '{layer}': expected input {expected}, got shape {got:?}")]
    Shape {
        /// Layer name.
        layer: String,
        /// What was expected.
        expected: String,
        /// The input's shape.
        got: Vec<i64>,
    },
    /// Invalid construction parameters.
    #[error("layer '{layer}': invalid config: {what}")]
    Config {
        /// Layer name.
        layer: String,
        /// What is wrong.
        what: String,
    },
}

impl LayerError {
    pub(crate) fn torch<'a>(
        layer: &'a str,
        op: &'static str,
    ) -> impl FnOnce(TchError) -> Self + 'a {
        move |source| Self::Torch {
            layer: layer.to_string(),
            op,
            source,
        }
    }

    pub(crate) fn observer(layer: &str) -> impl FnOnce(ObserverError) -> Self + '_ {
        move |source| Self::Observer {
            layer: layer.to_string(),
            source,
        }
    }

    pub(crate) fn fq(layer: &str) -> impl FnOnce(FakeQuantError) -> Self + '_ {
        move |source| Self::FakeQuant {
            layer: layer.to_string(),
            source,
        }
    }
}
