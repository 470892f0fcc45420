//! A [`Net`] built from a float graph ([`FloatGraph`], for example one imported from ONNX by
//! `qat_export::onnx::import_onnx`): the model a user brings, made quantization-aware.
//!
//! Every node of the graph becomes one QAT layer, with the graph's weights and batch-norm
//! statistics loaded into it:
//!
//! | float graph | net node | loaded |
//! |---|---|---|
//! | `Input [H, W, C]` | the input quantizer, `[C, H, W]` | — |
//! | `Conv2d` with a `BatchNorm` | [`QatConvBn2d`](crate::layers::QatConvBn2d) (folded per [`GraphNetOptions::fold`]) | `OHWI → OIHW` weights, γ, β, moving mean `μ − b` (a conv bias `b` before the batch norm cancels in batch statistics and shifts the moving mean), moving variance, ε |
//! | `Conv2d` without one (also a conv whose batch norm the exporter already folded) | [`QatConv2d`](crate::layers::QatConv2d) with bias | weights, bias |
//! | `Linear` | [`QatLinear`](crate::layers::QatLinear) | `[out, in]` (after a spatial flatten, columns permuted from the graph's HWC order to the net's CHW order), bias (0 when absent) |
//! | `Add`, `Concat` (of `[H, W, C]` values) | [`QatAdd`](crate::layers::QatAdd), [`QatConcat`](crate::layers::QatConcat) | — |
//! | `MaxPool`, `AvgPool` (square window, stride and padding, `2p ≤ k`) | [`QatMaxPool2d`](crate::layers::QatMaxPool2d), [`QatAvgPool2d`](crate::layers::QatAvgPool2d) | — |
//! | `GlobalAvgPool` | [`QatGlobalAvgPool`](crate::layers::QatGlobalAvgPool) | — |
//! | `Flatten` of `[H, W, C]` | the net's flatten (CHW order; only linear layers may read it unless `H·W = 1`) | — |
//! | `Flatten` of `[C]` | nothing (the value itself) | — |
//! | `Output` (exactly one) | the net's output | — |
//!
//! An exporter that fuses each batch norm into the conv before it (PyTorch's default
//! eval-mode ONNX export does) leaves plain convs with a bias: they are fine-tuned as such, with
//! no batch norm to fold; a file that keeps its `BatchNormalization` nodes gets conv+BN layers.
//!
//! Fused activations (ReLU, ReLU6) stay fused. The quantization of every layer comes from
//! [`GraphNetOptions::quant`], not from the graph's annotations (its observed ranges are
//! discarded: QAT calibrates its own). A graph that cannot be expressed is refused with one
//! [`FromGraphError::Unsupported`] that lists every such node, not only the first.
//!
//! ε of a batch norm is stored as `f32` in the graph (and in ONNX); it becomes the `f64` of the
//! shortest decimal that rounds to that `f32` (`1e-5f32` → `1e-5`), the value a framework wrote.
//!
//! ```
//! use qat_export::ir::{Activation, BatchNorm, Conv2d, FloatGraph, Linear};
//! use qat_train::models::{from_float_graph, GraphNetOptions};
//! use tch::{Device, Kind, Tensor};
//! let mut g = FloatGraph::new("tiny");
//! let x = g.input("x", &[6, 6, 1]);
//! let bn = BatchNorm { gamma: vec![1.0; 4], beta: vec![0.0; 4], mean: vec![0.0; 4], var: vec![1.0; 4], eps: 1e-5 };
//! let c = g.conv2d("conv", x, Conv2d::new(vec![0.1; 4 * 9], [4, 3, 3, 1])
//!     .with_padding([1, 1, 1, 1]).with_batch_norm(bn).with_activation(Activation::Relu6));
//! let p = g.global_avg_pool("gap", c);
//! let fc = g.linear("fc", p, Linear::new(vec![0.5; 3 * 4], [3, 4]));
//! g.output("logits", fc);
//! let mut net = from_float_graph(&g, Device::Cpu, &GraphNetOptions::default())?;
//! assert_eq!(net.input_chw(), [1, 6, 6]);
//! let y = net.forward_t(&Tensor::ones([2, 1, 6, 6], (Kind::Float, Device::Cpu)), false)?;
//! assert_eq!(y.size(), vec![2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;

pub use qat_export::UnsupportedNode;
use qat_export::ir::{self, FloatGraph, FloatOp, NodeId};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use super::{ModelError, Net, NetBuilder, NodeOp, NodeRef, Pooling};
use crate::layers::{BnFoldMode, Conv2dConfig, ConvBnConfig, Pool2dConfig, QuantConfig};

/// How a graph's layers are made quantization-aware.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GraphNetOptions {
    /// Quantization of every layer (bits, schemes, observers).
    pub quant: QuantConfig,
    /// Conv+BN folding variant.
    pub fold: BnFoldMode,
    /// [`crate::layers::ConvBnConfig::stats_grad`] of every conv+BN layer.
    pub stats_grad: bool,
    /// BN momentum of the fine-tuning (`running = (1 − m)·running + m·batch`; the graph does not
    /// carry it). Default 0.1, PyTorch's and the zoo's.
    pub bn_momentum: f64,
}

impl Default for GraphNetOptions {
    fn default() -> Self {
        Self {
            quant: QuantConfig::default(),
            fold: BnFoldMode::Whitepaper,
            stats_grad: false,
            bn_momentum: 0.1,
        }
    }
}

/// Why a [`Net`] could not be built from a graph.
#[derive(Debug, Error)]
pub enum FromGraphError {
    /// The graph fails its own validation.
    #[error("the float graph is invalid: {0}")]
    Graph(#[from] qat_export::GraphError),
    /// Nodes without a QAT layer: all of them, one per line.
    #[error("{} node(s) of the float graph have no QAT layer:\n  {}", .0.len(), UnsupportedNode::list(.0))]
    Unsupported(Vec<UnsupportedNode>),
    /// Building the net failed (the error names the layer).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Copying the graph's parameters into a layer failed.
    #[error("node '{node}': cannot load the {what}: {source}")]
    Load {
        /// The node's name in the graph.
        node: String,
        /// The parameter.
        what: &'static str,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
}

/// Checks every node (all problems at once) before anything is built.
fn check(g: &FloatGraph, shapes: &[Vec<usize>]) -> Result<(), FromGraphError> {
    let mut bad = Vec::new();
    let outputs = g.output_ids();
    if outputs.len() != 1 {
        let last = g.nodes.last().map_or("<empty graph>", |n| n.name.as_str());
        bad.push(UnsupportedNode {
            node: last.into(),
            op: "Output".into(),
            reason: format!("{} graph outputs (a net has exactly one)", outputs.len()),
        });
    }
    let mut flag = |n: &ir::Node, reason: String| {
        bad.push(UnsupportedNode {
            node: n.name.clone(),
            op: n.op.kind().into(),
            reason,
        });
    };
    for (i, n) in g.nodes.iter().enumerate() {
        let in_shape = |k: usize| n.inputs.get(k).map(|r| shapes[r.0].as_slice());
        match &n.op {
            FloatOp::Input { shape } if shape.len() != 3 => {
                flag(
                    n,
                    format!("input shape {shape:?} (an [H, W, C] image is needed)"),
                );
            }
            FloatOp::Conv2d(c) => {
                let [t, l, b, r] = c.padding;
                if t != b || l != r {
                    flag(
                        n,
                        format!(
                            "asymmetric padding {:?} [top, left, bottom, right]",
                            c.padding
                        ),
                    );
                }
                if let Some(bn) = &c.batch_norm
                    && !(bn.eps > 0.0 && bn.eps.is_finite())
                {
                    flag(n, format!("batch-norm ε {} (> 0 needed)", bn.eps));
                }
            }
            FloatOp::AvgPool(p) | FloatOp::MaxPool(p) => {
                let [t, l, b, r] = p.padding;
                let square = p.kernel[0] == p.kernel[1] && p.stride[0] == p.stride[1];
                if !square || [l, b, r] != [t, t, t] || 2 * t > p.kernel[0] {
                    flag(
                        n,
                        format!(
                            "window {:?} stride {:?} padding {:?} (square window and stride, equal padding p with 2p ≤ k)",
                            p.kernel, p.stride, p.padding
                        ),
                    );
                }
            }
            FloatOp::Concat if in_shape(0).is_some_and(|s| s.len() != 3) => {
                flag(n, "concat of flat values (only [H, W, C] values)".into());
            }
            FloatOp::Flatten => {
                let spatial = in_shape(0).is_some_and(|s| s.len() == 3 && s[0] * s[1] > 1);
                let readers = g.nodes[i + 1..]
                    .iter()
                    .filter(|m| m.inputs.contains(&NodeId(i)));
                if spatial {
                    for m in readers.filter(|m| !matches!(m.op, FloatOp::Linear(_))) {
                        flag(
                            n,
                            format!(
                                "read by {} '{}': the graph flattens in HWC order, the net in CHW order, which only a linear layer's weights can absorb",
                                m.op.kind(),
                                m.name
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(FromGraphError::Unsupported(bad))
    }
}

/// A VarStore-friendly, unique node name: the graph's when it has no empty dotted segment, else
/// with its dots replaced.
fn layer_name(name: &str, i: usize, used: &mut HashSet<String>) -> String {
    let mut base = if !name.is_empty() && !name.split('.').any(str::is_empty) {
        name.to_string()
    } else {
        name.replace('.', "_")
    };
    if base.is_empty() || base.split('.').any(str::is_empty) {
        base = format!("node{i}");
    }
    let mut out = base.clone();
    let mut k = 1;
    while used.contains(&out) {
        out = format!("{base}_{k}");
        k += 1;
    }
    used.insert(out.clone());
    out
}

/// Builds a [`Net`] from `graph` on `device` with the graph's weights and batch-norm statistics
/// loaded (see the documentation of this module). The net is in float mode until a schedule
/// applies a phase, like a zoo model.
pub fn from_float_graph(
    graph: &FloatGraph,
    device: Device,
    opts: &GraphNetOptions,
) -> Result<Net, FromGraphError> {
    let shapes = graph.validate()?;
    check(graph, &shapes)?;
    let input = graph.input_id()?;
    let &[h, w, c] = shapes[input.0].as_slice() else {
        return Err(FromGraphError::Unsupported(vec![UnsupportedNode {
            node: graph.nodes[input.0].name.clone(),
            op: "Input".into(),
            reason: "not an [H, W, C] image".into(),
        }]));
    };
    let q = opts.quant;
    let mut b = NetBuilder::new(&graph.name, device, [c, h, w], q)?
        .fold(opts.fold)
        .stats_grad(opts.stats_grad);
    let mut used = HashSet::from(["input".to_string()]);
    // Graph node → net node (None for the output marker); net node → graph node.
    let mut refs: Vec<Option<NodeRef>> = vec![None; graph.nodes.len()];
    let mut origin: Vec<Option<usize>> = vec![Some(input.0)];
    let mut output = None;
    for (i, n) in graph.nodes.iter().enumerate() {
        let x = |k: usize| {
            n.inputs
                .get(k)
                .and_then(|r| refs[r.0])
                .unwrap_or(NodeRef(0))
        };
        let in_shape = |k: usize| n.inputs.get(k).map_or(&[][..], |r| shapes[r.0].as_slice());
        let mut name = || layer_name(&n.name, i, &mut used);
        let r = match &n.op {
            FloatOp::Input { .. } => NodeRef(0),
            FloatOp::Output => {
                output = Some(x(0));
                continue;
            }
            FloatOp::Flatten if in_shape(0).len() != 3 => x(0),
            FloatOp::Conv2d(cv) => {
                let [o, kh, kw, _] = cv.weight_shape;
                let cin = in_shape(0).last().copied().unwrap_or(0);
                let cfg = Conv2dConfig {
                    in_channels: cin as i64,
                    out_channels: o as i64,
                    kernel: [kh as i64, kw as i64],
                    stride: cv.stride.map(|s| s as i64),
                    padding: [cv.padding[0] as i64, cv.padding[1] as i64],
                    dilation: cv.dilation.map(|d| d as i64),
                    groups: cv.groups as i64,
                    bias: cv.bias.is_some(),
                    activation: cv.activation,
                    quant: q,
                };
                match &cv.batch_norm {
                    Some(bn) => {
                        let mut cfg = ConvBnConfig::new(cfg).fold(opts.fold);
                        cfg.eps = f64_of_f32(bn.eps);
                        cfg.momentum = opts.bn_momentum;
                        cfg.stats_grad = opts.stats_grad;
                        b.conv_bn_cfg(&name(), x(0), cfg)?
                    }
                    None => b.conv(&name(), x(0), cfg)?,
                }
            }
            FloatOp::Linear(l) => b.linear(&name(), x(0), l.weight_shape[0], l.activation)?,
            FloatOp::Add { activation } => b.add(&name(), x(0), x(1), *activation)?,
            FloatOp::Concat => {
                let xs: Vec<NodeRef> = (0..n.inputs.len()).map(x).collect();
                b.concat(&name(), &xs)?
            }
            FloatOp::AvgPool(p) | FloatOp::MaxPool(p) => {
                let cfg = Pool2dConfig::new(p.kernel[0] as i64, p.stride[0] as i64)
                    .padding(p.padding[0] as i64);
                let kind = if matches!(n.op, FloatOp::MaxPool(_)) {
                    Pooling::Max
                } else {
                    Pooling::Avg
                };
                b.pool(&name(), x(0), kind, cfg)?
            }
            FloatOp::GlobalAvgPool => b.global_avg_pool(&name(), x(0))?,
            FloatOp::Flatten => b.flatten(&name(), x(0))?,
        };
        if r.0 == origin.len() {
            origin.push(Some(i));
        }
        refs[i] = Some(r);
    }
    let output = output.unwrap_or(NodeRef(0));
    let net = b.finish(output, None)?;
    load(&net, graph, &shapes, &origin)?;
    Ok(net)
}

/// The `f64` of the shortest decimal that rounds to `x` (`1e-5f32` → `1e-5`).
fn f64_of_f32(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Copies `graph`'s parameters into the layers of `net` (`origin[k]`: the graph node of net node
/// `k`).
fn load(
    net: &Net,
    graph: &FloatGraph,
    shapes: &[Vec<usize>],
    origin: &[Option<usize>],
) -> Result<(), FromGraphError> {
    let _g = tch::no_grad_guard();
    let device = net.device();
    for (node, gi) in net.nodes().iter().zip(origin) {
        let Some(gn) = gi.map(|i| &graph.nodes[i]) else {
            continue;
        };
        let put = |dst: &Tensor, v: &[f32], what: &'static str| -> Result<(), FromGraphError> {
            let err = |source| FromGraphError::Load {
                node: gn.name.clone(),
                what,
                source,
            };
            let src = Tensor::from_slice(v)
                .f_to_kind(Kind::Float)
                .and_then(|t| t.f_view(dst.size().as_slice()))
                .and_then(|t| t.f_to_device(device))
                .map_err(err)?;
            dst.shallow_clone().f_copy_(&src).map_err(err)
        };
        let put_conv_weight = |dst: &Tensor, cv: &ir::Conv2d| {
            put(
                dst,
                &ir::oihw_from_ohwi(&cv.weight, cv.weight_shape),
                "weight",
            )
        };
        match (&node.op, &gn.op) {
            (NodeOp::ConvBn(l), FloatOp::Conv2d(cv)) => {
                put_conv_weight(l.weight(), cv)?;
                if let Some(bn) = &cv.batch_norm {
                    let mean: Vec<f32> = match &cv.bias {
                        Some(bias) => bn
                            .mean
                            .iter()
                            .zip(bias)
                            .map(|(&m, &b)| (f64::from(m) - f64::from(b)) as f32)
                            .collect(),
                        None => bn.mean.clone(),
                    };
                    put(l.gamma(), &bn.gamma, "batch-norm γ")?;
                    put(l.beta(), &bn.beta, "batch-norm β")?;
                    put(l.running_mean(), &mean, "batch-norm mean")?;
                    put(l.running_var(), &bn.var, "batch-norm variance")?;
                }
            }
            (NodeOp::Conv(l), FloatOp::Conv2d(cv)) => {
                put_conv_weight(l.weight(), cv)?;
                if let (Some(dst), Some(bias)) = (l.bias(), &cv.bias) {
                    put(dst, bias, "bias")?;
                }
            }
            (NodeOp::Linear(l), FloatOp::Linear(lin)) => {
                let [out, _] = lin.weight_shape;
                // After a spatial flatten, the graph's columns are in HWC order.
                let src = gn.inputs.first().map(|r| &graph.nodes[r.0]);
                let pre = src
                    .filter(|s| matches!(s.op, FloatOp::Flatten))
                    .and_then(|s| s.inputs.first())
                    .map(|r| shapes[r.0].as_slice());
                let weight = match pre {
                    Some(&[h, w, c]) => ir::linear_to_nchw_flatten(&lin.weight, out, [c, h, w]),
                    _ => lin.weight.clone(),
                };
                put(l.weight(), &weight, "weight")?;
                let bias = lin.bias.clone().unwrap_or_else(|| vec![0.0; out]);
                put(l.bias(), &bias, "bias")?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qat_export::ir::{Conv2d, Linear, Pool2d};

    #[test]
    fn eps_is_the_shortest_decimal() {
        assert_eq!(f64_of_f32(1e-5), 1e-5);
        assert_eq!(f64_of_f32(1e-3), 1e-3);
    }

    #[test]
    fn every_unsupported_node_is_named() {
        let mut g = FloatGraph::new("bad");
        let x = g.input("x", &[6, 6, 2]);
        let c = g.conv2d(
            "lopsided",
            x,
            Conv2d::new(vec![0.1; 2 * 9 * 2], [2, 3, 3, 2]).with_padding([1, 1, 0, 0]),
        );
        let p = g.max_pool(
            "oblong",
            c,
            Pool2d {
                kernel: [2, 1],
                stride: [2, 1],
                padding: [0; 4],
            },
        );
        let f = g.flatten("flat", p);
        g.output("raw", f);
        let fc = g.linear("fc", f, Linear::new(vec![0.0; 2 * 20], [2, 20]));
        g.output("logits", fc);
        let err = from_float_graph(&g, Device::Cpu, &GraphNetOptions::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for needle in [
            "lopsided (Conv2d): asymmetric padding",
            "oblong (MaxPool)",
            "flat (Flatten): read by Output 'raw'",
            "2 graph outputs",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
