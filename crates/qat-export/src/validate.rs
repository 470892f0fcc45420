//! Structural validation and shape inference of a [`FloatGraph`].
//!
//! Checks, in node order (the first problem is returned, naming its node):
//! unique non-empty names; inputs are earlier nodes (topological order) and not `Output` nodes;
//! arity per op; one `Input`
//! and at least one `Output`; bit widths in 2..=8; observed ranges finite with `min ≤ max`;
//! parameter lengths (weights = ∏ shape, bias and batch norm = `C_out`); strides, dilations,
//! kernels ≥ 1; `groups` divides `C_in` and `C_out`; padding smaller than the pool window; and the
//! shapes of every node's inputs.
//!
//! Output sizes (per-sample, NHWC):
//! * conv: `H_out = ⌊(H + p_t + p_b − d_h·(k_h − 1) − 1)/s_h⌋ + 1` (same for W), `C_out = O`;
//! * pools: `H_out = ⌊(H + p_t + p_b − k_h)/s_h⌋ + 1`;
//! * global average pool `[H, W, C] → [C]`; flatten `[…] → [∏…]`; concat sums the last axis.

use std::collections::HashSet;

use crate::error::GraphError;
use crate::ir::{FloatGraph, FloatOp, Node};

fn shape_err(node: &Node, reason: String) -> GraphError {
    GraphError::Shape {
        node: node.name.clone(),
        op: node.op.kind(),
        reason,
    }
}

fn param_err(node: &Node, what: &'static str, reason: impl Into<String>) -> GraphError {
    GraphError::Param {
        node: node.name.clone(),
        what,
        reason: reason.into(),
    }
}

fn check_len(
    node: &Node,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), GraphError> {
    if expected == got {
        Ok(())
    } else {
        Err(GraphError::Length {
            node: node.name.clone(),
            what,
            expected,
            got,
        })
    }
}

fn check_bits(node: &Node, what: &'static str, bits: u32) -> Result<(), GraphError> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(GraphError::Bits {
            node: node.name.clone(),
            what,
            bits,
        })
    }
}

fn arity(node: &Node, expected: &'static str, ok: bool) -> Result<(), GraphError> {
    if ok {
        Ok(())
    } else {
        Err(GraphError::Arity {
            node: node.name.clone(),
            op: node.op.kind(),
            expected,
            got: node.inputs.len(),
        })
    }
}

fn spatial(node: &Node, s: &[usize]) -> Result<[usize; 3], GraphError> {
    match s {
        [h, w, c] => Ok([*h, *w, *c]),
        _ => Err(shape_err(
            node,
            format!("needs a [H, W, C] input, got {s:?}"),
        )),
    }
}

/// Output extent of a window op along one axis, or `None` if the window does not fit.
fn out_extent(
    size: usize,
    pad_lo: usize,
    pad_hi: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = size + pad_lo + pad_hi;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

fn window_out(
    node: &Node,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
) -> Result<[usize; 2], GraphError> {
    if kernel.contains(&0) {
        return Err(param_err(node, "kernel", "must be ≥ 1"));
    }
    if stride.contains(&0) {
        return Err(param_err(node, "stride", "must be ≥ 1"));
    }
    if dilation.contains(&0) {
        return Err(param_err(node, "dilation", "must be ≥ 1"));
    }
    let h = out_extent(
        hw[0],
        padding[0],
        padding[2],
        kernel[0],
        stride[0],
        dilation[0],
    );
    let w = out_extent(
        hw[1],
        padding[1],
        padding[3],
        kernel[1],
        stride[1],
        dilation[1],
    );
    match (h, w) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(shape_err(
            node,
            format!(
                "window {kernel:?} (dilation {dilation:?}) does not fit input {hw:?} with padding {padding:?}"
            ),
        )),
    }
}

/// Validates `g` and returns every node's per-sample output shape (see the module docs).
pub fn infer_shapes(g: &FloatGraph) -> Result<Vec<Vec<usize>>, GraphError> {
    let mut names = HashSet::new();
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        if node.name.is_empty() || !names.insert(node.name.as_str()) {
            return Err(GraphError::DuplicateName {
                node: node.name.clone(),
            });
        }
        for inp in &node.inputs {
            if inp.0 >= i {
                return Err(GraphError::BadInput {
                    node: node.name.clone(),
                    input: inp.0,
                });
            }
            if matches!(g.nodes[inp.0].op, FloatOp::Output) {
                return Err(shape_err(
                    node,
                    format!(
                        "reads the graph output {:?} (an f32 tensor); read its source instead",
                        g.nodes[inp.0].name
                    ),
                ));
            }
        }
        check_bits(node, "activation", node.act.bits)?;
        if let Some(r) = node.act.range
            && (!r.min.is_finite() || !r.max.is_finite() || r.min > r.max)
        {
            return Err(GraphError::BadRange {
                node: node.name.clone(),
                min: r.min,
                max: r.max,
            });
        }
        let ins: Vec<&[usize]> = node.inputs.iter().map(|j| shapes[j.0].as_slice()).collect();
        let out = node_shape(node, &ins)?;
        shapes.push(out);
    }
    g.input_id()?;
    if g.output_ids().is_empty() {
        return Err(GraphError::NoOutput);
    }
    Ok(shapes)
}

fn node_shape(node: &Node, ins: &[&[usize]]) -> Result<Vec<usize>, GraphError> {
    match &node.op {
        FloatOp::Input { shape } => {
            arity(node, "0", ins.is_empty())?;
            if !(shape.len() == 1 || shape.len() == 3) || shape.contains(&0) {
                return Err(shape_err(
                    node,
                    format!(
                        "input shape must be [H, W, C] or [C] with nonzero extents, got {shape:?}"
                    ),
                ));
            }
            Ok(shape.clone())
        }
        FloatOp::Conv2d(c) => {
            arity(node, "1", ins.len() == 1)?;
            let [h, w, cin] = spatial(node, ins[0])?;
            check_bits(node, "weight", c.weight_quant.bits)?;
            let [o, kh, kw, ig] = c.weight_shape;
            if c.weight_shape.contains(&0) {
                return Err(param_err(node, "weight_shape", "extents must be ≥ 1"));
            }
            check_len(node, "weight", o * kh * kw * ig, c.weight.len())?;
            if c.groups == 0 || cin % c.groups != 0 || o % c.groups != 0 {
                return Err(param_err(
                    node,
                    "groups",
                    format!("{} must divide C_in {cin} and C_out {o}", c.groups),
                ));
            }
            if cin / c.groups != ig {
                return Err(shape_err(
                    node,
                    format!(
                        "weights expect {ig} input channels per group, input has {cin} channels in {} groups",
                        c.groups
                    ),
                ));
            }
            if let Some(b) = &c.bias {
                check_len(node, "bias", o, b.len())?;
            }
            if let Some(bn) = &c.batch_norm {
                check_len(node, "batch_norm.gamma", o, bn.gamma.len())?;
                check_len(node, "batch_norm.beta", o, bn.beta.len())?;
                check_len(node, "batch_norm.mean", o, bn.mean.len())?;
                check_len(node, "batch_norm.var", o, bn.var.len())?;
                if bn.eps.is_nan() || bn.eps < 0.0 {
                    return Err(param_err(node, "batch_norm.eps", "must be ≥ 0"));
                }
            }
            let [ho, wo] = window_out(node, [h, w], [kh, kw], c.stride, c.padding, c.dilation)?;
            Ok(vec![ho, wo, o])
        }
        FloatOp::Linear(l) => {
            arity(node, "1", ins.len() == 1)?;
            check_bits(node, "weight", l.weight_quant.bits)?;
            let [o, n] = l.weight_shape;
            if o == 0 || n == 0 {
                return Err(param_err(node, "weight_shape", "extents must be ≥ 1"));
            }
            check_len(node, "weight", o * n, l.weight.len())?;
            if let Some(b) = &l.bias {
                check_len(node, "bias", o, b.len())?;
            }
            let got: usize = ins[0].iter().product();
            if got != n {
                return Err(shape_err(
                    node,
                    format!("weights take {n} inputs, input has shape {:?}", ins[0]),
                ));
            }
            Ok(vec![o])
        }
        FloatOp::Add { .. } => {
            arity(node, "2", ins.len() == 2)?;
            if ins[0] != ins[1] {
                return Err(shape_err(
                    node,
                    format!("input shapes differ: {:?} vs {:?}", ins[0], ins[1]),
                ));
            }
            Ok(ins[0].to_vec())
        }
        FloatOp::Concat => {
            arity(node, "at least 1", !ins.is_empty())?;
            let first = ins[0];
            let lead = &first[..first.len() - 1];
            let mut c = 0;
            for s in ins {
                if s.len() != first.len() || &s[..s.len() - 1] != lead {
                    return Err(shape_err(
                        node,
                        format!("inputs must agree on all but the last axis: {ins:?}"),
                    ));
                }
                c += s[s.len() - 1];
            }
            let mut out = lead.to_vec();
            out.push(c);
            Ok(out)
        }
        FloatOp::AvgPool(p) | FloatOp::MaxPool(p) => {
            arity(node, "1", ins.len() == 1)?;
            let [h, w, c] = spatial(node, ins[0])?;
            if p.padding[0] >= p.kernel[0]
                || p.padding[2] >= p.kernel[0]
                || p.padding[1] >= p.kernel[1]
                || p.padding[3] >= p.kernel[1]
            {
                return Err(param_err(
                    node,
                    "padding",
                    format!(
                        "{:?} must be smaller than the window {:?}",
                        p.padding, p.kernel
                    ),
                ));
            }
            let [ho, wo] = window_out(node, [h, w], p.kernel, p.stride, p.padding, [1, 1])?;
            Ok(vec![ho, wo, c])
        }
        FloatOp::GlobalAvgPool => {
            arity(node, "1", ins.len() == 1)?;
            let [_, _, c] = spatial(node, ins[0])?;
            Ok(vec![c])
        }
        FloatOp::Flatten => {
            arity(node, "1", ins.len() == 1)?;
            Ok(vec![ins[0].iter().product()])
        }
        FloatOp::Output => {
            arity(node, "1", ins.len() == 1)?;
            Ok(ins[0].to_vec())
        }
    }
}
