//! Structural validation and shape inference of a [`FloatGraph`].
//!
//! Checks, in node order (the first problem is returned, naming its node):
//! unique non-empty names; inputs are earlier nodes (topological order) and not `Output` nodes;
//! arity per op; one `Input`
//! and at least one `Output`; bit widths in 2..=8; observed ranges finite with `min ≤ max`;
//! parameter lengths (weights = ∏ shape, bias and batch norm = `C_out`); batch norm variance ≥ 0
//! (NaN is an export refusal); strides, dilations,
//! kernels ≥ 1; `groups` divides `C_in` and `C_out`; padding smaller than the pool window; and the
//! shapes of every node's inputs.
//!
//! Output sizes (per-sample, NHWC):
//! * conv: `H_out = ⌊(H + p_t + p_b − d_h·(k_h − 1) − 1)/s_h⌋ + 1` (same for W), `C_out = O`;
//! * pools: `H_out = ⌊(H + p_t + p_b − k_h)/s_h⌋ + 1`;
//! * global average pool `[H, W, C] → [C]`; flatten `[…] → [∏…]`; concat sums the last axis.
//!
//! Sizes and work are bounded as [`crate::limits`] states, with checked arithmetic throughout:
//! no graph makes validation overflow, and none that validates asks the interpreter for more
//! than the limits.

use std::collections::HashSet;

use crate::error::GraphError;
use crate::ir::{FloatGraph, FloatOp, Node};
use crate::limits::{
    GraphLimits, MAX_POOL_WINDOW, MAX_REDUCTION, MAX_SPATIAL, MAX_TENSOR_ELEMENTS, Totals, product,
};

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
    let span = dilation
        .checked_mul(kernel.checked_sub(1)?)?
        .checked_add(1)?;
    let padded = size.checked_add(pad_lo)?.checked_add(pad_hi)?;
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
    for (what, v) in [
        ("kernel", &kernel[..]),
        ("stride", &stride[..]),
        ("dilation", &dilation[..]),
        ("padding", &padding[..]),
    ] {
        if v.iter().any(|&x| x > MAX_SPATIAL) {
            return Err(param_err(
                node,
                what,
                format!("{v:?} exceeds the limit {MAX_SPATIAL}"),
            ));
        }
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

/// Validates `g` with the default [`GraphLimits`] and returns every node's per-sample output
/// shape (see the module docs).
pub fn infer_shapes(g: &FloatGraph) -> Result<Vec<Vec<usize>>, GraphError> {
    infer_shapes_with(g, &GraphLimits::default())
}

fn limit_err(node: &Node, resource: &'static str, needed: u64, limit: u64) -> GraphError {
    GraphError::Limit {
        node: node.name.clone(),
        resource,
        needed,
        limit,
    }
}

/// Adds `node`'s cost (its output `out`, its inputs `ins`) to `t` and checks `limits`; the error
/// names the node at which a total first exceeds its limit.
fn account(
    node: &Node,
    ins: &[&[usize]],
    out: &[usize],
    t: &mut Totals,
    limits: &GraphLimits,
) -> Result<(), GraphError> {
    let n = product(out)
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| {
            limit_err(
                node,
                "output elements per sample",
                product(out).map_or(u64::MAX, |n| n as u64),
                MAX_TENSOR_ELEMENTS as u64,
            )
        })? as u64;
    let (macs, pool) = match &node.op {
        FloatOp::Conv2d(c) => {
            let [_, kh, kw, ig] = c.weight_shape;
            let k = product(&[kh, kw, ig]).filter(|&k| k <= MAX_REDUCTION);
            let k = k.ok_or_else(|| {
                param_err(
                    node,
                    "weight_shape",
                    format!("reduction kh·kw·C_in/groups exceeds {MAX_REDUCTION}"),
                )
            })?;
            (n.saturating_mul(k as u64), 0)
        }
        FloatOp::Linear(l) => {
            if l.weight_shape[1] > MAX_REDUCTION {
                return Err(param_err(
                    node,
                    "weight_shape",
                    format!("C_in exceeds {MAX_REDUCTION}"),
                ));
            }
            (n.saturating_mul(l.weight_shape[1] as u64), 0)
        }
        FloatOp::AvgPool(p) | FloatOp::MaxPool(p) => {
            let win = product(&p.kernel).filter(|&w| w <= MAX_POOL_WINDOW);
            let win = win.ok_or_else(|| {
                param_err(
                    node,
                    "kernel",
                    format!("{:?} exceeds {MAX_POOL_WINDOW} cells", p.kernel),
                )
            })?;
            (0, n.saturating_mul(win as u64))
        }
        FloatOp::GlobalAvgPool => {
            let cells = product(ins[0]).unwrap_or(usize::MAX);
            if ins[0].len() == 3 && ins[0][0].saturating_mul(ins[0][1]) > MAX_POOL_WINDOW {
                return Err(param_err(
                    node,
                    "input",
                    format!("window larger than {MAX_POOL_WINDOW} cells"),
                ));
            }
            (0, cells as u64)
        }
        _ => (0, 0),
    };
    t.activation_bytes = t.activation_bytes.saturating_add(4 * n);
    t.macs = t.macs.saturating_add(macs);
    t.pool_work = t.pool_work.saturating_add(pool);
    for (resource, needed, limit) in [
        (
            "activation bytes per sample",
            t.activation_bytes,
            limits.max_activation_bytes,
        ),
        ("multiply-accumulates per sample", t.macs, limits.max_macs),
        (
            "pooling window cells per sample",
            t.pool_work,
            limits.max_pool_work,
        ),
    ] {
        if needed > limit {
            return Err(limit_err(node, resource, needed, limit));
        }
    }
    Ok(())
}

/// [`infer_shapes`] with explicit cost limits.
pub fn infer_shapes_with(
    g: &FloatGraph,
    limits: &GraphLimits,
) -> Result<Vec<Vec<usize>>, GraphError> {
    let mut totals = Totals::default();
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
        account(node, &ins, &out, &mut totals, limits)?;
        shapes.push(out);
    }
    g.input_id()?;
    if g.output_ids().is_empty() {
        return Err(GraphError::NoOutput);
    }
    Ok(shapes)
}

/// The first parameter of `node` holding a non-finite value: `(field, index)`.
pub(crate) fn first_non_finite(node: &Node) -> Option<(&'static str, usize)> {
    let find =
        |what: &'static str, v: &[f32]| v.iter().position(|x| !x.is_finite()).map(|i| (what, i));
    let empty: &[f32] = &[];
    match &node.op {
        FloatOp::Conv2d(c) => {
            let bn = c.batch_norm.as_ref();
            find("weight", &c.weight)
                .or_else(|| find("bias", c.bias.as_deref().unwrap_or(empty)))
                .or_else(|| find("batch_norm.gamma", bn.map_or(empty, |b| &b.gamma)))
                .or_else(|| find("batch_norm.beta", bn.map_or(empty, |b| &b.beta)))
                .or_else(|| find("batch_norm.mean", bn.map_or(empty, |b| &b.mean)))
                .or_else(|| find("batch_norm.var", bn.map_or(empty, |b| &b.var)))
                .or_else(|| {
                    find(
                        "batch_norm.eps",
                        bn.map_or(empty, |b| std::slice::from_ref(&b.eps)),
                    )
                })
        }
        FloatOp::Linear(l) => {
            find("weight", &l.weight).or_else(|| find("bias", l.bias.as_deref().unwrap_or(empty)))
        }
        _ => None,
    }
}

/// Batch norm variance must not be negative (non-finite values are export refusals, listed
/// together with every other problem by the plan).
fn check_params(node: &Node) -> Result<(), GraphError> {
    if let FloatOp::Conv2d(c) = &node.op
        && let Some(bn) = &c.batch_norm
        && let Some(i) = bn.var.iter().position(|&v| v < 0.0)
    {
        return Err(param_err(
            node,
            "batch_norm.var",
            format!("element {i} is negative ({})", bn.var[i]),
        ));
    }
    Ok(())
}

/// A layer's `shape` has nonzero extents whose product (without overflow) is `len`, the number
/// of weights it holds.
fn check_weight_shape(node: &Node, shape: &[usize], len: usize) -> Result<(), GraphError> {
    if shape.contains(&0) {
        return Err(param_err(node, "weight_shape", "extents must be ≥ 1"));
    }
    let want = product(shape)
        .ok_or_else(|| param_err(node, "weight_shape", format!("{shape:?} overflows")))?;
    check_len(node, "weight", want, len)
}

fn node_shape(node: &Node, ins: &[&[usize]]) -> Result<Vec<usize>, GraphError> {
    check_params(node)?;
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
            check_weight_shape(node, &c.weight_shape, c.weight.len())?;
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
            check_weight_shape(node, &l.weight_shape, l.weight.len())?;
            if let Some(b) = &l.bias {
                check_len(node, "bias", o, b.len())?;
            }
            if product(ins[0]) != Some(n) {
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
                c = s[s.len() - 1]
                    .checked_add(c)
                    .ok_or_else(|| shape_err(node, "channel count overflows".into()))?;
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
            let n = product(ins[0])
                .ok_or_else(|| shape_err(node, format!("{:?} overflows", ins[0])))?;
            Ok(vec![n])
        }
        FloatOp::Output => {
            arity(node, "1", ins.len() == 1)?;
            Ok(ins[0].to_vec())
        }
    }
}
