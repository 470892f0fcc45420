use thiserror::Error;

use crate::target::Target;

/// Errors of the quantization math. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    /// A range bound was NaN or infinite.
    #[error("range [{min}, {max}] is not finite")]
    NonFiniteRange {
        /// Lower bound as given.
        min: f32,
        /// Upper bound as given.
        max: f32,
    },
    /// `min > max`.
    #[error("range is inverted: min {min} > max {max}")]
    InvertedRange {
        /// Lower bound as given.
        min: f32,
        /// Upper bound as given.
        max: f32,
    },
    /// The integer grid is empty or does not contain the zero point.
    #[error("invalid integer range [{qmin}, {qmax}]")]
    InvalidIntRange {
        /// Smallest integer code.
        qmin: i32,
        /// Largest integer code.
        qmax: i32,
    },
    /// Bit width outside 2..=8.
    #[error("unsupported bit width {bits} (supported: 2..=8)")]
    UnsupportedBits {
        /// The bit width asked for.
        bits: u32,
    },
    /// A scale that is not a finite positive number.
    #[error("scale {scale} must be finite and > 0")]
    InvalidScale {
        /// The scale given.
        scale: f32,
    },
    /// A zero point outside the integer range.
    #[error("zero point {zero_point} outside [{qmin}, {qmax}]")]
    InvalidZeroPoint {
        /// The zero point given.
        zero_point: i32,
        /// Smallest integer code.
        qmin: i32,
        /// Largest integer code.
        qmax: i32,
    },
    /// A real multiplier that cannot be represented as `M0 · 2^(shift − 31)`.
    #[error("real multiplier {real} must be finite, > 0 and < 2^30")]
    InvalidMultiplier {
        /// The real multiplier.
        real: f64,
    },
    /// A stored (M0, shift) pair that violates the representation's invariants.
    #[error(
        "quantized multiplier ({multiplier}, shift {shift}) is invalid: M0 must be 0 or in [2^30, 2^31), shift in [-31, 30]"
    )]
    InvalidQuantizedMultiplier {
        /// Stored M0.
        multiplier: i32,
        /// Stored shift.
        shift: i32,
    },
    /// Per-channel parameters do not match the tensor they are applied to.
    #[error("per-channel params have {params} channels but axis {axis} of the tensor has {tensor}")]
    ChannelMismatch {
        /// Channels in the parameters.
        params: usize,
        /// Axis of the tensor.
        axis: usize,
        /// Extent of that axis.
        tensor: usize,
    },
    /// Axis out of range for the tensor.
    #[error("axis {axis} out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// Axis asked for.
        axis: usize,
        /// Rank of the tensor.
        rank: usize,
    },
    /// A deployment target's runtime cannot compute this (its kernel refuses the parameters or
    /// has no such operation); exporting for that target would give a different model.
    #[error("target {target}: {what}: {reason}")]
    Unsupported {
        /// The target.
        target: Target,
        /// What was asked for (an op or a parameter).
        what: &'static str,
        /// Why the target's runtime cannot do it, with the offending values.
        reason: String,
    },
    /// A target name that [`Target::from_name`] does not know.
    #[error("unknown target {name:?} (qat, tflite, ort, xnnpack)")]
    UnknownTarget {
        /// The name given.
        name: String,
    },
    /// Empty input where at least one element is needed.
    #[error("{what} is empty")]
    Empty {
        /// What was empty.
        what: &'static str,
    },
}
