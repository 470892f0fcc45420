//! [`NetBuilder`]: a [`Net`] built node by node, with shapes tracked and checked.

use tch::{Device, nn};

use super::{LayerBitsOverride, ModelError, ModelErrorKind, ModelSpec, Net, Node, NodeOp, NodeRef};
use crate::layers::{
    Activation, BnFoldMode, Conv2dConfig, ConvBnConfig, LayerError, LinearConfig, Pool2dConfig,
    QatAdd, QatAvgPool2d, QatConcat, QatConv2d, QatConvBn2d, QatGlobalAvgPool, QatLinear,
    QatMaxPool2d, QatQuantize, QuantConfig,
};
use crate::schedule::{Phase, PhaseControl};

/// The reduction of a windowed pooling node ([`NetBuilder::pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The window's maximum.
    Max,
    /// The window's mean.
    Avg,
}

/// Builds a [`Net`] node by node, tracking shapes. Every layer method takes the input node and returns the
/// new node.
#[derive(Debug)]
pub struct NetBuilder {
    name: String,
    vs: nn::VarStore,
    nodes: Vec<Node>,
    quant: QuantConfig,
    layer_bits: Vec<LayerBitsOverride>,
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
        let name = name.into();
        let vs = nn::VarStore::new(device);
        let q = QatQuantize::new(&(vs.root() / "input"), &quant)
            .map_err(|e| ModelError::layer(&name, e))?;
        let nodes = vec![Node {
            name: "input".into(),
            op: NodeOp::Input(q),
            inputs: vec![],
            shape: input_chw.to_vec(),
        }];
        Ok(Self {
            name,
            vs,
            nodes,
            quant,
            layer_bits: Vec::new(),
            fold: BnFoldMode::Whitepaper,
            stats_grad: false,
        })
    }

    /// The quantization of layer `name`: the builder's, with `name`'s bit-width override if any.
    fn quant_for(&self, name: &str) -> QuantConfig {
        let mut q = self.quant;
        if let Some(o) = self.layer_bits.iter().find(|o| o.layer == name) {
            if let Some(w) = o.weight_bits {
                q.weight_bits = w;
            }
            if let Some(a) = o.act_bits {
                q.act_bits = a;
            }
        }
        q
    }

    qat_core::by_value_setters! {
        /// Per-layer bit widths for the layers created from now on: a layer named in `layer_bits`
        /// gets the builder's [`QuantConfig`] with that entry's weight and/or activation bits
        /// (mixed precision); every other layer, and the input quantizer, keep the builder's. A
        /// name no layer takes is an error of [`NetBuilder::finish`].
        pub fn layer_bits(layer_bits: Vec<LayerBitsOverride>) => layer_bits;
        /// Sets the conv+BN folding variant of the layers created from now on.
        pub fn fold(fold: BnFoldMode) => fold;
        /// Sets [`ConvBnConfig::stats_grad`] of the conv+BN layers created from now on.
        pub fn stats_grad(on: bool) => stats_grad;
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
        ModelError::new(&self.name, ModelErrorKind::Build(what))
    }

    fn layer_err(&self, e: LayerError) -> ModelError {
        ModelError::layer(&self.name, e)
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

    /// Creates node `name`'s layer with `new` under the node's VarStore path and appends the node
    /// (a layer error is reported as this model's).
    fn push_layer(
        &mut self,
        name: &str,
        new: impl FnOnce(&nn::Path<'_>) -> Result<NodeOp, LayerError>,
        inputs: Vec<NodeRef>,
        shape: Vec<usize>,
    ) -> Result<NodeRef, ModelError> {
        let op = new(&self.path(name)).map_err(|e| self.layer_err(e))?;
        Ok(self.push(name, op, inputs, shape))
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
        let mut conv = self
            .conv_cfg(chw[0], cout, k, s, act)
            .quant(self.quant_for(name));
        conv.groups = groups as i64;
        let mut cfg = ConvBnConfig::new(conv).fold(self.fold);
        cfg.stats_grad = self.stats_grad;
        self.conv_bn_cfg(name, x, cfg)
    }

    /// Conv + BN (+ activation) with an explicit [`ConvBnConfig`] (any geometry; its conv's
    /// `in_channels` must match the input; the builder's fold variant does not apply).
    pub fn conv_bn_cfg(
        &mut self,
        name: &str,
        x: NodeRef,
        cfg: ConvBnConfig,
    ) -> Result<NodeRef, ModelError> {
        let shape = self.explicit_conv_out(name, x, &cfg.conv)?;
        let new = |p: &nn::Path<'_>| QatConvBn2d::new(p, cfg).map(NodeOp::ConvBn);
        self.push_layer(name, new, vec![x], shape)
    }

    /// Conv with bias and an explicit [`Conv2dConfig`] (its `in_channels` must match the input).
    pub fn conv(
        &mut self,
        name: &str,
        x: NodeRef,
        cfg: Conv2dConfig,
    ) -> Result<NodeRef, ModelError> {
        let shape = self.explicit_conv_out(name, x, &cfg)?;
        let new = |p: &nn::Path<'_>| QatConv2d::new(p, cfg).map(NodeOp::Conv);
        self.push_layer(name, new, vec![x], shape)
    }

    /// The output shape of the new node `name` applying the caller's `conv` to node `x`, whose
    /// channels must be the conv's `in_channels`.
    fn explicit_conv_out(
        &self,
        name: &str,
        x: NodeRef,
        conv: &Conv2dConfig,
    ) -> Result<Vec<usize>, ModelError> {
        self.unique(name)?;
        let chw = self.chw(x, name)?;
        if conv.in_channels as usize != chw[0] {
            return Err(self.err(format!(
                "{name}: conv expects {} channels, input has {}",
                conv.in_channels, chw[0]
            )));
        }
        self.conv_out(conv, chw, name)
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
        let cfg = LinearConfig::new(f as i64, out as i64)
            .activation(act)
            .quant(self.quant_for(name));
        let new = |p: &nn::Path<'_>| QatLinear::new(p, cfg).map(NodeOp::Linear);
        self.push_layer(name, new, vec![x], vec![out])
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
        let quant = self.quant_for(name);
        let new = |p: &nn::Path<'_>| QatAdd::new(p, act, quant).map(NodeOp::Add);
        self.push_layer(name, new, vec![a, b], sa)
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
        let (quant, shape) = (self.quant_for(name), vec![c, first[1], first[2]]);
        let new = |p: &nn::Path<'_>| QatConcat::new(p, xs.len(), quant).map(NodeOp::Concat);
        self.push_layer(name, new, xs.to_vec(), shape)
    }

    /// The output shape of pooling node `x` over `cfg`'s window (padded cells excluded).
    fn pool_geometry(
        &self,
        name: &str,
        x: NodeRef,
        cfg: Pool2dConfig,
        what: &str,
    ) -> Result<Vec<usize>, ModelError> {
        self.unique(name)?;
        let [c, h, w] = self.chw(x, name)?;
        let (k, s, p) = (cfg.kernel, cfg.stride, cfg.padding);
        let (hp, wp) = (h as i64 + 2 * p, w as i64 + 2 * p);
        if k <= 0 || s <= 0 || p < 0 || 2 * p > k || hp < k || wp < k {
            return Err(self.err(format!("{name}: {what} {k}/{s} padding {p} on {h}x{w}")));
        }
        let out = |x: i64| ((x - k) / s + 1) as usize;
        Ok(vec![c, out(hp), out(wp)])
    }

    /// Max pooling `k×k`, stride `s`, no padding.
    pub fn max_pool(
        &mut self,
        name: &str,
        x: NodeRef,
        k: usize,
        s: usize,
    ) -> Result<NodeRef, ModelError> {
        self.pool(name, x, Pooling::Max, Pool2dConfig::new(k as i64, s as i64))
    }

    /// Windowed pooling over an explicit window (padding `p ≤ k/2`): max pooling ignores the
    /// padded cells, average pooling excludes them from the count.
    pub fn pool(
        &mut self,
        name: &str,
        x: NodeRef,
        kind: Pooling,
        cfg: Pool2dConfig,
    ) -> Result<NodeRef, ModelError> {
        let what = match kind {
            Pooling::Max => "max pool",
            Pooling::Avg => "avg pool",
        };
        let shape = self.pool_geometry(name, x, cfg, what)?;
        let quant = self.quant_for(name);
        let new = |p: &nn::Path<'_>| match kind {
            Pooling::Max => QatMaxPool2d::new(p, cfg).map(NodeOp::MaxPool),
            Pooling::Avg => QatAvgPool2d::new(p, cfg, quant).map(NodeOp::AvgPool),
        };
        self.push_layer(name, new, vec![x], shape)
    }

    /// Global average pooling `[C, H, W] → [C]`.
    pub fn global_avg_pool(&mut self, name: &str, x: NodeRef) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, _, _] = self.chw(x, name)?;
        let quant = self.quant_for(name);
        let new = |p: &nn::Path<'_>| QatGlobalAvgPool::new(p, quant).map(NodeOp::GlobalAvgPool);
        self.push_layer(name, new, vec![x], vec![c])
    }

    /// Flatten `[C, H, W] → [C·H·W]` (NCHW order).
    pub fn flatten(&mut self, name: &str, x: NodeRef) -> Result<NodeRef, ModelError> {
        self.unique(name)?;
        let [c, h, w] = self.chw(x, name)?;
        Ok(self.push(name, NodeOp::Flatten, vec![x], vec![c * h * w]))
    }

    /// Finishes the model with `output` as its logits, in float mode (fake quant off, observers
    /// frozen) until a schedule applies its phase.
    pub fn finish(self, output: NodeRef, spec: Option<ModelSpec>) -> Result<Net, ModelError> {
        if output.0 >= self.nodes.len() {
            return Err(self.err(format!("output node {} does not exist", output.0)));
        }
        if let Some(o) =
            (self.layer_bits.iter()).find(|o| !self.nodes.iter().any(|n| n.name == o.layer))
        {
            return Err(self.err(format!(
                "layer_bits names layer {:?}, which the model does not have",
                o.layer
            )));
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
        net.apply_flags(Phase::Float.flags())?;
        Ok(net)
    }
}
