//! Emission of the `Int8Model` from a [`QuantPlan`] (paper §2: the integer-only graph).
//!
//! Node → runtime mapping:
//!
//! | float node | runtime tensors | runtime op |
//! |---|---|---|
//! | Input `x` | `x` (F32) and `x:u8` (U8) | `Quantize` |
//! | Conv2d | U8 | `Conv2d` (OHWI weights, int32 bias, per-channel multipliers, clamp) |
//! | Linear | U8 | `FullyConnected` |
//! | Add | U8 | `Add` with the fused clamp |
//! | Concat / AvgPool / GlobalAvgPool / MaxPool | U8 | same-named op |
//! | Flatten | U8 (input's params) | `Reshape` |
//! | Output `y` | `y` (F32) | `Dequantize`, listed in `Int8Model::outputs` |
//!
//! Every U8 tensor is named after its float node, so reports can join the two. The model's
//! [`Int8Model::rounding`] is [`ExportOptions::target`]: the `.qat8` runtime computes every
//! target's arithmetic (qat-core's, the same the simulation runs).

use qat_int8_runtime::{self as rt, Clamp, DType, Int8Model, Op, TensorId, TensorInfo};

use crate::error::ExportError;
use crate::ir::{Activation, FloatGraph, FloatOp};
use crate::passes::fuse;
use crate::plan::{ExportOptions, QuantPlan};

/// Name of the U8 tensor that holds the quantized graph input `input_name`.
pub fn quantized_input_name(input_name: &str) -> String {
    format!("{input_name}:u8")
}

impl QuantPlan {
    /// The runtime tensor of each float node: its U8 output, or the F32 tensor for `Output`
    /// nodes. (The Input node maps to its U8 tensor; the F32 graph input is `model.input`.)
    pub fn node_tensors(&self) -> Vec<TensorId> {
        let mut next = 0;
        self.graph
            .nodes
            .iter()
            .map(|n| {
                let t = match n.op {
                    FloatOp::Input { .. } => next + 1,
                    _ => next,
                };
                next = t + 1;
                t
            })
            .collect()
    }

    /// Emits the integer-only model (see the module docs for the mapping), requantizing in the
    /// plan's target's arithmetic (every [`qat_core::Target`]).
    pub fn to_int8_model(&self) -> Result<Int8Model, ExportError> {
        let rounding = self.target();
        let mut tensors = Vec::new();
        let mut ops = Vec::new();
        let mut outputs = Vec::new();
        let mut input = 0;
        let node_t = self.node_tensors();
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let shape = self.shapes[i].clone();
            let params = self.act_params[i];
            let u8_tensor = |name: String| TensorInfo {
                name,
                shape: shape.clone(),
                dtype: DType::U8,
                quant: Some(params),
            };
            let src = |k: usize| node_t[node.inputs[k].0];
            let out = node_t[i];
            match &node.op {
                FloatOp::Input { .. } => {
                    input = tensors.len();
                    tensors.push(TensorInfo {
                        name: node.name.clone(),
                        shape: shape.clone(),
                        dtype: DType::F32,
                        quant: None,
                    });
                    tensors.push(u8_tensor(quantized_input_name(&node.name)));
                    ops.push(Op::Quantize { input, output: out });
                    continue;
                }
                FloatOp::Output => {
                    tensors.push(TensorInfo {
                        name: node.name.clone(),
                        shape,
                        dtype: DType::F32,
                        quant: None,
                    });
                    ops.push(Op::Dequantize {
                        input: src(0),
                        output: out,
                    });
                    outputs.push(out);
                    continue;
                }
                _ => tensors.push(u8_tensor(node.name.clone())),
            }
            let lq = self.layers[i].as_ref();
            let op = match (&node.op, lq) {
                (FloatOp::Conv2d(c), Some(lq)) => Op::Conv2d(rt::Conv2d {
                    input: src(0),
                    output: out,
                    weights: lq.weights.to_runtime(),
                    weight_shape: c.weight_shape,
                    bias: lq.bias.clone(),
                    stride: c.stride,
                    padding: c.padding,
                    dilation: c.dilation,
                    groups: c.groups,
                    multipliers: lq.multipliers.clone(),
                    clamp: lq.clamp,
                }),
                (FloatOp::Linear(l), Some(lq)) => Op::FullyConnected(rt::FullyConnected {
                    input: src(0),
                    output: out,
                    weights: lq.weights.to_runtime(),
                    weight_shape: l.weight_shape,
                    bias: lq.bias.clone(),
                    multipliers: lq.multipliers.clone(),
                    clamp: lq.clamp,
                }),
                (FloatOp::Add { activation }, _) => Op::Add {
                    a: src(0),
                    b: src(1),
                    output: out,
                    clamp: fuse::activation_clamp(*activation, &params, self.target()),
                },
                (FloatOp::Concat, _) => Op::Concat {
                    inputs: (0..node.inputs.len()).map(src).collect(),
                    output: out,
                },
                (FloatOp::AvgPool(p), _) => Op::AvgPool2d(pool2d(src(0), out, p)),
                (FloatOp::GlobalAvgPool, _) => Op::GlobalAvgPool {
                    input: src(0),
                    output: out,
                },
                (FloatOp::MaxPool(p), _) => Op::MaxPool2d(pool2d(src(0), out, p)),
                // Flatten, and (unreachable by construction) a conv/linear without its plan
                // entry or an Input/Output handled above: a data-preserving reshape.
                _ => Op::Reshape {
                    input: src(0),
                    output: out,
                },
            };
            ops.push(op);
        }
        Ok(Int8Model {
            name: self.graph.name.clone(),
            tensors,
            ops,
            input,
            outputs,
            rounding,
        })
    }

    /// The clamp of node `i` (conv/linear/add), `None` for other nodes.
    pub fn clamp_of(&self, i: usize) -> Option<Clamp> {
        match (&self.graph.nodes.get(i)?.op, self.layers.get(i)?) {
            (_, Some(lq)) => Some(lq.clamp),
            (FloatOp::Add { activation }, None) => Some(fuse::activation_clamp(
                *activation,
                &self.act_params[i],
                self.target(),
            )),
            _ => None,
        }
    }
}

/// Exports a float graph (ranges set) to an integer-only model: [`QuantPlan::new`], then
/// [`QuantPlan::to_int8_model`], then the runtime's `Int8Model::validate` on the result.
pub fn export(graph: &FloatGraph, opts: &ExportOptions) -> Result<Int8Model, ExportError> {
    let model = QuantPlan::new(graph, opts)?.to_int8_model()?;
    model.validate()?;
    Ok(model)
}

/// Short label of an activation for reports (`none`, `relu`, `relu6`).
pub fn activation_label(act: Activation) -> &'static str {
    match act {
        Activation::None => "none",
        Activation::Relu => "relu",
        Activation::Relu6 => "relu6",
    }
}

/// The runtime's pool from `input` to `output` over the IR's window `p`.
fn pool2d(input: TensorId, output: TensorId, p: &crate::ir::Pool2d) -> rt::Pool2d {
    rt::Pool2d {
        input,
        output,
        kernel: p.kernel,
        stride: p.stride,
        padding: p.padding,
    }
}

#[cfg(test)]
mod tests {
    use qat_core::Target;
    use qat_int8_runtime::{Executor, Rounding};

    use super::*;
    use crate::ir::Linear;

    /// x[3] → linear → y, with ranges set.
    fn tiny() -> FloatGraph {
        let mut g = FloatGraph::new("tiny");
        let x = g.input("x", &[3]);
        let fc = g.linear(
            "fc",
            x,
            Linear::new(vec![0.3, -0.7, 0.5, 0.9, 0.1, -0.2], [2, 3]),
        );
        g.output("y", fc);
        g.set_range(x, -1.0, 1.0).unwrap();
        g.set_range(fc, -1.5, 1.5).unwrap();
        g
    }

    #[test]
    fn the_model_carries_the_targets_rounding() {
        let g = tiny();
        assert_eq!(ExportOptions::default().target, Target::Qat);
        for rounding in Rounding::ALL {
            let opts = ExportOptions {
                target: Target::from(rounding),
                ..ExportOptions::default()
            };
            let model = export(&g, &opts).unwrap();
            assert_eq!(model.rounding, rounding);
            let back = Int8Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
            assert_eq!(back.rounding, rounding);
            let x = ndarray::ArrayD::from_shape_vec(vec![1, 3], vec![0.2f32, -0.4, 0.9]).unwrap();
            assert_eq!(
                Executor::new(&model).unwrap().run(x.view()).unwrap()[0].shape(),
                &[1, 2]
            );
        }
    }

    /// Every target emits a `.qat8` model that the runtime runs in that target's arithmetic: its
    /// codes equal the plan's simulation.
    #[test]
    fn every_target_emits_qat8_equal_to_its_simulation() {
        let x = ndarray::ArrayD::from_shape_vec(
            vec![4, 3],
            vec![
                0.2f32, -0.4, 0.9, 0.5, 0.5, -1.0, 0.05, 0.0, 0.33, -0.7, 0.8, 0.1,
            ],
        )
        .unwrap();
        for target in Target::ALL {
            let opts = ExportOptions {
                target,
                ..ExportOptions::default()
            };
            let plan = QuantPlan::new(&tiny(), &opts).unwrap();
            let model = plan.to_int8_model().unwrap();
            assert_eq!(model.rounding, target);
            let back = Int8Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
            assert_eq!(back.rounding, target);
            let sim = crate::simulate::simulate(&plan, x.view()).unwrap();
            let y = Executor::new(&model).unwrap().run(x.view()).unwrap();
            let fc = plan
                .graph
                .nodes
                .iter()
                .position(|n| n.name == "fc")
                .unwrap();
            assert_eq!(y[0], sim[fc], "{target}");
        }
    }

    /// Options serialized before the target existed carry `rounding`; they read as its target.
    #[test]
    fn options_with_the_old_rounding_field_deserialize_as_targets() {
        let old = r#"{"fold_batch_norm":true,"avg_pool_own_params":false}"#;
        let opts: ExportOptions = serde_json::from_str(old).unwrap();
        assert_eq!(opts, ExportOptions::default());
        for (name, target) in [("Single", Target::Qat), ("Gemmlowp", Target::Tflite)] {
            let old = format!(
                r#"{{"fold_batch_norm":true,"avg_pool_own_params":false,"rounding":"{name}"}}"#
            );
            let opts: ExportOptions = serde_json::from_str(&old).unwrap();
            assert_eq!(opts.target, target);
        }
        for target in Target::ALL {
            let json = serde_json::to_string(&ExportOptions {
                target,
                ..ExportOptions::default()
            })
            .unwrap();
            let back: ExportOptions = serde_json::from_str(&json).unwrap();
            assert_eq!(back.target, target);
        }
    }
}
