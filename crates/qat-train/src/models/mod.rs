//! Model zoo built from the QAT layers: one definition, three uses.
//!
//! A model is a [`Net`]: a small graph of QAT layers ([`crate::layers`]) in topological order, built once
//! by a [`NetBuilder`]. The same `Net`
//! 1. trains in **float** mode (fake quant off, observers frozen, BN with batch statistics),
//! 2. trains in **QAT** mode (weights fake-quantized after BN folding, activations fake-quantized after the
//!    activation function and after every add — paper §3), the phases being driven by the
//!    [`crate::schedule::Schedule`] through [`PhaseControl`],
//! 3. converts to qat-export's [`qat_export::ir::FloatGraph`] ([`crate::convert`]): every node maps to one IR
//!    node, with weights, BN statistics, activation, observed range and bit widths read from the layers'
//!    export views.
//!
//! The zoo ([`zoo`]): LeNet-style (tests), MobileNet-v1 (width multiplier, input size, ReLU/ReLU6),
//! MobileNet-v2-style with inverted residuals (quantized adds), CIFAR ResNet-8/20 (6n+2 layers).
//!
//! ```
//! use qat_train::models::{self, ModelSpec};
//! use tch::{Device, Kind, Tensor};
//! let mut net = models::build(&ModelSpec::lenet(), Device::Cpu)?;
//! let y = net.forward_t(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)), true)?;
//! assert_eq!(y.size(), vec![2, 10]);
//! # Ok::<(), qat_train::models::ModelError>(())
//! ```

pub mod zoo;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

use crate::layers::{
    Activation, BnFoldMode, Conv2dConfig, ConvBnConfig, LayerError, LayerExport, OutputExport,
    OutputQuantizer, QatAdd, QatAvgPool2d, QatConcat, QatControl, QatConv2d, QatConvBn2d,
    QatGlobalAvgPool, QatLayer, QatLinear, QatMaxPool2d, QatModule, QuantConfig,
};
use crate::schedule::{PhaseControl, QuantFlags};

pub use zoo::build;

/// Errors of model construction and forward passes.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A layer failed (the error names the layer).
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The architecture is inconsistent (shapes, unknown node, bad spec).
    #[error("model {model}: {what}")]
    Build {
        /// Model name.
        model: String,
        /// What is wrong.
        what: String,
    },
    /// A torch op of the graph glue failed.
    #[error("model: {0}")]
    Torch(#[from] tch::TchError),
}

/// Architectures of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Architecture {
    /// Two 5×5 conv+BN+act blocks with max pooling, flatten, two linear layers (LeCun et al. 1998, with BN).
    LeNet,
    /// MobileNet-v1 (Howard et al. 2017): 3×3 stem then depthwise-separable blocks, global average pooling,
    /// linear classifier. `width` scales every channel count (α); `blocks` limits the number of
    /// depthwise-separable blocks (13 in the paper) for small inputs.
    MobileNetV1 {
        /// Width multiplier α.
        width: f64,
        /// Depthwise-separable blocks used (1..=13), from the start of the paper's list.
        blocks: usize,
    },
    /// MobileNet-v2-style (Sandler et al. 2018): inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1
    /// linear projection) with a quantized add when the shapes match.
    MobileNetV2 {
        /// Width multiplier α.
        width: f64,
        /// Expansion factor t.
        expansion: usize,
    },
    /// CIFAR ResNet (He et al. 2016, §4.2): `depth = 6n + 2` (8, 20, …), three stages of 16/32/64 channels,
    /// basic blocks with quantized adds, 1×1 conv+BN projection shortcuts on down-sampling.
    ResNet {
        /// 6n + 2.
        depth: usize,
    },
}

/// Everything that defines a model (serde, recorded in reports and checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Architecture,
    /// Input `[C, H, W]`.
    pub input: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Activation of the hidden layers (ReLU or ReLU6).
    pub activation: Activation,
    /// Quantization of every layer (bits, schemes, observers).
    pub quant: QuantConfig,
    /// Conv+BN folding variant.
    pub bn_fold: BnFoldMode,
    /// Whitepaper fold: gradient through the batch statistics ([`ConvBnConfig::stats_grad`];
    /// default `false`, TF's fold).
    #[serde(default)]
    pub bn_stats_grad: bool,
}

impl ModelSpec {
    /// LeNet for 28×28×1 inputs, 10 classes, ReLU.
    pub fn lenet() -> Self {
        Self {
            arch: Architecture::LeNet,
            input: [1, 28, 28],
            num_classes: 10,
            activation: Activation::Relu,
            quant: QuantConfig::default(),
            bn_fold: BnFoldMode::Whitepaper,
            bn_stats_grad: false,
        }
    }

    /// MobileNet-v1 for MNIST (28×28×1): α = 0.25, the first 5 blocks, ReLU6.
    pub fn mobilenet_v1_mnist() -> Self {
        Self {
            arch: Architecture::MobileNetV1 {
                width: 0.25,
                blocks: 5,
            },
            activation: Activation::Relu6,
            ..Self::lenet()
        }
    }

    /// MobileNet-v2-style for 32×32×3, α = 0.5, t = 6, ReLU6.
    pub fn mobilenet_v2_cifar() -> Self {
        Self {
            arch: Architecture::MobileNetV2 {
                width: 0.5,
                expansion: 6,
            },
            input: [3, 32, 32],
            activation: Activation::Relu6,
            ..Self::lenet()
        }
    }

    /// ResNet-`depth` for CIFAR-10 (32×32×3), ReLU.
    pub fn resnet_cifar(depth: usize) -> Self {
        Self {
            arch: Architecture::ResNet { depth },
            input: [3, 32, 32],
            ..Self::lenet()
        }
    }

    /// A short name, e.g. `mobilenet_v1_a0.25_b5_28x28x1`.
    pub fn name(&self) -> String {
        let [c, h, w] = self.input;
        let arch = match self.arch {
            Architecture::LeNet => "lenet".to_string(),
            Architecture::MobileNetV1 { width, blocks } => {
                format!("mobilenet_v1_a{width}_b{blocks}")
            }
            Architecture::MobileNetV2 { width, expansion } => {
                format!("mobilenet_v2_a{width}_t{expansion}")
            }
            Architecture::ResNet { depth } => format!("resnet{depth}"),
        };
        format!("{arch}_{h}x{w}x{c}")
    }
}

/// The state of one activation observer (informational; the tensors live in the VarStore).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObserverSnapshot {
    /// Observer name (VarStore path).
    pub name: String,
    /// Observed `(min, max)`; `None` while uncalibrated.
    pub range: Option<(f32, f32)>,
    /// Whether the observer is frozen.
    pub frozen: bool,
}

/// Index of a node of a [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeRef(pub usize);

/// The operation of a node.
#[derive(Debug)]
pub enum NodeOp {
    /// The model input, fake-quantized by its own quantizer (its range is the input range at export).
    Input(OutputQuantizer),
    /// Conv + BN (+ activation).
    ConvBn(QatConvBn2d),
    /// Conv (incl. depthwise) with bias.
    Conv(QatConv2d),
    /// Fully connected.
    Linear(QatLinear),
    /// Elementwise add of two nodes, then the activation.
    Add(QatAdd),
    /// Channel concatenation.
    Concat(QatConcat),
    /// Average pooling.
    AvgPool(QatAvgPool2d),
    /// Global average pooling `[N, C, H, W] → [N, C]`.
    GlobalAvgPool(QatGlobalAvgPool),
    /// Max pooling.
    MaxPool(QatMaxPool2d),
    /// `[N, C, H, W] → [N, C·H·W]` (NCHW order; conversion permutes the next linear layer for NHWC).
    Flatten,
}

impl NodeOp {
    /// The layer behind the node (`None` for flatten).
    pub fn layer(&self) -> Option<&dyn QatLayer> {
        Some(match self {
            NodeOp::Input(l) => l,
            NodeOp::ConvBn(l) => l,
            NodeOp::Conv(l) => l,
            NodeOp::Linear(l) => l,
            NodeOp::Add(l) => l,
            NodeOp::Concat(l) => l,
            NodeOp::AvgPool(l) => l,
            NodeOp::GlobalAvgPool(l) => l,
            NodeOp::MaxPool(l) => l,
            NodeOp::Flatten => return None,
        })
    }

    fn layer_mut(&mut self) -> Option<&mut dyn QatLayer> {
        Some(match self {
            NodeOp::Input(l) => l,
            NodeOp::ConvBn(l) => l,
            NodeOp::Conv(l) => l,
            NodeOp::Linear(l) => l,
            NodeOp::Add(l) => l,
            NodeOp::Concat(l) => l,
            NodeOp::AvgPool(l) => l,
            NodeOp::GlobalAvgPool(l) => l,
            NodeOp::MaxPool(l) => l,
            NodeOp::Flatten => return None,
        })
    }

    fn module_mut(&mut self) -> Option<&mut dyn QatModule> {
        Some(match self {
            NodeOp::Input(l) => l,
            NodeOp::ConvBn(l) => l,
            NodeOp::Conv(l) => l,
            NodeOp::Linear(l) => l,
            NodeOp::AvgPool(l) => l,
            NodeOp::GlobalAvgPool(l) => l,
            NodeOp::MaxPool(l) => l,
            NodeOp::Add(_) | NodeOp::Concat(_) | NodeOp::Flatten => return None,
        })
    }
}

/// One node: name, op, inputs and its per-sample output shape (`[C, H, W]` or `[F]`).
#[derive(Debug)]
pub struct Node {
    /// Unique name (the layer's VarStore path).
    pub name: String,
    /// The operation.
    pub op: NodeOp,
    /// Input nodes (earlier in the list).
    pub inputs: Vec<NodeRef>,
    /// Per-sample output shape in the tch layout: `[C, H, W]` or `[F]`.
    pub shape: Vec<usize>,
}

/// A QAT network: the VarStore holding its variables and the node list. Built by [`NetBuilder`].
#[derive(Debug)]
pub struct Net {
    name: String,
    spec: Option<ModelSpec>,
    vs: nn::VarStore,
    nodes: Vec<Node>,
    output: NodeRef,
    /// For each node, the last node index that reads it (to free activations early).
    last_use: Vec<usize>,
    flags: Option<QuantFlags>,
}

impl Net {
    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was built from (zoo models).
    pub fn spec(&self) -> Option<&ModelSpec> {
        self.spec.as_ref()
    }

    /// The VarStore with every variable (weights, BN, observers).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The device of the variables.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The output node.
    pub fn output(&self) -> NodeRef {
        self.output
    }

    /// Input `[C, H, W]`.
    pub fn input_chw(&self) -> [usize; 3] {
        let s = &self.nodes[0].shape;
        [s[0], s[1], s[2]]
    }

    /// Number of classes (output features).
    pub fn num_classes(&self) -> usize {
        self.nodes[self.output.0].shape.iter().product()
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel())
            .sum()
    }

    /// The flags last applied by the schedule (`None`: layer defaults).
    pub fn flags(&self) -> Option<QuantFlags> {
        self.flags
    }

    /// Forward pass of NCHW `x`; `train` selects batch statistics and observer updates.
    pub fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut values = self.forward_nodes(x, train, false)?;
        values
            .get_mut(self.output.0)
            .and_then(Option::take)
            .ok_or_else(|| ModelError::Build {
                model: self.name.clone(),
                what: "output not computed".into(),
            })
    }

    /// Forward pass that keeps every node's output (index = node index, in [`Net::nodes`] order; NCHW
    /// or `[N, F]`): what a researcher inspects to see where a quantized model departs from its float
    /// twin or its integer export.
    ///
    /// ```
    /// use qat_train::models::{self, ModelSpec};
    /// use tch::{Device, Kind, Tensor};
    /// let mut net = models::build(&ModelSpec::lenet(), Device::Cpu)?;
    /// let x = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    /// let all = net.forward_all_t(&x, false)?;
    /// assert_eq!(all.len(), net.nodes().len());
    /// assert_eq!(all[net.output().0].size(), vec![2, 10]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forward_all_t(&mut self, x: &Tensor, train: bool) -> Result<Vec<Tensor>, ModelError> {
        let values = self.forward_nodes(x, train, true)?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| ModelError::Build {
                    model: self.name.clone(),
                    what: format!("node {i} not computed"),
                })
            })
            .collect()
    }

    fn forward_nodes(
        &mut self,
        x: &Tensor,
        train: bool,
        keep_all: bool,
    ) -> Result<Vec<Option<Tensor>>, ModelError> {
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let get = |values: &[Option<Tensor>], r: NodeRef| -> Result<Tensor, ModelError> {
                values
                    .get(r.0)
                    .and_then(|v| v.as_ref())
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| ModelError::Build {
                        model: String::new(),
                        what: format!(
                            "node {} reads node {} before it is computed or after it is freed",
                            i, r.0
                        ),
                    })
            };
            let y = if i == 0 {
                match &mut node.op {
                    NodeOp::Input(q) => q.forward_t(x, train)?,
                    _ => x.shallow_clone(),
                }
            } else {
                match &mut node.op {
                    NodeOp::Add(add) => {
                        let (a, b) = (get(&values, node.inputs[0])?, get(&values, node.inputs[1])?);
                        add.forward_t(&a, &b, train)?
                    }
                    NodeOp::Concat(cat) => {
                        let xs: Vec<Tensor> = node
                            .inputs
                            .iter()
                            .map(|&r| get(&values, r))
                            .collect::<Result<_, _>>()?;
                        let refs: Vec<&Tensor> = xs.iter().collect();
                        cat.forward_t(&refs, train)?
                    }
                    NodeOp::Flatten => get(&values, node.inputs[0])?.f_flatten(1, -1)?,
                    op => {
                        let a = get(&values, node.inputs[0])?;
                        match op.module_mut() {
                            Some(m) => m.forward_t(&a, train)?,
                            None => unreachable_op(&self.name, i)?,
                        }
                    }
                }
            };
            values.push(Some(y));
            // Free inputs that no later node reads.
            if !keep_all {
                for r in self.nodes[i].inputs.clone() {
                    if self.last_use[r.0] == i && r != self.output {
                        values[r.0] = None;
                    }
                }
            }
        }
        Ok(values)
    }

    /// Sends a switch to every layer. Freezing the observers also hands every layer the scale of the
    /// grid its input lies on ([`crate::layers::QatLayer::set_input_scale`]), so that from then on biases are
    /// fake-quantized on the integer model's int32 grid `S_in·S_w`; unfreezing withdraws it.
    pub fn control(&mut self, c: QatControl) {
        for n in &mut self.nodes {
            if let Some(l) = n.op.layer_mut() {
                l.control(c);
            }
        }
        if let QatControl::FreezeObservers(frozen) = c {
            self.refresh_input_scales(frozen);
        }
    }

    /// The scale of each node's output grid: its own quantizer's (when enabled and calibrated), or
    /// its input's for nodes that keep their input's grid (max pool, flatten).
    fn output_grid_scales(&self) -> Vec<Option<f32>> {
        let exports = match self.export_layers() {
            Ok(e) => e,
            Err(_) => return vec![None; self.nodes.len()],
        };
        let mut grid: Vec<Option<f32>> = Vec::with_capacity(self.nodes.len());
        for (node, e) in self.nodes.iter().zip(exports) {
            let g = match e.and_then(output_export) {
                Some(o) if o.enabled => o.qparams.map(|p| p.scale()),
                Some(_) => None,
                None => node.inputs.first().and_then(|r| grid[r.0]),
            };
            grid.push(g);
        }
        grid
    }

    fn refresh_input_scales(&mut self, frozen: bool) {
        let grid = if frozen {
            self.output_grid_scales()
        } else {
            vec![None; self.nodes.len()]
        };
        for n in &mut self.nodes {
            let s_in = n.inputs.first().and_then(|r| grid[r.0]);
            if let Some(l) = n.op.layer_mut() {
                l.set_input_scale(s_in);
            }
        }
    }

    /// The export views of every node (in node order; `None` for flatten).
    pub fn export_layers(&self) -> Result<Vec<Option<LayerExport>>, ModelError> {
        self.nodes
            .iter()
            .map(|n| {
                n.op.layer()
                    .map(|l| l.export())
                    .transpose()
                    .map_err(ModelError::from)
            })
            .collect()
    }

    /// `(observer name, observed range, frozen)` of every output quantizer (informational; checkpoints record it).
    pub fn observer_snapshot(&self) -> Vec<ObserverSnapshot> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let Some(Ok(e)) = n.op.layer().map(|l| l.export()) else {
                continue;
            };
            let Some(o) = output_export(e) else {
                continue;
            };
            out.push(ObserverSnapshot {
                name: o.name,
                range: o.range,
                frozen: o.observer_frozen,
            });
        }
        out
    }
}

/// A layer's own output quantizer (`None` for pools that keep their input's grid).
fn output_export(e: LayerExport) -> Option<OutputExport> {
    match e {
        LayerExport::Quantize(o) => Some(o),
        LayerExport::Conv(c) => Some(c.output),
        LayerExport::Linear(l) => Some(l.output),
        LayerExport::Add(m) | LayerExport::Concat(m) => Some(m.output),
        LayerExport::Pool(p) => p.output,
    }
}

fn unreachable_op(model: &str, i: usize) -> Result<Tensor, ModelError> {
    Err(ModelError::Build {
        model: model.to_string(),
        what: format!("node {i} has no single-input forward"),
    })
}

impl PhaseControl for Net {
    /// Maps the schedule's flags onto the layers' switches. The layers have one fake-quant switch for weights
    /// and activations together, so [`crate::schedule::Phase::QatWarmup`] (activations not yet quantized)
    /// runs with both off and the observers collecting — TF's `quant_delay` behaviour.
    fn apply_flags(&mut self, f: QuantFlags) {
        self.control(QatControl::FakeQuant(
            f.fake_quant_weights && f.fake_quant_activations,
        ));
        self.control(QatControl::FreezeObservers(!f.observe));
        self.control(QatControl::Calibrate(f.calibrate));
        self.control(QatControl::FreezeBn(f.bn_frozen));
        self.flags = Some(f);
    }

    fn uncalibrated(&self) -> Vec<String> {
        self.observer_snapshot()
            .into_iter()
            .filter(|o| o.range.is_none())
            .map(|o| o.name)
            .collect()
    }
}

/// Builds a [`Net`] node by node, tracking shapes. Every layer method takes the input node and returns the
/// new node.
#[derive(Debug)]
pub struct NetBuilder {
    name: String,
    vs: nn::VarStore,
    nodes: Vec<Node>,
    quant: QuantConfig,
    fold: BnFoldMode,
    stats_grad: bool,
}

impl NetBuilder {
    /// A builder for a model called `name` on `device` whose input is `[C, H, W]`. The input gets its own
    /// quantizer (node 0, named `input`).
    pub fn new(
        name: impl Into<String>,
        device: Device,
        input_chw: [usize; 3],
        quant: QuantConfig,
    ) -> Result<Self, ModelError> {
        let vs = nn::VarStore::new(device);
        let q = OutputQuantizer::new(&(vs.root() / "input"), &quant)?;
        let nodes = vec![Node {
            name: "input".into(),
            op: NodeOp::Input(q),
            inputs: vec![],
            shape: input_chw.to_vec(),
        }];
        Ok(Self {
            name: name.into(),
            vs,
            nodes,
            quant,
            fold: BnFoldMode::Whitepaper,
            stats_grad: false,
        })
    }

    /// Sets the conv+BN folding variant of the layers created from now on.
    pub fn fold(mut self, fold: BnFoldMode) -> Self {
        self.fold = fold;
        self
    }

    /// Sets [`ConvBnConfig::stats_grad`] of the conv+BN layers created from now on.
    pub fn stats_grad(mut self, on: bool) -> Self {
        self.stats_grad = on;
        self
    }

    /// The input node.
    pub fn input(&self) -> NodeRef {
        NodeRef(0)
    }

    /// Per-sample shape of a node.
    pub fn shape(&self, r: NodeRef) -> &[usize] {
        &self.nodes[r.0].shape
    }

    /// The VarStore path of a dotted node name (`stage1.block1.conv1` → `root / "stage1" / "block1" / "conv1"`).
    fn path(&self, name: &str) -> nn::Path<'_> {
        name.split('.').fold(self.vs.root(), |p, s| p / s)
    }

    fn err(&self, what: String) -> ModelError {
        ModelError::Build {
            model: self.name.clone(),
            what,
        }
    }

    fn chw(&self, r: NodeRef, layer: &str) -> Result<[usize; 3], ModelError> {
        match self.nodes.get(r.0).map(|n| n.shape.as_slice()) {
            Some(&[c, h, w]) => Ok([c, h, w]),
            other => Err(self.err(format!(
                "{layer}: input {} has shape {other:?}, expected [C, H, W]",
                r.0
            ))),
        }
    }

    fn unique(&self, name: &str) -> Result<(), ModelError> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(self.err(format!("invalid node name {name:?}")));
        }
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(self.err(format!("duplicate node name {name}")));
        }
        Ok(())
    }

    fn push(&mut self, name: &str, op: NodeOp, inputs: Vec<NodeRef>, shape: Vec<usize>) -> NodeRef {
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            shape,
        });
        NodeRef(self.nodes.len() - 1)
    }

    fn conv_out(
        &self,
        cfg: &Conv2dConfig,
        [_, h, w]: [usize; 3],
        name: &str,
    ) -> Result<Vec<usize>, ModelError> {
        let dim = |x: usize, i: usize| -> Option<usize> {
            let eff = cfg.dilation[i] * (cfg.kernel[i] - 1) + 1;
            let padded = x as i64 + 2 * cfg.padding[i];
            (padded >= eff).then(|| ((padded - eff) / cfg.stride[i] + 1) as usize)
        };
        match (dim(h, 0), dim(w, 1)) {
            (Some(oh), Some(ow)) => Ok(vec![cfg.out_channels as usize, oh, ow]),
            _ => Err(self.err(format!(
                "{name}: kernel larger than the padded {h}x{w} input"
            ))),
        }
    }

    /// The default conv geometry `k×k`, stride `s`, padding `k/2`, with this builder's quant config.
    pub fn conv_cfg(
        &self,
        cin: usize,
        cout: usize,
        k: i64,
        s: i64,
        act: Activation,
    ) -> Conv2dConfig {
        Conv2dConfig::new(cin as i64, cout as i64, k)
            .stride(s)
            .padding(k / 2)
            .activation(act)
            .quant(self.quant)
    }

    /// Conv + BN (+ activation) `k×k`, stride `s`, "same" padding `k/2`.
    pub fn conv_bn(
        &mut self,
        name: &str,
        x: NodeRef,
        cout: usize,
        k: i64,
        s: i64,
        act: Activation,
    ) -> Result<NodeRef, ModelError> {
        self.conv_bn_grouped(name, x, cout, [k, s], 1, act)
    }

    /// Depthwise conv + BN (+ activation) `k×k`, stride `s`, "same" padding (`groups` = channels).
    pub fn depthwise_bn(
        &mut self,
        name: &str,
        x: NodeRef,
        k: i64,
        s: i64,
        act: Activation,
    ) -> Result<NodeRef, ModelError> {
        let c = self.chw(x, name)?[0];
        self.conv_bn_grouped(name, x, c, [k, s], c, act)
    }

    fn conv_bn_grouped(
        &mut self,
        name: &str,
        x: NodeRef,
        cout: usize,
        [k, s]: [i64; 2],
        groups: usize,
        act: Activation,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let chw = self.chw(x, name)?;
        let mut conv = self.conv_cfg(chw[0], cout, k, s, act);
        conv.groups = groups as i64;
        let shape = self.conv_out(&conv, chw, name)?;
        let mut cfg = ConvBnConfig::new(conv).fold(self.fold);
        cfg.stats_grad = self.stats_grad;
        let layer = QatConvBn2d::new(&self.path(name), cfg)?;
        Ok(self.push(name, NodeOp::ConvBn(layer), vec![x], shape))
    }

    /// Conv with bias and an explicit [`Conv2dConfig`] (its `in_channels` must match the input).
    pub fn conv(
        &mut self,
        name: &str,
        x: NodeRef,
        cfg: Conv2dConfig,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let chw = self.chw(x, name)?;
        if cfg.in_channels as usize != chw[0] {
            return Err(self.err(format!(
                "{name}: conv expects {} channels, input has {}",
                cfg.in_channels, chw[0]
            )));
        }
        let shape = self.conv_out(&cfg, chw, name)?;
        let layer = QatConv2d::new(&self.path(name), cfg)?;
        Ok(self.push(name, NodeOp::Conv(layer), vec![x], shape))
    }

    /// Fully connected layer on a `[F]` node.
    pub fn linear(
        &mut self,
        name: &str,
        x: NodeRef,
        out: usize,
        act: Activation,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let f = match self.nodes.get(x.0).map(|n| n.shape.as_slice()) {
            Some(&[f]) => f,
            other => {
                return Err(self.err(format!(
                    "{name}: linear input has shape {other:?}, expected [F]"
                )));
            }
        };
        let layer = QatLinear::new(&self.path(name), f as i64, out as i64, act, self.quant)?;
        Ok(self.push(name, NodeOp::Linear(layer), vec![x], vec![out]))
    }

    /// `act(a + b)` with its own output range (paper §3: quantize after the bypass add).
    pub fn add(
        &mut self,
        name: &str,
        a: NodeRef,
        b: NodeRef,
        act: Activation,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa != sb {
            return Err(self.err(format!("{name}: add of shapes {sa:?} and {sb:?}")));
        }
        let layer = QatAdd::new(&self.path(name), act, self.quant)?;
        Ok(self.push(name, NodeOp::Add(layer), vec![a, b], sa))
    }

    /// Channel concatenation of `[C_i, H, W]` nodes.
    pub fn concat(&mut self, name: &str, xs: &[NodeRef]) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let shapes: Vec<[usize; 3]> = xs
            .iter()
            .map(|&r| self.chw(r, name))
            .collect::<Result<_, _>>()?;
        let Some(first) = shapes.first() else {
            return Err(self.err(format!("{name}: concat of nothing")));
        };
        if shapes.iter().any(|s| s[1..] != first[1..]) {
            return Err(self.err(format!("{name}: concat of shapes {shapes:?}")));
        }
        let c = shapes.iter().map(|s| s[0]).sum();
        let layer = QatConcat::new(&self.path(name), xs.len(), self.quant)?;
        Ok(self.push(
            name,
            NodeOp::Concat(layer),
            xs.to_vec(),
            vec![c, first[1], first[2]],
        ))
    }

    /// Max pooling `k×k`, stride `s`, no padding.
    pub fn max_pool(
        &mut self,
        name: &str,
        x: NodeRef,
        k: usize,
        s: usize,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, h, w] = self.chw(x, name)?;
        if h < k || w < k || s == 0 {
            return Err(self.err(format!("{name}: max pool {k}/{s} on {h}x{w}")));
        }
        let layer = QatMaxPool2d::new(&self.path(name), k as i64, s as i64, 0)?;
        Ok(self.push(
            name,
            NodeOp::MaxPool(layer),
            vec![x],
            vec![c, (h - k) / s + 1, (w - k) / s + 1],
        ))
    }

    /// Average pooling `k×k`, stride `s`, no padding.
    pub fn avg_pool(
        &mut self,
        name: &str,
        x: NodeRef,
        k: usize,
        s: usize,
    ) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, h, w] = self.chw(x, name)?;
        if h < k || w < k || s == 0 {
            return Err(self.err(format!("{name}: avg pool {k}/{s} on {h}x{w}")));
        }
        let layer = QatAvgPool2d::new(&self.path(name), k as i64, s as i64, 0, self.quant)?;
        Ok(self.push(
            name,
            NodeOp::AvgPool(layer),
            vec![x],
            vec![c, (h - k) / s + 1, (w - k) / s + 1],
        ))
    }

    /// Global average pooling `[C, H, W] → [C]`.
    pub fn global_avg_pool(&mut self, name: &str, x: NodeRef) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, _, _] = self.chw(x, name)?;
        let layer = QatGlobalAvgPool::new(&self.path(name), self.quant)?;
        Ok(self.push(name, NodeOp::GlobalAvgPool(layer), vec![x], vec![c]))
    }

    /// Flatten `[C, H, W] → [C·H·W]` (NCHW order).
    pub fn flatten(&mut self, name: &str, x: NodeRef) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, h, w] = self.chw(x, name)?;
        Ok(self.push(name, NodeOp::Flatten, vec![x], vec![c * h * w]))
    }

    /// Finishes the model with `output` as its logits.
    pub fn finish(self, output: NodeRef, spec: Option<ModelSpec>) -> Result<Net, ModelError> {
        if output.0 >= self.nodes.len() {
            return Err(self.err(format!("output node {} does not exist", output.0)));
        }
        let mut last_use = vec![0; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for r in &n.inputs {
                if r.0 >= i {
                    return Err(self.err(format!("node {} reads later node {}", n.name, r.0)));
                }
                last_use[r.0] = i;
            }
        }
        let mut net = Net {
            name: self.name,
            spec,
            vs: self.vs,
            nodes: self.nodes,
            output,
            last_use,
            flags: None,
        };
        // Float mode until a schedule says otherwise.
        net.apply_flags(crate::schedule::Phase::Float.flags());
        Ok(net)
    }
}
