//! The framework-neutral float graph IR ([`FloatGraph`]) that training (or any other framework)
//! hands to export.
//!
//! # Conventions
//! * **Activations** are NHWC; every node output has a *per-sample* shape `[H, W, C]` (spatial) or
//!   `[C]` (flat features), exactly like the runtime's `TensorInfo::shape`. The batch dimension is
//!   dynamic.
//! * **Conv weights** are `OHWI` = `[C_out, kh, kw, C_in / groups]`, the runtime's layout, as a flat
//!   row-major `Vec<f32>` plus the shape. PyTorch/tch weights are `OIHW`: convert them with
//!   [`ohwi_from_oihw`] ([`oihw_from_ohwi`] goes back). Depthwise is `groups == C_in` (weights
//!   `[C_in·mult, kh, kw, 1]`).
//! * **Linear weights** are `[out, in]` (PyTorch's layout). [`FloatGraph::flatten`] flattens in NHWC
//!   order, so a PyTorch model that flattens NCHW needs its first linear layer's columns permuted:
//!   [`linear_from_nchw_flatten`] ([`linear_to_nchw_flatten`] goes back).
//! * **Ranges**: every node carries an [`ActQuant`]: the observed `(min, max)` of its output
//!   (`None` = uncalibrated, which export refuses) and the activation bit width (2..=8, default 8).
//!   Nodes that do not change the quantization grid — [`FloatOp::MaxPool`], [`FloatOp::AvgPool`],
//!   [`FloatOp::GlobalAvgPool`], [`FloatOp::Flatten`], [`FloatOp::Output`] — share their input's
//!   parameters (see [`FloatOp::inherits_params`]); their own range is informational. A
//!   training framework should not fake-quantize these outputs with separate observers.
//! * **Weights** carry a [`WeightQuant`]: the scheme (per-channel symmetric narrow by default) and
//!   the bit width.
//!
//! Nodes are stored in topological order: a node's inputs are earlier nodes (checked by
//! [`FloatGraph::validate`]).
//!
//! ```
//! use qat_export::ir::{Activation, Conv2d, FloatGraph, Linear};
//! let mut g = FloatGraph::new("tiny");
//! let x = g.input("x", &[4, 4, 1]);
//! let c = g.conv2d("conv", x, Conv2d::new(vec![0.5; 2 * 3 * 3], [2, 3, 3, 1])
//!     .with_padding([1, 1, 1, 1])
//!     .with_activation(Activation::Relu));
//! let p = g.global_avg_pool("gap", c);
//! let fc = g.linear("fc", p, Linear::new(vec![1.0, -1.0, 0.5, 0.5], [2, 2]).with_bias(vec![0.1, 0.0]));
//! g.output("logits", fc);
//! let shapes = g.validate()?;
//! assert_eq!(shapes[c.0], vec![4, 4, 2]);
//! assert_eq!(shapes[fc.0], vec![2]);
//! # Ok::<(), qat_export::GraphError>(())
//! ```

mod layout;
mod serial;
pub use layout::{
    linear_from_nchw_flatten, linear_to_nchw_flatten, ohwi_from_oihw, oihw_from_ohwi,
};

use serde::{Deserialize, Serialize};

use crate::error::GraphError;

/// Index of a node in [`FloatGraph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub usize);

/// Observed real range `[min, max]` of a tensor (calibration or QAT observers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    /// Smallest observed value.
    pub min: f32,
    /// Largest observed value.
    pub max: f32,
}

/// Quantization of one activation tensor (a node output).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    /// Observed range; `None` means uncalibrated (export refuses; never a silent default).
    pub range: Option<Range>,
    /// Bit width of the activation grid `[0, 2^bits − 1]`, 2..=8.
    pub bits: u32,
}

impl Default for ActQuant {
    fn default() -> Self {
        Self {
            range: None,
            bits: 8,
        }
    }
}

/// Fused activation function of a conv, linear or add (shared with qat-train's layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Applies the activation to a real value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    /// The activation as a clamp `[lo, hi]` (`None` for the identity): ReLU `[0, ∞]`, ReLU6 `[0, 6]`.
    ///
    /// ```
    /// use qat_export::ir::Activation;
    /// assert_eq!(Activation::Relu6.clamp_range(), Some((0.0, 6.0)));
    /// assert_eq!(Activation::None.clamp_range(), None);
    /// ```
    pub fn clamp_range(self) -> Option<(f32, f32)> {
        match self {
            Self::None => None,
            Self::Relu => Some((0.0, f32::INFINITY)),
            Self::Relu6 => Some((0.0, 6.0)),
        }
    }
}

/// How a layer's weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WeightScheme {
    /// Symmetric narrow range `[−(2^(b−1)−1), 2^(b−1)−1]`, `Z = 0`, one scale per output channel
    /// (whitepaper §2.2, per-channel). The default.
    #[default]
    SymmetricPerChannel,
    /// Symmetric narrow range, one scale for the whole tensor.
    SymmetricPerTensor,
    /// The paper's asymmetric uint8 weights (§2.1): `r = S_w·(q − Z_w)` on `[0, 2^b − 1]`, one
    /// `(S_w, Z_w)` per tensor from the nudged `[min w, max w]`.
    AsymmetricPerTensor,
}

/// Weight quantization of one conv/linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightQuant {
    /// The scheme.
    pub scheme: WeightScheme,
    /// Bit width, 2..=8 (codes are stored in int8/uint8 whatever the width).
    pub bits: u32,
}

impl Default for WeightQuant {
    fn default() -> Self {
        Self {
            scheme: WeightScheme::SymmetricPerChannel,
            bits: 8,
        }
    }
}

/// Batch-norm parameters following a conv: `y = γ·(x − mean)/√(var + eps) + β`, per output channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// γ (scale), one per output channel.
    pub gamma: Vec<f32>,
    /// β (shift).
    pub beta: Vec<f32>,
    /// Moving mean.
    pub mean: Vec<f32>,
    /// Moving variance.
    pub var: Vec<f32>,
    /// ε added to the variance.
    pub eps: f32,
}

/// How the layer was trained with respect to batch-norm folding (informational; shown in reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BnTraining {
    /// No batch norm, or unknown.
    #[default]
    None,
    /// Folded with the σ_B/σ correction factor of whitepaper §3.2.2 (eq. 22–31).
    FoldedWithCorrection,
    /// Folded without correction (PyTorch `conv_fused.py` variant).
    FoldedWithoutCorrection,
    /// Batch norm trained separately (not folded during training).
    Unfolded,
}

/// 2-D convolution over NHWC input with OHWI weights, optional bias, optional batch norm and fused
/// activation: `y = act(BN(conv(x, W) + b))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Weights, row-major OHWI `[C_out, kh, kw, C_in/groups]`.
    pub weight: Vec<f32>,
    /// `[C_out, kh, kw, C_in/groups]`.
    pub weight_shape: [usize; 4],
    /// Bias, one per output channel.
    pub bias: Option<Vec<f32>>,
    /// Batch norm applied after the conv (folded at export).
    pub batch_norm: Option<BatchNorm>,
    /// Fused activation.
    pub activation: Activation,
    /// `[stride_h, stride_w]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]` zero padding.
    pub padding: [usize; 4],
    /// `[dilation_h, dilation_w]`.
    pub dilation: [usize; 2],
    /// Groups (`C_in` for depthwise).
    pub groups: usize,
    /// Weight quantization.
    pub weight_quant: WeightQuant,
    /// Informational: how training treated batch norm.
    pub bn_training: BnTraining,
}

impl Conv2d {
    /// A conv with the given OHWI weights: stride 1, no padding, dilation 1, one group, no bias,
    /// no batch norm, no activation, default weight quantization.
    pub fn new(weight: Vec<f32>, weight_shape: [usize; 4]) -> Self {
        Self {
            weight,
            weight_shape,
            bias: None,
            batch_norm: None,
            activation: Activation::None,
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
            weight_quant: WeightQuant::default(),
            bn_training: BnTraining::None,
        }
    }
    qat_core::by_value_setters! {
        /// Sets the batch norm that follows the conv.
        pub fn with_batch_norm(bn: BatchNorm) => batch_norm = Some(bn);
        /// Sets `[stride_h, stride_w]`.
        pub fn with_stride(stride: [usize; 2]) => stride;
        /// Sets `[top, left, bottom, right]` padding.
        pub fn with_padding(padding: [usize; 4]) => padding;
        /// Sets `[dilation_h, dilation_w]`.
        pub fn with_dilation(dilation: [usize; 2]) => dilation;
        /// Sets the number of groups (`C_in` for depthwise).
        pub fn with_groups(groups: usize) => groups;
    }
    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.weight_shape[0]
    }
}

/// Fully connected layer `y = act(W·x + b)`, weights `[out, in]`, input `[in]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weights, row-major `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out, in]`.
    pub weight_shape: [usize; 2],
    /// Bias, one per output.
    pub bias: Option<Vec<f32>>,
    /// Fused activation.
    pub activation: Activation,
    /// Weight quantization.
    pub weight_quant: WeightQuant,
    /// Informational: how training treated batch norm (normally [`BnTraining::None`]).
    pub bn_training: BnTraining,
}

impl Linear {
    /// A linear layer with weights `[out, in]`, no bias, no activation, default weight quantization.
    pub fn new(weight: Vec<f32>, weight_shape: [usize; 2]) -> Self {
        Self {
            weight,
            weight_shape,
            bias: None,
            activation: Activation::None,
            weight_quant: WeightQuant::default(),
            bn_training: BnTraining::None,
        }
    }
}

/// The setters that [`Conv2d`] and [`Linear`] share (their fields of the same names).
macro_rules! layer_setters {
    ($layer:ty) => {
        impl $layer {
            qat_core::by_value_setters! {
                /// Sets the bias.
                pub fn with_bias(bias: Vec<f32>) => bias = Some(bias);
                /// Sets the fused activation.
                pub fn with_activation(act: Activation) => activation;
                /// Sets the weight quantization.
                pub fn with_weight_quant(wq: WeightQuant) => weight_quant;
                /// Records how training handled batch norm (informational).
                pub fn with_bn_training(t: BnTraining) => bn_training;
            }
        }
    };
}

layer_setters!(Conv2d);
layer_setters!(Linear);

/// Window of a 2-D pooling op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`; padded cells are excluded (average) or ignored (max).
    pub padding: [usize; 4],
}

impl Pool2d {
    /// A `k×k` window with stride `s` and no padding.
    pub fn square(k: usize, s: usize) -> Self {
        Self {
            kernel: [k, k],
            stride: [s, s],
            padding: [0; 4],
        }
    }
    qat_core::by_value_setters! {
        /// Sets `[top, left, bottom, right]` padding.
        pub fn with_padding(padding: [usize; 4]) => padding;
    }
}

/// The operation of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FloatOp {
    /// Graph input with per-sample shape `[H, W, C]` or `[C]`.
    Input {
        /// Per-sample shape.
        shape: Vec<usize>,
    },
    /// Convolution (one input).
    Conv2d(Conv2d),
    /// Fully connected (one `[C]` input).
    Linear(Linear),
    /// Elementwise sum of two same-shaped inputs, then the activation.
    Add {
        /// Fused activation.
        activation: Activation,
    },
    /// Concatenation along channels (last axis) of inputs with the same leading dims.
    Concat,
    /// Average pooling (padding excluded from the count).
    AvgPool(Pool2d),
    /// Mean over H and W: `[H, W, C] → [C]`.
    GlobalAvgPool,
    /// Max pooling.
    MaxPool(Pool2d),
    /// `[H, W, C] → [H·W·C]` in NHWC order.
    Flatten,
    /// Graph output (dequantized to f32 by the integer model).
    Output,
}

impl FloatOp {
    /// A short name of the op kind for errors and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            FloatOp::Input { .. } => "Input",
            FloatOp::Conv2d(c) if c.groups > 1 && c.groups == c.weight_shape[0] => {
                "DepthwiseConv2d"
            }
            FloatOp::Conv2d(_) => "Conv2d",
            FloatOp::Linear(_) => "Linear",
            FloatOp::Add { .. } => "Add",
            FloatOp::Concat => "Concat",
            FloatOp::AvgPool(_) => "AvgPool",
            FloatOp::GlobalAvgPool => "GlobalAvgPool",
            FloatOp::MaxPool(_) => "MaxPool",
            FloatOp::Flatten => "Flatten",
            FloatOp::Output => "Output",
        }
    }

    /// Whether the node's output reuses its input's quantization parameters instead of its own
    /// observed range: max pool, flatten and output (values stay on the input grid), and average
    /// pools (TFLite's uint8 pools require equal params; the runtime then averages codes,
    /// `(Σq + n/2)/n`). `ExportOptions::avg_pool_own_params` overrides this for average pools
    /// (the runtime then averages and rescales with one rounding, `M' = S_in/(S_out·count)`).
    pub fn inherits_params(&self) -> bool {
        matches!(
            self,
            FloatOp::MaxPool(_)
                | FloatOp::AvgPool(_)
                | FloatOp::GlobalAvgPool
                | FloatOp::Flatten
                | FloatOp::Output
        )
    }
}

/// One node: an op, its inputs (earlier nodes) and the quantization of its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (used in errors, reports and as the runtime tensor name).
    #[serde(deserialize_with = "qat_int8_runtime::model::borrowed_string")]
    pub name: String,
    /// The operation.
    pub op: FloatOp,
    /// Input nodes.
    pub inputs: Vec<NodeId>,
    /// Quantization of the output activation.
    pub act: ActQuant,
}

/// A float network as a list of nodes in topological order. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatGraph {
    /// Model name (becomes `Int8Model::name`).
    #[serde(deserialize_with = "qat_int8_runtime::model::borrowed_string")]
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
}

impl FloatGraph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodes: Vec::new(),
        }
    }

    /// Appends a node and returns its id. Structure is checked later by [`Self::validate`].
    pub fn push(&mut self, name: impl Into<String>, op: FloatOp, inputs: Vec<NodeId>) -> NodeId {
        self.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
            act: ActQuant::default(),
        });
        NodeId(self.nodes.len() - 1)
    }

    /// Adds the graph input with per-sample shape `[H, W, C]` or `[C]`.
    pub fn input(&mut self, name: impl Into<String>, shape: &[usize]) -> NodeId {
        self.push(
            name,
            FloatOp::Input {
                shape: shape.to_vec(),
            },
            vec![],
        )
    }

    /// Adds a convolution.
    pub fn conv2d(&mut self, name: impl Into<String>, input: NodeId, conv: Conv2d) -> NodeId {
        self.push(name, FloatOp::Conv2d(conv), vec![input])
    }

    /// Adds a fully connected layer.
    pub fn linear(&mut self, name: impl Into<String>, input: NodeId, linear: Linear) -> NodeId {
        self.push(name, FloatOp::Linear(linear), vec![input])
    }

    /// Adds `act(a + b)`.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        a: NodeId,
        b: NodeId,
        activation: Activation,
    ) -> NodeId {
        self.push(name, FloatOp::Add { activation }, vec![a, b])
    }

    /// Adds a channel concatenation.
    pub fn concat(&mut self, name: impl Into<String>, inputs: &[NodeId]) -> NodeId {
        self.push(name, FloatOp::Concat, inputs.to_vec())
    }

    /// Adds an average pool.
    pub fn avg_pool(&mut self, name: impl Into<String>, input: NodeId, pool: Pool2d) -> NodeId {
        self.push(name, FloatOp::AvgPool(pool), vec![input])
    }

    /// Adds a max pool.
    pub fn max_pool(&mut self, name: impl Into<String>, input: NodeId, pool: Pool2d) -> NodeId {
        self.push(name, FloatOp::MaxPool(pool), vec![input])
    }

    /// Adds a global average pool `[H, W, C] → [C]`.
    pub fn global_avg_pool(&mut self, name: impl Into<String>, input: NodeId) -> NodeId {
        self.push(name, FloatOp::GlobalAvgPool, vec![input])
    }

    /// Adds a flatten `[H, W, C] → [H·W·C]` (NHWC order).
    pub fn flatten(&mut self, name: impl Into<String>, input: NodeId) -> NodeId {
        self.push(name, FloatOp::Flatten, vec![input])
    }

    /// Marks `input` as a graph output.
    pub fn output(&mut self, name: impl Into<String>, input: NodeId) -> NodeId {
        self.push(name, FloatOp::Output, vec![input])
    }

    /// The node `id`, or an error naming the missing id.
    pub fn node(&self, id: NodeId) -> Result<&Node, GraphError> {
        self.nodes
            .get(id.0)
            .ok_or(GraphError::NoSuchNode { id: id.0 })
    }

    /// Mutable access to node `id`.
    pub fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, GraphError> {
        self.nodes
            .get_mut(id.0)
            .ok_or(GraphError::NoSuchNode { id: id.0 })
    }

    /// The id of the node called `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(NodeId)
    }

    /// Sets the observed range of node `id`'s output.
    pub fn set_range(&mut self, id: NodeId, min: f32, max: f32) -> Result<(), GraphError> {
        self.node_mut(id)?.act.range = Some(Range { min, max });
        Ok(())
    }

    /// Sets the activation bit width of node `id`'s output.
    pub fn set_activation_bits(&mut self, id: NodeId, bits: u32) -> Result<(), GraphError> {
        self.node_mut(id)?.act.bits = bits;
        Ok(())
    }

    /// Sets the activation bit width of every node.
    pub fn set_all_activation_bits(&mut self, bits: u32) {
        for n in &mut self.nodes {
            n.act.bits = bits;
        }
    }

    /// Sets the weight quantization of every conv and linear layer.
    pub fn set_all_weight_quant(&mut self, wq: WeightQuant) {
        for n in &mut self.nodes {
            match &mut n.op {
                FloatOp::Conv2d(c) => c.weight_quant = wq,
                FloatOp::Linear(l) => l.weight_quant = wq,
                _ => {}
            }
        }
    }

    /// Removes every observed range (back to uncalibrated).
    pub fn clear_ranges(&mut self) {
        for n in &mut self.nodes {
            n.act.range = None;
        }
    }

    /// The input node (the single [`FloatOp::Input`]).
    pub fn input_id(&self) -> Result<NodeId, GraphError> {
        let mut it = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, FloatOp::Input { .. }));
        match (it.next(), it.next()) {
            (Some((i, _)), None) => Ok(NodeId(i)),
            (None, _) => Err(GraphError::InputCount { count: 0 }),
            (Some(_), Some(_)) => Err(GraphError::InputCount {
                count: self
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.op, FloatOp::Input { .. }))
                    .count(),
            }),
        }
    }

    /// The output nodes, in graph order.
    pub fn output_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, FloatOp::Output))
            .map(|(i, _)| NodeId(i))
            .collect()
    }

    /// Checks the structure (see [`crate::validate`]) and returns every node's per-sample output
    /// shape.
    pub fn validate(&self) -> Result<Vec<Vec<usize>>, GraphError> {
        crate::validate::infer_shapes(self)
    }
}
