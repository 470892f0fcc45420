//! Per-layer bit widths: which layers can take them ([`quantizable_layers`]) and how an assignment is
//! written into a [`FloatGraph`] ([`BitAssignment::apply`]).
//!
//! The IR already carries a bit width per layer: [`crate::ir::WeightQuant::bits`] of every conv and
//! linear layer and [`crate::ir::ActQuant::bits`] of every node's output. Export quantizes each
//! layer on its own grid (`[−(2^(b_w−1)−1), 2^(b_w−1)−1]` weights, `[0, 2^(b_a)−1]` activations) and
//! the int8 runtime runs every layer on its int8 kernels whatever the width: the codes of a 2–8-bit
//! grid are int8/uint8 codes, and an activation's `[qmin, qmax]` travels with its tensor's
//! quantization parameters.

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use crate::ir::{FloatGraph, FloatOp};

/// A conv or linear layer, with what the cost models need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Node name.
    pub name: String,
    /// Op kind (`Conv2d`, `DepthwiseConv2d`, `Linear`).
    pub op: String,
    /// Number of weights.
    pub weights: u64,
    /// Multiply-accumulates per sample: `H_out·W_out·|W|` for a conv, `|W|` for a linear layer.
    pub macs: u64,
}

/// Every conv and linear layer of `graph`, in graph order.
///
/// ```
/// use qat_export::analysis::quantizable_layers;
/// use qat_export::ir::{Conv2d, FloatGraph, Linear};
/// let mut g = FloatGraph::new("t");
/// let x = g.input("x", &[4, 4, 1]);
/// let c = g.conv2d("conv", x, Conv2d::new(vec![0.1; 2 * 3 * 3], [2, 3, 3, 1]));   // → [2, 2, 2]
/// let f = g.flatten("flat", c);
/// let fc = g.linear("fc", f, Linear::new(vec![0.1; 3 * 8], [3, 8]));
/// g.output("y", fc);
/// let l = quantizable_layers(&g)?;
/// assert_eq!((l[0].weights, l[0].macs), (18, 2 * 2 * 18));
/// assert_eq!((l[1].weights, l[1].macs), (24, 24));
/// # Ok::<(), qat_export::analysis::AnalysisError>(())
/// ```
pub fn quantizable_layers(graph: &FloatGraph) -> Result<Vec<LayerInfo>, AnalysisError> {
    let shapes = graph.validate()?;
    Ok(graph
        .nodes
        .iter()
        .zip(&shapes)
        .filter_map(|(n, shape)| {
            let (weights, macs) = match &n.op {
                FloatOp::Conv2d(c) => {
                    let w = c.weight.len() as u64;
                    let hw: u64 = shape.iter().take(2).map(|&d| d as u64).product();
                    (w, hw * w)
                }
                FloatOp::Linear(l) => (l.weight.len() as u64, l.weight.len() as u64),
                _ => return None,
            };
            Some(LayerInfo {
                name: n.name.clone(),
                op: n.op.kind().to_string(),
                weights,
                macs,
            })
        })
        .collect())
}

/// The bit widths of one layer; `None` keeps what the graph (or the study's baseline) has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBits {
    /// Node name of the conv or linear layer.
    pub layer: String,
    /// Weight bits, 2..=8.
    pub weight_bits: Option<u32>,
    /// Bits of the layer's output activation, 2..=8.
    pub act_bits: Option<u32>,
}

/// Bit widths for some or all layers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BitAssignment {
    /// Per layer, in graph order.
    pub layers: Vec<LayerBits>,
}

impl BitAssignment {
    /// Every layer at `weight_bits` / `act_bits`.
    pub fn uniform(layers: &[LayerInfo], weight_bits: u32, act_bits: u32) -> Self {
        Self {
            layers: layers
                .iter()
                .map(|l| LayerBits {
                    layer: l.name.clone(),
                    weight_bits: Some(weight_bits),
                    act_bits: Some(act_bits),
                })
                .collect(),
        }
    }

    /// The entry of `layer`.
    pub fn get(&self, layer: &str) -> Option<&LayerBits> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    /// Writes the assignment into `graph`: each listed layer's `weight_quant.bits` (its scheme is
    /// kept) and its output's `act.bits`. Nodes that are not listed, and `None` entries, are left
    /// as they are (add, concat and pools keep their own activation bits).
    ///
    /// Errors: [`AnalysisError::Layer`] for a name that is not a conv/linear node of the graph or
    /// is listed twice, [`AnalysisError::InvalidOption`] for a width outside 2..=8. Nothing is
    /// written unless every entry is valid.
    ///
    /// ```
    /// use qat_export::analysis::{BitAssignment, LayerBits};
    /// use qat_export::ir::{FloatGraph, FloatOp, Linear};
    /// let mut g = FloatGraph::new("t");
    /// let x = g.input("x", &[2]);
    /// let fc = g.linear("fc", x, Linear::new(vec![0.5, -0.5], [1, 2]));
    /// g.output("y", fc);
    /// let a = BitAssignment { layers: vec![LayerBits { layer: "fc".into(), weight_bits: Some(3), act_bits: Some(5) }] };
    /// a.apply(&mut g)?;
    /// let FloatOp::Linear(l) = &g.nodes[fc.0].op else { unreachable!() };
    /// assert_eq!((l.weight_quant.bits, g.nodes[fc.0].act.bits), (3, 5));
    /// # Ok::<(), qat_export::analysis::AnalysisError>(())
    /// ```
    pub fn apply(&self, graph: &mut FloatGraph) -> Result<(), AnalysisError> {
        let mut ids = Vec::with_capacity(self.layers.len());
        for lb in &self.layers {
            let layer_err = |reason| AnalysisError::Layer {
                layer: lb.layer.clone(),
                reason,
            };
            let id = graph
                .find(&lb.layer)
                .ok_or_else(|| layer_err("no such node"))?;
            if !matches!(
                graph.nodes[id.0].op,
                FloatOp::Conv2d(_) | FloatOp::Linear(_)
            ) {
                return Err(layer_err("not a conv or linear layer"));
            }
            if ids.contains(&id) {
                return Err(layer_err("listed twice"));
            }
            for b in [lb.weight_bits, lb.act_bits].into_iter().flatten() {
                check_bits(b)?;
            }
            ids.push(id);
        }
        for (lb, id) in self.layers.iter().zip(ids) {
            let node = &mut graph.nodes[id.0];
            if let Some(b) = lb.weight_bits {
                match &mut node.op {
                    FloatOp::Conv2d(c) => c.weight_quant.bits = b,
                    FloatOp::Linear(l) => l.weight_quant.bits = b,
                    _ => {}
                }
            }
            if let Some(b) = lb.act_bits {
                node.act.bits = b;
            }
        }
        Ok(())
    }
}

/// `bits` must be in 2..=8.
pub(crate) fn check_bits(bits: u32) -> Result<(), AnalysisError> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(AnalysisError::InvalidOption {
            what: "bit width",
            reason: format!("{bits} not in 2..=8"),
        })
    }
}
