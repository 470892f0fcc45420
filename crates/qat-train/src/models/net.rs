//! [`Net`]: a graph of QAT layers in topological order, its forward pass and its whole-model
//! control ([`PhaseControl`]).

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

use super::{ModelError, ModelErrorKind, ModelSpec};
use crate::layers::{
    LayerError, LayerExport, QatAdd, QatAvgPool2d, QatConcat, QatControl, QatConv2d, QatConvBn2d,
    QatGlobalAvgPool, QatLayer, QatLinear, QatMaxPool2d, QatModule, QatQuantize,
};
use crate::schedule::{PhaseControl, QuantFlags};

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
    Input(QatQuantize),
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

/// `Some(body)` with `l` bound to the layer of every node op but flatten (`None`).
macro_rules! with_layer {
    ($op:expr, $l:ident => $body:expr) => {
        match $op {
            NodeOp::Input($l) => Some($body),
            NodeOp::ConvBn($l) => Some($body),
            NodeOp::Conv($l) => Some($body),
            NodeOp::Linear($l) => Some($body),
            NodeOp::Add($l) => Some($body),
            NodeOp::Concat($l) => Some($body),
            NodeOp::AvgPool($l) => Some($body),
            NodeOp::GlobalAvgPool($l) => Some($body),
            NodeOp::MaxPool($l) => Some($body),
            NodeOp::Flatten => None,
        }
    };
}

impl NodeOp {
    /// The layer behind the node (`None` for flatten).
    pub fn layer(&self) -> Option<&dyn QatLayer> {
        with_layer!(self, l => l as &dyn QatLayer)
    }

    fn layer_mut(&mut self) -> Option<&mut dyn QatLayer> {
        with_layer!(self, l => l as &mut dyn QatLayer)
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

/// A QAT network: the VarStore holding its variables and the node list. Built by
/// [`super::NetBuilder`]; driven through the phases of training by [`PhaseControl`], its one
/// whole-model control.
#[derive(Debug)]
pub struct Net {
    pub(super) name: String,
    pub(super) spec: Option<ModelSpec>,
    pub(super) vs: nn::VarStore,
    pub(super) nodes: Vec<Node>,
    pub(super) output: NodeRef,
    /// For each node, the last node index that reads it (to free activations early).
    pub(super) last_use: Vec<usize>,
    /// The flags last applied (`None` until the builder applies float mode).
    pub(super) flags: Option<QuantFlags>,
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

    /// The flags last applied ([`PhaseControl::apply_flags`]; float mode after building).
    pub fn flags(&self) -> Option<QuantFlags> {
        self.flags
    }

    fn err(&self, kind: ModelErrorKind) -> ModelError {
        ModelError::new(&self.name, kind)
    }

    fn not_computed(&self, node: usize) -> ModelError {
        self.err(ModelErrorKind::Forward {
            node: self.nodes[node].name.clone(),
            what: "not computed".into(),
        })
    }

    /// Forward pass of NCHW `x`; `train` selects batch statistics and observer updates.
    pub fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut values = self.forward_nodes(x, train, false)?;
        let out = self.output.0;
        values
            .get_mut(out)
            .and_then(Option::take)
            .ok_or_else(|| self.not_computed(out))
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
            .map(|(i, v)| v.ok_or_else(|| self.not_computed(i)))
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
            let y = forward_node(&self.name, &mut self.nodes[i], i, &values, x, train)?;
            values.push(Some(y));
            // Free inputs that no later node reads.
            if !keep_all {
                for r in &self.nodes[i].inputs {
                    if self.last_use[r.0] == i && *r != self.output {
                        values[r.0] = None;
                    }
                }
            }
        }
        Ok(values)
    }

    /// Sends a switch to every layer. Freezing the observers also hands every layer the scale of the
    /// grid its input lies on ([`QatLayer::set_input_scale`]), so that from then on biases are
    /// fake-quantized on the integer model's int32 grid `S_in·S_w`; unfreezing withdraws it.
    fn control(&mut self, c: QatControl) -> Result<(), ModelError> {
        for n in &mut self.nodes {
            if let Some(l) = n.op.layer_mut() {
                l.control(c);
            }
        }
        if let QatControl::FreezeObservers(frozen) = c {
            self.refresh_input_scales(frozen)?;
        }
        Ok(())
    }

    /// The parameters of each node's output grid: its own quantizer's (when enabled and
    /// calibrated), or its input's for nodes that keep their input's grid (max pool, flatten).
    fn output_grid_params(&self) -> Result<Vec<Option<qat_core::QuantParams>>, ModelError> {
        let mut grid: Vec<Option<qat_core::QuantParams>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let g = match self.output_export(node)? {
                Some(o) if o.enabled => o.qparams,
                Some(_) => None,
                None => node.inputs.first().and_then(|r| grid[r.0]),
            };
            grid.push(g);
        }
        Ok(grid)
    }

    /// The export view of a node's own output quantizer (`None`: it keeps its input's grid).
    fn output_export(
        &self,
        node: &Node,
    ) -> Result<Option<crate::layers::OutputExport>, ModelError> {
        match node.op.layer() {
            Some(l) => l.output_export().map_err(|e| self.layer_err(e)),
            None => Ok(None),
        }
    }

    fn layer_err(&self, e: LayerError) -> ModelError {
        ModelError::layer(&self.name, e)
    }

    fn refresh_input_scales(&mut self, frozen: bool) -> Result<(), ModelError> {
        let grid = if frozen {
            self.output_grid_params()?
        } else {
            vec![None; self.nodes.len()]
        };
        for n in &mut self.nodes {
            let p_in = n.inputs.first().and_then(|r| grid[r.0]);
            if let Some(l) = n.op.layer_mut() {
                l.set_input_params(p_in);
            }
        }
        Ok(())
    }

    /// The export views of every node (in node order; `None` for flatten).
    pub fn export_layers(&self) -> Result<Vec<Option<LayerExport>>, ModelError> {
        self.nodes
            .iter()
            .map(|n| {
                n.op.layer()
                    .map(|l| l.export())
                    .transpose()
                    .map_err(|e| self.layer_err(e))
            })
            .collect()
    }

    /// `(observer name, observed range, frozen)` of every output quantizer (informational;
    /// checkpoints record it).
    pub fn observer_snapshot(&self) -> Result<Vec<ObserverSnapshot>, ModelError> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let Some(o) = self.output_export(n)? {
                out.push(ObserverSnapshot {
                    name: o.name,
                    range: o.range,
                    frozen: o.observer_frozen,
                });
            }
        }
        Ok(out)
    }
}

/// The output of node `i` given the outputs of the nodes before it (`None`: freed).
fn forward_node(
    model: &str,
    node: &mut Node,
    i: usize,
    values: &[Option<Tensor>],
    x: &Tensor,
    train: bool,
) -> Result<Tensor, ModelError> {
    let layer = |e: LayerError| ModelError::layer(model, e);
    let get = |r: NodeRef| -> Result<Tensor, ModelError> {
        values
            .get(r.0)
            .and_then(Option::as_ref)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| {
                ModelError::new(
                    model,
                    ModelErrorKind::Forward {
                        node: node.name.clone(),
                        what: format!(
                            "reads node {} before it is computed or after it is freed",
                            r.0
                        ),
                    },
                )
            })
    };
    if i == 0 {
        return match &mut node.op {
            NodeOp::Input(q) => q.forward_t(x, train).map_err(layer),
            _ => Ok(x.shallow_clone()),
        };
    }
    match &mut node.op {
        NodeOp::Add(add) => {
            let (a, b) = (get(node.inputs[0])?, get(node.inputs[1])?);
            add.forward_t(&a, &b, train).map_err(layer)
        }
        NodeOp::Concat(cat) => {
            let xs: Vec<Tensor> = node
                .inputs
                .iter()
                .map(|&r| get(r))
                .collect::<Result<_, _>>()?;
            let refs: Vec<&Tensor> = xs.iter().collect();
            cat.forward_t(&refs, train).map_err(layer)
        }
        NodeOp::Flatten => get(node.inputs[0])?.f_flatten(1, -1).map_err(|source| {
            ModelError::new(
                model,
                ModelErrorKind::Torch {
                    node: node.name.clone(),
                    source,
                },
            )
        }),
        op => {
            let a = get(node.inputs[0])?;
            match op.module_mut() {
                Some(m) => m.forward_t(&a, train).map_err(layer),
                None => Err(ModelError::new(
                    model,
                    ModelErrorKind::Forward {
                        node: node.name.clone(),
                        what: "has no single-input forward".into(),
                    },
                )),
            }
        }
    }
}

impl PhaseControl for Net {
    /// Sends the schedule's flags to every layer, each as it is: weight and activation fake quant,
    /// observers frozen or not, calibration, BN frozen.
    fn apply_flags(&mut self, f: QuantFlags) -> Result<(), ModelError> {
        self.control(QatControl::FakeQuant {
            weights: f.fake_quant_weights,
            activations: f.fake_quant_activations,
        })?;
        self.control(QatControl::FreezeObservers(!f.observe))?;
        self.control(QatControl::Calibrate(f.calibrate))?;
        self.control(QatControl::FreezeBn(f.bn_frozen))?;
        self.flags = Some(f);
        Ok(())
    }

    fn uncalibrated(&self) -> Result<Vec<String>, ModelError> {
        Ok(self
            .observer_snapshot()?
            .into_iter()
            .filter(|o| o.range.is_none())
            .map(|o| o.name)
            .collect())
    }
}
