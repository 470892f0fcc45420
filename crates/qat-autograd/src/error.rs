use qat_core::QuantError;
use tch::{Kind, TchError};
use thiserror::Error;

/// Errors of the differentiable fake-quant ops. Every variant names the op (`op`) it came from.
#[derive(Debug, Error)]
pub enum FakeQuantError {
    /// libtorch rejected a call (shape, dtype or device problem).
    #[error("{op}: libtorch error: {source}")]
    Torch {
        /// The op that failed.
        op: &'static str,
        /// libtorch's message.
        #[source]
        source: TchError,
    },
    /// The quantization parameters could not be built (qat-core rejected them).
    #[error("{op}: invalid quantization parameters: {source}")]
    Quant {
        /// The op that failed.
        op: &'static str,
        /// qat-core's error.
        #[source]
        source: QuantError,
    },
    /// The tensor is not `f32` (the reference arithmetic is f32; other kinds would not match it).
    #[error("{op}: expected an f32 tensor, got {kind:?}")]
    NotF32 {
        /// The op that failed.
        op: &'static str,
        /// Kind of the tensor given.
        kind: Kind,
    },
    /// The per-channel axis is not an axis of the tensor.
    #[error("{op}: channel axis {axis} out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// The op that failed.
        op: &'static str,
        /// Axis asked for.
        axis: usize,
        /// Rank of the tensor.
        rank: usize,
    },
    /// The per-channel parameters do not match the tensor's extent along the axis.
    #[error(
        "{op}: {params} per-channel parameters but axis {axis} of the tensor has {tensor} channels"
    )]
    ChannelMismatch {
        /// The op that failed.
        op: &'static str,
        /// Number of channels in the parameters.
        params: usize,
        /// The channel axis.
        axis: usize,
        /// Extent of the tensor along `axis`.
        tensor: usize,
    },
    /// A learnable parameter tensor has the wrong shape.
    #[error("{op}: {what} must have shape {expected:?}, got {got:?}")]
    ParamShape {
        /// The op that failed.
        op: &'static str,
        /// Which parameter (`scale`, `zero_point`, `alpha`).
        what: &'static str,
        /// Shape required.
        expected: Vec<i64>,
        /// Shape given.
        got: Vec<i64>,
    },
    /// A learnable clip value is not a finite positive number.
    #[error("{op}: {what} = {value} must be finite and > 0")]
    NonPositive {
        /// The op that failed.
        op: &'static str,
        /// Which value.
        what: &'static str,
        /// The value found.
        value: f64,
    },
    /// A clamp range is NaN or empty.
    #[error("{op}: clamp range [{lo}, {hi}] must satisfy lo <= hi (no NaN)")]
    InvalidClamp {
        /// The op that failed.
        op: &'static str,
        /// Lower bound given.
        lo: f32,
        /// Upper bound given.
        hi: f32,
    },
}

impl FakeQuantError {
    pub(crate) fn torch(op: &'static str) -> impl FnOnce(TchError) -> Self {
        move |source| Self::Torch { op, source }
    }

    pub(crate) fn quant(op: &'static str) -> impl FnOnce(QuantError) -> Self {
        move |source| Self::Quant { op, source }
    }
}
