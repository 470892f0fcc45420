//! Lowering of a [`FloatGraph`] to a float ONNX graph (batch norm folded first, or kept as
//! `BatchNormalization` nodes).

use super::graph::{Attr, Graph, TO_NCHW, TO_NHWC};
use super::proto::tensor_proto::DataType;
use super::qdq::{conv_attrs, window_attrs};
use crate::error::GraphError;
use crate::ir::{Activation, FloatGraph, FloatOp, oihw_from_ohwi};
use crate::passes::bn_fold::fold_graph_batch_norms;

fn spatial(shape: &[usize]) -> bool {
    shape.len() == 3
}

/// `act(x)`: `Relu`, `Clip(0, 6)`, or `x` itself.
fn activation(g: &mut Graph, x: String, act: Activation, name: &str) -> String {
    match act {
        Activation::None => x,
        Activation::Relu => g.apply("Relu", &[&x], &format!("{name}/relu"), vec![]),
        Activation::Relu6 => {
            let lo = g.f32s(&format!("{name}/min"), &[], &[0.0]);
            let hi = g.f32s(&format!("{name}/max"), &[], &[6.0]);
            g.apply("Clip", &[&x, &lo, &hi], &format!("{name}/relu6"), vec![])
        }
    }
}

/// Writes `graph` (validated; batch norms folded when `fold_bn`, else each a
/// `BatchNormalization` node between its conv and its activation) as float ONNX: NHWC f32 input,
/// NCHW inside, graph outputs in the float graph's layout (NHWC, or `[N, C]`), named after the
/// `Output` nodes. Returns the bytes and the input's name.
pub(super) fn lower(graph: &FloatGraph, fold_bn: bool) -> Result<(Vec<u8>, String), GraphError> {
    let shapes = graph.validate()?;
    let graph = if fold_bn {
        fold_graph_batch_norms(graph)
    } else {
        graph.clone()
    };
    let mut g = Graph::default();
    let mut vals: Vec<String> = Vec::with_capacity(graph.nodes.len());
    let mut input_name = String::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let name = node.name.clone();
        let inp = |k: usize| vals[node.inputs[k].0].clone();
        let in_shape = |k: usize| shapes[node.inputs[k].0].clone();
        let v = match &node.op {
            FloatOp::Input { shape } => {
                let x = g.name(&name);
                g.input(&x, DataType::Float, shape);
                input_name = x.clone();
                if spatial(shape) {
                    g.transpose(&x, &format!("{name}/nchw"), TO_NCHW)
                } else {
                    x
                }
            }
            FloatOp::Conv2d(c) => {
                let [o, kh, kw, ci] = c.weight_shape;
                let w = g.f32s(
                    &format!("{name}/weight"),
                    &[o, ci, kh, kw],
                    &oihw_from_ohwi(&c.weight, c.weight_shape),
                );
                let b = g.f32s(
                    &format!("{name}/bias"),
                    &[o],
                    &c.bias.clone().unwrap_or_else(|| vec![0.0; o]),
                );
                let attrs = conv_attrs([kh, kw], c.stride, c.padding, c.dilation, c.groups);
                let mut y = g.apply("Conv", &[&inp(0), &w, &b], &name, attrs);
                if let Some(bn) = &c.batch_norm {
                    let p = |g: &mut Graph, what: &str, v: &[f32]| {
                        g.f32s(&format!("{name}/bn/{what}"), &[o], v)
                    };
                    let (sc, sh) = (p(&mut g, "gamma", &bn.gamma), p(&mut g, "beta", &bn.beta));
                    let (m, v) = (p(&mut g, "mean", &bn.mean), p(&mut g, "var", &bn.var));
                    y = g.apply(
                        "BatchNormalization",
                        &[&y, &sc, &sh, &m, &v],
                        &format!("{name}/bn"),
                        vec![("epsilon", Attr::Float(bn.eps))],
                    );
                }
                activation(&mut g, y, c.activation, &name)
            }
            FloatOp::Linear(l) => {
                let [o, _] = l.weight_shape;
                let w = g.f32s(&format!("{name}/weight"), &l.weight_shape, &l.weight);
                let b = g.f32s(
                    &format!("{name}/bias"),
                    &[o],
                    &l.bias.clone().unwrap_or_else(|| vec![0.0; o]),
                );
                let y = g.apply(
                    "Gemm",
                    &[&inp(0), &w, &b],
                    &name,
                    vec![("transB", Attr::Int(1))],
                );
                activation(&mut g, y, l.activation, &name)
            }
            FloatOp::Add { activation: act } => {
                let y = g.apply("Add", &[&inp(0), &inp(1)], &name, vec![]);
                activation(&mut g, y, *act, &name)
            }
            FloatOp::Concat => {
                let xs: Vec<String> = (0..node.inputs.len()).map(inp).collect();
                let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
                // Channels: axis 1 of NCHW and of [N, C].
                g.apply("Concat", &refs, &name, vec![("axis", Attr::Int(1))])
            }
            FloatOp::AvgPool(p) => {
                let mut attrs = window_attrs(p.kernel, p.stride, p.padding);
                attrs.push(("count_include_pad", Attr::Int(0)));
                g.apply("AveragePool", &[&inp(0)], &name, attrs)
            }
            FloatOp::MaxPool(p) => g.apply(
                "MaxPool",
                &[&inp(0)],
                &name,
                window_attrs(p.kernel, p.stride, p.padding),
            ),
            FloatOp::GlobalAvgPool => {
                let y = g.apply(
                    "GlobalAveragePool",
                    &[&inp(0)],
                    &format!("{name}/nc11"),
                    vec![],
                );
                g.apply("Flatten", &[&y], &name, vec![("axis", Attr::Int(1))])
            }
            FloatOp::Flatten => {
                // The float graph flattens in NHWC order.
                let s = in_shape(0);
                let x = if spatial(&s) && s[..2] != [1, 1] {
                    g.transpose(&inp(0), &format!("{name}/nhwc"), TO_NHWC)
                } else {
                    inp(0)
                };
                g.apply("Flatten", &[&x], &name, vec![("axis", Attr::Int(1))])
            }
            FloatOp::Output => {
                let s = in_shape(0);
                let out = g.name(&name);
                if spatial(&s) {
                    g.transpose_into(&inp(0), &out, TO_NHWC);
                } else {
                    g.node("Identity", &[&inp(0)], &out, vec![]);
                }
                g.output(&out, DataType::Float, &shapes[i]);
                out
            }
        };
        vals.push(v);
    }
    let doc = if fold_bn {
        "qat float export (batch norm folded)"
    } else {
        "qat float export (batch norm kept)"
    };
    let bytes = g.finish(&graph.name, doc);
    Ok((bytes, input_name))
}
