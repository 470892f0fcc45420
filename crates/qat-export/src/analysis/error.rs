//! Typed errors of the analysis module. Every variant names the layer (or table cell, or option) it
//! is about.

use qat_core::QuantError;
use thiserror::Error;

use crate::error::GraphError;

/// Why an analysis, a sensitivity table or a mixed-precision search could not be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalysisError {
    /// The graph is structurally invalid.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A layer's (folded) weights contain NaN or infinity.
    #[error("layer {layer:?}: {what} contains NaN or infinity")]
    NonFinite {
        /// The layer.
        layer: String,
        /// Which array.
        what: &'static str,
    },
    /// A layer has no weights, or weights that do not divide into its output channels.
    #[error("layer {layer:?}: {len} weights do not form {out_channels} output channels")]
    BadWeights {
        /// The layer.
        layer: String,
        /// Number of weights.
        len: usize,
        /// Output channels.
        out_channels: usize,
    },
    /// Quantizing a layer's weights failed (e.g. a bit width outside 2..=8).
    #[error("layer {layer:?}: {source}")]
    Quant {
        /// The layer.
        layer: String,
        /// The underlying error.
        source: QuantError,
    },
    /// An option or argument is outside its documented range.
    #[error("invalid {what}: {reason}")]
    InvalidOption {
        /// The option.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A layer name that is not in the table / graph, or that appears twice.
    #[error("layer {layer:?}: {reason}")]
    Layer {
        /// The layer.
        layer: String,
        /// What is wrong (unknown, duplicate, not a conv/linear).
        reason: &'static str,
    },
    /// A sensitivity cell that was never measured (the search needs every cell).
    #[error("sensitivity of layer {layer:?} ({operand}) at {bits} bits is missing")]
    MissingCell {
        /// The layer.
        layer: String,
        /// `weights` or `activations`.
        operand: &'static str,
        /// The bit width.
        bits: u32,
    },
    /// A cost or accuracy that is NaN or infinite, or a negative cost.
    #[error("layer {layer:?}: {what} = {value} (must be finite{})", if *.nonneg { " and ≥ 0" } else { "" })]
    BadNumber {
        /// The layer.
        layer: String,
        /// Which number.
        what: &'static str,
        /// The value.
        value: f64,
        /// Whether the number must also be ≥ 0.
        nonneg: bool,
    },
    /// No configuration fits the budget.
    #[error("no configuration fits the budget {budget}: the cheapest costs {cheapest}")]
    Infeasible {
        /// The budget.
        budget: f64,
        /// The cost of the cheapest configuration.
        cheapest: f64,
    },
    /// The exact search's Pareto front outgrew its bound (use the greedy search).
    #[error(
        "exact search: the Pareto front after layer {layer} has {size} points (bound {bound}); use the greedy search"
    )]
    FrontTooLarge {
        /// Layers combined so far.
        layer: usize,
        /// Points on the front.
        size: usize,
        /// The bound ([`crate::analysis::SearchOptions::max_front`]).
        bound: usize,
    },
}
