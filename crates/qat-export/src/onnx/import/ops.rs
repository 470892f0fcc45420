//! One ONNX node → float-graph nodes (see the table in the [module docs](super)).

use super::super::proto::NodeProto;
use super::tensor::{self, Attrs, Const, Data};
use super::{Form, Importer, Val, window};
use crate::ir::{Activation, BatchNorm, Conv2d, FloatOp, Linear, linear_from_nchw_flatten};

type R<T = ()> = Result<T, String>;

/// Lowers `n` (op type `op`) into the importer's graph.
pub(super) fn lower(imp: &mut Importer<'_>, n: &NodeProto, op: &str, label: &str) -> R {
    let out = n.output.first().cloned().unwrap_or_default();
    let inp = |k: usize| n.input.get(k).cloned().filter(|s| !s.is_empty());
    let need = |k: usize| inp(k).ok_or_else(|| format!("input {k} is missing"));
    let attrs = Attrs::of(n);
    let val = match op {
        "Constant" => constant(&attrs, imp.opts.max_tensor_elements)?,
        "Identity" => imp.val(&need(0)?)?.clone(),
        "Dropout" => {
            if n.output.get(1).is_some_and(|m| !m.is_empty()) {
                return Err("the mask output is used (inference graphs only)".into());
            }
            if let Some(t) = inp(2) {
                let c = imp.constant(&t)?;
                if c.f32s().iter().any(|&v| v != 0.0) {
                    return Err("training_mode is true".into());
                }
            }
            imp.val(&need(0)?)?.clone()
        }
        "Conv" => window::conv(imp, n, &attrs, label)?,
        "BatchNormalization" => batch_norm(imp, n, &attrs, label)?,
        "Relu" => activation(imp, &need(0)?, Activation::Relu)?,
        "Clip" => {
            let (lo, hi) = if let (Some(a), Some(b)) = (attrs.ints("min"), attrs.ints("max")) {
                // never: Clip's min/max are inputs since opset 11
                (
                    a.first().map_or(f32::NEG_INFINITY, |&v| v as f32),
                    b.first().map_or(f32::INFINITY, |&v| v as f32),
                )
            } else {
                let bound = |k: usize, dflt: f32| -> R<f32> {
                    match inp(k) {
                        None => Ok(dflt),
                        Some(t) => {
                            let c = imp.constant(&t)?;
                            c.f32s()
                                .first()
                                .copied()
                                .ok_or_else(|| format!("input {k} is empty"))
                        }
                    }
                };
                (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)
            };
            let act = match (lo, hi) {
                (l, h) if l == 0.0 && h == 6.0 => Activation::Relu6,
                (l, h) if l == 0.0 && h == f32::INFINITY => Activation::Relu,
                (l, h) => {
                    return Err(format!(
                        "clip to [{l}, {h}] (only [0, 6] and [0, ∞) are activations of the float graph)"
                    ));
                }
            };
            activation(imp, &need(0)?, act)?
        }
        "Add" => add(imp, &need(0)?, &need(1)?, label)?,
        "Concat" => {
            let mut ids = Vec::new();
            let mut first: Option<(Form, Vec<usize>)> = None;
            let mut channels = 0;
            for name in &n.input {
                let (id, form, shape) = imp.act(name)?;
                if !matches!(form, Form::Nchw | Form::Flat | Form::Pooled) {
                    return Err(format!("input {name:?} has layout {form:?}"));
                }
                channels += shape.last().copied().unwrap_or(0);
                if let Some((f, s)) = &first {
                    if *f != form || s[..s.len() - 1] != shape[..shape.len() - 1] {
                        return Err("inputs differ in layout or in their non-channel dims".into());
                    }
                } else {
                    first = Some((form, shape.clone()));
                }
                ids.push(id);
            }
            let (form, mut shape) = first.ok_or("no inputs")?;
            let rank = if form == Form::Nchw { 4 } else { 2 };
            let axis = attrs.int("axis", 1);
            if axis != 1 && axis != 1 - rank {
                return Err(format!("axis {axis} (only the channel axis 1 is imported)"));
            }
            if let Some(c) = shape.last_mut() {
                *c = channels;
            }
            let id = imp.g.concat(imp.fresh(label), &ids);
            Val::Act { id, form, shape }
        }
        "GlobalAveragePool" => {
            let (id, shape) = imp.nchw_act(&need(0)?)?;
            let id = imp.g.global_avg_pool(imp.fresh(label), id);
            Val::Act {
                id,
                form: Form::Pooled,
                shape: vec![shape[2]],
            }
        }
        "AveragePool" | "MaxPool" => window::pool(imp, n, &attrs, op, label)?,
        "Flatten" | "Reshape" => {
            if op == "Flatten" && attrs.int("axis", 1) != 1 {
                return Err(format!(
                    "axis {} (only axis 1 is imported)",
                    attrs.int("axis", 1)
                ));
            }
            let (id, form, shape) = imp.act(&need(0)?)?;
            let total: usize = shape.iter().product();
            if op == "Reshape" {
                let target = imp.constant(&need(1)?)?;
                let t = target
                    .i64s()
                    .ok_or("the shape input is not an integer tensor")?;
                let ok = matches!(t, [a, b] if (*a == 0 || *a == -1 || *a == 1)
                    && (*b == -1 || usize::try_from(*b).ok() == Some(total))
                    && !(*a == -1 && *b == -1));
                if !ok {
                    return Err(format!(
                        "reshape to {t:?} (only [N, −1] flattening is imported)"
                    ));
                }
            }
            match form {
                Form::Flat | Form::Pooled => Val::Act {
                    id,
                    form: Form::Flat,
                    shape: vec![total],
                },
                Form::FlatChw(chw) => Val::Act {
                    id,
                    form: Form::FlatChw(chw),
                    shape: vec![total],
                },
                Form::Nhwc => {
                    let id = imp.g.flatten(imp.fresh(label), id);
                    Val::Act {
                        id,
                        form: Form::Flat,
                        shape: vec![total],
                    }
                }
                Form::Nchw => {
                    let id = imp.g.flatten(imp.fresh(label), id);
                    let form = if shape[0] * shape[1] == 1 {
                        Form::Flat
                    } else {
                        Form::FlatChw([shape[2], shape[0], shape[1]])
                    };
                    Val::Act {
                        id,
                        form,
                        shape: vec![total],
                    }
                }
            }
        }
        "Transpose" => {
            let (id, form, shape) = imp.act(&need(0)?)?;
            let perm = attrs.ints("perm").unwrap_or(&[]);
            match (form, perm) {
                (Form::Nchw, [0, 2, 3, 1]) => Val::Act {
                    id,
                    form: Form::Nhwc,
                    shape,
                },
                (Form::Nhwc, [0, 3, 1, 2]) => Val::Act {
                    id,
                    form: Form::Nchw,
                    shape,
                },
                _ => {
                    return Err(format!(
                        "perm {perm:?} on a {form:?} value (only NCHW↔NHWC transposes are imported)"
                    ));
                }
            }
        }
        "Gemm" => {
            if attrs.int("transA", 0) != 0 {
                return Err("transA = 1".into());
            }
            let b = imp.constant(&need(1)?)?.clone();
            let c = inp(2).map(|t| imp.constant(&t).cloned()).transpose()?;
            let alpha = attrs.float("alpha", 1.0);
            let beta = attrs.float("beta", 1.0);
            linear(
                imp,
                &need(0)?,
                &b,
                attrs.int("transB", 0) != 0,
                alpha,
                c.as_ref(),
                beta,
                label,
            )?
        }
        "MatMul" => {
            let b = imp.constant(&need(1)?)?.clone();
            linear(imp, &need(0)?, &b, false, 1.0, None, 1.0, label)?
        }
        _ => return Err("op type not supported by the importer".into()),
    };
    let extra = n.output.iter().skip(1).filter(|o| !o.is_empty());
    if op != "Dropout" && op != "MaxPool" && extra.clone().count() > 0 {
        return Err("more than one output".into());
    }
    for a in attrs.names() {
        if !known_attr(op, a) {
            return Err(format!("attribute {a:?} is not understood"));
        }
    }
    imp.vals.insert(out, val);
    Ok(())
}

/// Attributes the importer reads (or checks) per op; any other one is refused, not ignored.
fn known_attr(op: &str, a: &str) -> bool {
    let list: &[&str] = match op {
        "Constant" => &[
            "value",
            "value_float",
            "value_floats",
            "value_int",
            "value_ints",
        ],
        "Dropout" => &["seed", "ratio"],
        "Conv" => &[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ],
        "BatchNormalization" => &["epsilon", "momentum", "training_mode"],
        "Clip" => &["min", "max"],
        "Concat" => &["axis"],
        "AveragePool" => &[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "kernel_shape",
            "pads",
            "strides",
            "dilations",
        ],
        "MaxPool" => &[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ],
        "Flatten" => &["axis"],
        "Reshape" => &["allowzero"],
        "Transpose" => &["perm"],
        "Gemm" => &["alpha", "beta", "transA", "transB"],
        _ => &[],
    };
    list.contains(&a)
}

fn constant(attrs: &Attrs<'_>, max: usize) -> R<Val> {
    if let Some(t) = attrs.tensor("value") {
        return Ok(Val::Const(tensor::decode(t, max)?));
    }
    let c = if let Some(v) = attrs.ints("value_ints") {
        Const {
            dims: vec![v.len()],
            data: Data::I64(v.to_vec()),
        }
    } else if attrs.names().any(|a| a == "value_int") {
        Const {
            dims: vec![],
            data: Data::I64(vec![attrs.int("value_int", 0)]),
        }
    } else if attrs.names().any(|a| a == "value_float") {
        Const {
            dims: vec![],
            data: Data::F32(vec![attrs.float("value_float", 0.0)]),
        }
    } else {
        return Err("no value attribute that the importer reads".into());
    };
    Ok(Val::Const(c))
}

fn batch_norm(imp: &mut Importer<'_>, n: &NodeProto, attrs: &Attrs<'_>, label: &str) -> R<Val> {
    if attrs.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("training mode (inference graphs only)".into());
    }
    let xname = n.input.first().ok_or("no input")?;
    let (x, form, shape) = imp.act(xname)?;
    let c = *shape.last().ok_or("empty shape")?;
    let mut p = Vec::new();
    for k in 1..5 {
        let t = imp.constant(n.input.get(k).ok_or(format!("input {k} is missing"))?)?;
        if t.len() != c {
            return Err(format!("input {k} has {} values for {c} channels", t.len()));
        }
        p.push(t.f32s());
    }
    let [gamma, beta, mean, var] = <[Vec<f32>; 4]>::try_from(p).map_err(|_| "inputs")?;
    let bn = BatchNorm {
        gamma,
        beta,
        mean,
        var,
        eps: attrs.float("epsilon", 1e-5),
    };
    let fusable = imp.single_use(xname);
    match (form, &mut imp.g.node_mut(x).map_err(|e| e.to_string())?.op) {
        (Form::Nchw, FloatOp::Conv2d(cv))
            if fusable && cv.batch_norm.is_none() && cv.activation == Activation::None =>
        {
            cv.batch_norm = Some(bn);
            return Ok(Val::Act { id: x, form, shape });
        }
        (Form::Flat | Form::Pooled, FloatOp::Linear(l))
            if fusable && l.activation == Activation::None =>
        {
            // y = γ·(Wx + b − mean)/√(var + ε) + β, folded in f64 and rounded once.
            let [out, inn] = l.weight_shape;
            let bias = l.bias.clone().unwrap_or_else(|| vec![0.0; out]);
            let mut nb = vec![0.0f32; out];
            for r in 0..out {
                let k = f64::from(bn.gamma[r]) / (f64::from(bn.var[r]) + f64::from(bn.eps)).sqrt();
                for v in &mut l.weight[r * inn..(r + 1) * inn] {
                    *v = (f64::from(*v) * k) as f32;
                }
                nb[r] = (f64::from(bn.beta[r]) + (f64::from(bias[r]) - f64::from(bn.mean[r])) * k)
                    as f32;
            }
            l.bias = Some(nb);
            return Ok(Val::Act { id: x, form, shape });
        }
        _ => {}
    }
    if form != Form::Nchw {
        return Err(format!(
            "batch norm on a {form:?} value that is not a linear layer's sole output"
        ));
    }
    // A standalone batch norm: a depthwise 1×1 conv with weight 1 that carries it.
    let dw = Conv2d::new(vec![1.0; c], [c, 1, 1, 1])
        .with_groups(c)
        .with_batch_norm(bn);
    let id = imp.g.conv2d(imp.fresh(label), x, dw);
    Ok(Val::Act { id, form, shape })
}

/// Fuses `act` into the producer of `x` (a conv, linear or add with no activation and no other
/// consumer).
fn activation(imp: &mut Importer<'_>, xname: &str, act: Activation) -> R<Val> {
    let (x, form, shape) = imp.act(xname)?;
    let fusable = imp.single_use(xname);
    let slot = match &mut imp.g.node_mut(x).map_err(|e| e.to_string())?.op {
        FloatOp::Conv2d(c) => Some(&mut c.activation),
        FloatOp::Linear(l) => Some(&mut l.activation),
        FloatOp::Add { activation } => Some(activation),
        _ => None,
    };
    match slot {
        Some(a) if fusable && *a == Activation::None => {
            *a = act;
            Ok(Val::Act { id: x, form, shape })
        }
        _ => Err("an activation must follow a Conv, Gemm/MatMul or Add with no activation yet and no other consumer".into()),
    }
}

fn add(imp: &mut Importer<'_>, a: &str, b: &str, label: &str) -> R<Val> {
    match (imp.val(a)?.clone(), imp.val(b)?.clone()) {
        (
            Val::Act {
                id: ia,
                form: fa,
                shape: sa,
            },
            Val::Act {
                id: ib,
                form: fb,
                shape: sb,
            },
        ) => {
            if fa != fb || sa != sb || matches!(fa, Form::Nhwc | Form::FlatChw(_)) {
                return Err(format!(
                    "inputs {fa:?} {sa:?} and {fb:?} {sb:?} (same layout and shape, no broadcasting)"
                ));
            }
            let id = imp.g.add(imp.fresh(label), ia, ib, Activation::None);
            Ok(Val::Act {
                id,
                form: fa,
                shape: sa,
            })
        }
        (Val::Act { .. }, Val::Const(c)) => add_bias(imp, a, &c),
        (Val::Const(c), Val::Act { .. }) => add_bias(imp, b, &c),
        _ => Err("both inputs are constants".into()),
    }
}

/// `x + c` where `x` is a conv or linear layer's sole output: `c` (one value per channel, or a
/// scalar) joins its bias.
fn add_bias(imp: &mut Importer<'_>, xname: &str, c: &Const) -> R<Val> {
    let (x, form, shape) = imp.act(xname)?;
    let ch = *shape.last().ok_or("empty shape")?;
    let per_channel = c.dims.iter().filter(|&&d| d != 1).count() <= 1
        && (c.len() == ch || c.len() == 1)
        && match form {
            Form::Nchw => c.dims.len() <= 1 || c.dims.iter().rev().take(2).all(|&d| d == 1),
            _ => true,
        };
    if !per_channel || !imp.single_use(xname) {
        return Err(format!(
            "adding a constant of dims {:?} that is not the sole consumer's per-channel bias",
            c.dims
        ));
    }
    let vals = c.f32s();
    let node = imp.g.node_mut(x).map_err(|e| e.to_string())?;
    let (bias, ok) = match &mut node.op {
        FloatOp::Conv2d(cv) => (
            &mut cv.bias,
            cv.batch_norm.is_none() && cv.activation == Activation::None,
        ),
        FloatOp::Linear(l) => (&mut l.bias, l.activation == Activation::None),
        _ => return Err("a constant added to something other than a conv or linear layer".into()),
    };
    if !ok {
        return Err("a bias added after the layer's batch norm or activation".into());
    }
    let b = bias.get_or_insert_with(|| vec![0.0; ch]);
    for (i, v) in b.iter_mut().enumerate() {
        *v += vals[if vals.len() == 1 { 0 } else { i }];
    }
    Ok(Val::Act { id: x, form, shape })
}

#[allow(clippy::too_many_arguments)]
fn linear(
    imp: &mut Importer<'_>,
    xname: &str,
    b: &Const,
    trans_b: bool,
    alpha: f32,
    c: Option<&Const>,
    beta: f32,
    label: &str,
) -> R<Val> {
    let (x, form, shape) = imp.act(xname)?;
    if !matches!(form, Form::Flat | Form::Pooled | Form::FlatChw(_)) {
        return Err(format!(
            "input layout {form:?} (a flat [N, C] input expected)"
        ));
    }
    let inn = shape[0];
    let [r, k] = <[usize; 2]>::try_from(b.dims.as_slice())
        .map_err(|_| format!("weight dims {:?} (2-D expected)", b.dims))?;
    let (out, src_in) = if trans_b { (r, k) } else { (k, r) };
    if src_in != inn {
        return Err(format!(
            "weight dims {:?} for an input of {inn} features",
            b.dims
        ));
    }
    let bw = b.f32s();
    let mut w = vec![0.0f32; out * inn];
    for o in 0..out {
        for i in 0..inn {
            let v = if trans_b {
                bw[o * inn + i]
            } else {
                bw[i * out + o]
            };
            w[o * inn + i] = v * alpha;
        }
    }
    if let Form::FlatChw(chw) = form {
        w = linear_from_nchw_flatten(&w, out, chw);
    }
    let mut l = Linear::new(w, [out, inn]);
    if let Some(c) = c {
        let v = c.f32s();
        if !(v.len() == out || v.len() == 1) || c.dims.iter().filter(|&&d| d != 1).count() > 1 {
            return Err(format!("bias C of dims {:?} for {out} outputs", c.dims));
        }
        l = l.with_bias(
            (0..out)
                .map(|o| beta * v[if v.len() == 1 { 0 } else { o }])
                .collect(),
        );
    }
    let id = imp.g.linear(imp.fresh(label), x, l);
    Ok(Val::Act {
        id,
        form: Form::Flat,
        shape: vec![out],
    })
}
