//! Typed errors. Every variant names the node (and what about it) that caused it.

use qat_core::QuantError;
use thiserror::Error;

/// A structural problem with a [`crate::FloatGraph`], or a failure to (de)serialize one.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GraphError {
    /// A node id that does not exist.
    #[error("no node with id {id}")]
    NoSuchNode {
        /// The id.
        id: usize,
    },
    /// The graph must have exactly one `Input` node.
    #[error("graph has {count} Input nodes (exactly one required)")]
    InputCount {
        /// Number of input nodes found.
        count: usize,
    },
    /// The graph has no `Output` node.
    #[error("graph has no Output node")]
    NoOutput,
    /// Two nodes share a name (or a name is empty).
    #[error("node name {node:?} is empty or used twice")]
    DuplicateName {
        /// The name.
        node: String,
    },
    /// A node refers to an input that is not an earlier node (the list must be topologically
    /// ordered).
    #[error("node {node:?}: input id {input} is not an earlier node")]
    BadInput {
        /// Offending node.
        node: String,
        /// The input id.
        input: usize,
    },
    /// Wrong number of inputs for the op.
    #[error("node {node:?} ({op}): expected {expected} inputs, got {got}")]
    Arity {
        /// Offending node.
        node: String,
        /// Op kind.
        op: &'static str,
        /// Expected count, in words.
        expected: &'static str,
        /// Actual count.
        got: usize,
    },
    /// Input shapes that the op cannot take.
    #[error("node {node:?} ({op}): {reason}")]
    Shape {
        /// Offending node.
        node: String,
        /// Op kind.
        op: &'static str,
        /// What is wrong, with the shapes.
        reason: String,
    },
    /// A parameter vector of the wrong length.
    #[error("node {node:?}: {what} has {got} elements, expected {expected}")]
    Length {
        /// Offending node.
        node: String,
        /// Which parameter (weight, bias, bn.gamma, …).
        what: &'static str,
        /// Expected element count.
        expected: usize,
        /// Actual element count.
        got: usize,
    },
    /// A hyper-parameter out of its domain (stride 0, groups not dividing channels, …).
    #[error("node {node:?}: {what}: {reason}")]
    Param {
        /// Offending node.
        node: String,
        /// Which parameter.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A bit width outside 2..=8.
    #[error("node {node:?}: {what} bit width {bits} outside 2..=8")]
    Bits {
        /// Offending node.
        node: String,
        /// `"activation"` or `"weight"`.
        what: &'static str,
        /// The bit width.
        bits: u32,
    },
    /// An observed range that is NaN/infinite or inverted.
    #[error("node {node:?}: observed range [{min}, {max}] is not finite or inverted")]
    BadRange {
        /// Offending node.
        node: String,
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// A run was given an input of the wrong per-sample shape.
    #[error("input {node:?}: expected per-sample shape {expected:?}, got batch shape {got:?}")]
    InputShape {
        /// The input node.
        node: String,
        /// Expected per-sample shape.
        expected: Vec<usize>,
        /// Shape received (including the batch dimension).
        got: Vec<usize>,
    },
    /// The graph exceeds a size or work limit ([`crate::limits`]) at this node.
    #[error("node {node:?}: needs {needed} {resource}, over the limit of {limit}")]
    Limit {
        /// The node at which the total first exceeds the limit.
        node: String,
        /// The resource (`multiply-accumulates per sample`, …).
        resource: &'static str,
        /// The total needed up to and including this node.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// JSON/bincode (de)serialization failed.
    #[error("{format} (de)serialization failed: {message}")]
    Serde {
        /// `"json"` or `"bincode"`.
        format: &'static str,
        /// The underlying message.
        message: String,
    },
}

/// One reason export refuses a node. [`ExportError::Refused`] lists every one found.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Refusal {
    /// The node's output has no observed range (run calibration or QAT observers first).
    #[error("node {node:?}: activation range is uncalibrated")]
    Uncalibrated {
        /// Offending node.
        node: String,
    },
    /// A conv still carries batch norm and folding is disabled.
    #[error("node {node:?}: batch norm is not folded and folding is disabled")]
    UnfoldedBatchNorm {
        /// Offending node.
        node: String,
    },
    /// The op/configuration has no integer kernel in the runtime.
    #[error("node {node:?} ({op}): the int8 runtime cannot run this: {reason}")]
    Unsupported {
        /// Offending node.
        node: String,
        /// Op kind.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// The deployment target's runtime cannot compute this node as exported (its kernel refuses
    /// the parameters, or ignores them): exporting would give a silently different model.
    #[error("node {node:?} ({op}): target {target} cannot compute this exactly: {reason}")]
    Target {
        /// Offending node.
        node: String,
        /// Op kind.
        op: &'static str,
        /// The target.
        target: qat_core::Target,
        /// Why, with the offending values.
        reason: String,
    },
    /// Weights, bias or batch-norm parameters contain NaN or infinity.
    #[error("node {node:?}: {what} contains NaN or infinity")]
    NonFinite {
        /// Offending node.
        node: String,
        /// Which parameter.
        what: &'static str,
    },
}

impl Refusal {
    /// The offending node's name.
    pub fn node(&self) -> &str {
        match self {
            Refusal::Uncalibrated { node }
            | Refusal::UnfoldedBatchNorm { node }
            | Refusal::Unsupported { node, .. }
            | Refusal::Target { node, .. }
            | Refusal::NonFinite { node, .. } => node,
        }
    }
}

fn list(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("\n  - {r}"))
        .collect::<String>()
}

/// A graph node that a reader of graphs cannot express, and why: a node of an ONNX file that
/// [`crate::onnx::import_onnx`] cannot import, or a [`crate::FloatGraph`] node that a consumer of
/// float graphs (qat-train's QAT net builder) has no layer for. Readers collect every such node
/// and refuse once, with the whole list.
///
/// ```
/// use qat_export::UnsupportedNode;
/// let bad = [
///     UnsupportedNode { node: "c1".into(), op: "Conv2d".into(), reason: "asymmetric padding".into() },
///     UnsupportedNode { node: "p".into(), op: "MaxPool".into(), reason: "2×1 window".into() },
/// ];
/// assert_eq!(bad[0].to_string(), "c1 (Conv2d): asymmetric padding");
/// assert_eq!(UnsupportedNode::list(&bad), "c1 (Conv2d): asymmetric padding\n  p (MaxPool): 2×1 window");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedNode {
    /// The node's name (an ONNX node without one: its first output's name).
    pub node: String,
    /// Its op: the ONNX op type (with its domain when not the default one), or the float graph's
    /// [`crate::ir::FloatOp::kind`].
    pub op: String,
    /// What about it is not supported (attribute, input, layout).
    pub reason: String,
}

impl std::fmt::Display for UnsupportedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.op, self.reason)
    }
}

impl UnsupportedNode {
    /// `nodes` one per line, every line after the first indented by two spaces (the tail of an
    /// error message that starts with their count).
    pub fn list(nodes: &[UnsupportedNode]) -> String {
        nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

/// Why export (or the simulation twin built on it) failed.
///
/// (`ExportError::InvalidModel` wraps the runtime's own validation of the emitted model: it would
/// mean an export bug, and is checked by [`crate::export`].)
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExportError {
    /// The graph is structurally invalid.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Export refuses; every offending node is listed.
    #[error("export refused ({} problem(s)):{}", refusals.len(), list(refusals))]
    Refused {
        /// Every problem found, in node order.
        refusals: Vec<Refusal>,
    },
    /// The emitted model failed the runtime's validation (an export bug; reported, never hidden).
    #[error("emitted Int8Model is invalid: {0}")]
    InvalidModel(#[from] qat_int8_runtime::ValidationError),
    /// The quantization math rejected a value (e.g. a multiplier out of range).
    #[error("node {node:?}: {what}: {source}")]
    Quant {
        /// Offending node.
        node: String,
        /// What was being computed.
        what: &'static str,
        /// The qat-core error.
        source: QuantError,
    },
}

/// Why PTQ calibration failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CalibrationError {
    /// The graph is structurally invalid or a batch has the wrong shape.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// No calibration batch was given.
    #[error("calibration needs at least one batch")]
    NoBatches,
    /// A method parameter is out of its domain.
    #[error("invalid calibration method: {reason}")]
    Method {
        /// Why.
        reason: String,
    },
    /// A node produced no finite value on any batch.
    #[error("node {node:?}: no finite values observed during calibration")]
    NoFiniteValues {
        /// Offending node.
        node: String,
    },
}

/// Why post-training quantization failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PtqError {
    /// Calibration failed.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// Export of the calibrated graph failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}
