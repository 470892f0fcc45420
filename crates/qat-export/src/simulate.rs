//! The simulation: the plan computed in its target's arithmetic, node by node, in integer codes.
//!
//! It is the integer model the target's runtime computes, written independently of
//! qat-int8-runtime's kernels: the conv, linear and pool loops are the float interpreter's
//! ([`crate::interp`]), run on centred codes `q − Z` and weight codes `q_w − Z_w` where every
//! f64 sum is an exact integer, and every rounding — the graph input's quantization, the conv/FC
//! output stage on the int32 accumulator (bias included), the add, the concat rescale and the
//! average pools — is the target's, from qat-core ([`qat_core::target`]), the one place that
//! arithmetic lives. Its codes are what the target's runtime produces for the exported model, code
//! for code; the QAT forward pass requantizes on the same accumulator grid in the same arithmetic.
//!
//! (The float twin — folded fake-quantized weights, fake-quantized activations, what a float QAT
//! forward computes before it requantizes on the accumulator grid — is
//! [`QuantPlan::simulation_graph`] run by [`crate::interp::run`] with
//! [`QuantPlan::fake_quant_points`].)

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use qat_core::QuantError;

use crate::error::GraphError;
use crate::interp::{self, conv2d_with, global_pool_with, linear_with, nhwc, pool_with};
use crate::ir::FloatOp;
use crate::plan::{LayerQuant, QuantPlan};

/// Every node's output for a batch `[N, …]` (index = node id): the simulated codes of
/// [`simulate_codes`] as reals `S·(q − Z)` with each node's params (an `Output` node: its input's
/// values), i.e. `Vec<ArrayD<f32>>`, one `[N, …per-sample shape]` array per node.
///
/// ```
/// use ndarray::ArrayD;
/// use qat_export::{FloatGraph, ExportOptions, QuantPlan, simulate::simulate, ir::Linear};
/// let mut g = FloatGraph::new("fc");
/// let x = g.input("x", &[2]);
/// let y = g.linear("fc", x, Linear::new(vec![1.0, 0.5], [1, 2]));
/// g.output("y", y);
/// g.set_range(x, 0.0, 2.55)?;
/// g.set_range(y, 0.0, 5.1)?;
/// let plan = QuantPlan::new(&g, &ExportOptions::default())?;
/// let input = ArrayD::from_shape_vec(vec![1, 2], vec![1.004, 2.0])?;
/// let sim = simulate(&plan, input.view())?;
/// // x → codes 100, 200 (S = 0.01); 1.0 + 0.5·2.0 = 2.0, code 100 on the output grid S = 0.02
/// assert!((sim[y.0][[0, 0]] - 2.0).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn simulate(
    plan: &QuantPlan,
    input: ArrayViewD<'_, f32>,
) -> Result<Vec<ArrayD<f32>>, GraphError> {
    let codes = simulate_codes(plan, input)?;
    Ok(codes
        .iter()
        .zip(&plan.act_params)
        .map(|(q, p)| q.mapv(|c| p.dequantize(c)))
        .collect())
}

/// Every node's codes for a batch `[N, …]` (index = node id; an `Output` node carries its input's
/// codes), in the plan's target arithmetic (see the module docs).
pub fn simulate_codes(
    plan: &QuantPlan,
    input: ArrayViewD<'_, f32>,
) -> Result<Vec<ArrayD<i32>>, GraphError> {
    interp::check_input(&plan.graph, &plan.shapes, input.shape())?;
    let mut codes: Vec<ArrayD<i32>> = Vec::with_capacity(plan.graph.nodes.len());
    for (i, node) in plan.graph.nodes.iter().enumerate() {
        let ins: Vec<&ArrayD<i32>> = node.inputs.iter().map(|j| &codes[j.0]).collect();
        let y = eval_codes(plan, i, &ins, input.view())?;
        codes.push(y);
    }
    Ok(codes)
}

/// Node `i` of the plan on input codes `ins` (batched; for the `Input` node, `input` is the `f32`
/// batch and `ins` is empty): its output codes in the plan's target arithmetic. The fidelity
/// report feeds it the integer model's own codes (the isolated comparison).
pub fn eval_codes(
    plan: &QuantPlan,
    i: usize,
    ins: &[&ArrayD<i32>],
    input: ArrayViewD<'_, f32>,
) -> Result<ArrayD<i32>, GraphError> {
    let node = &plan.graph.nodes[i];
    let target = plan.target();
    let p = plan.act_params[i];
    let arg = |k: usize| {
        ins.get(k).copied().ok_or_else(|| GraphError::Arity {
            node: node.name.clone(),
            op: node.op.kind(),
            expected: "as validated",
            got: ins.len(),
        })
    };
    let n = match node.op {
        FloatOp::Input { .. } => input.shape().first().copied().unwrap_or(0),
        _ => arg(0)?.shape().first().copied().unwrap_or(0),
    };
    let mut out_shape = vec![n];
    out_shape.extend_from_slice(&plan.shapes[i]);
    let stage_err = |e: QuantError| GraphError::Param {
        node: node.name.clone(),
        what: "target arithmetic",
        reason: e.to_string(),
    };
    let shaped = |data: Vec<i32>| {
        ArrayD::from_shape_vec(IxDyn(&out_shape), data).map_err(|e| GraphError::Shape {
            node: node.name.clone(),
            op: node.op.kind(),
            reason: e.to_string(),
        })
    };
    let centred = |k: usize| -> Result<Vec<f64>, GraphError> {
        let z = plan.input_params(i, k).zero_point();
        Ok(arg(k)?.iter().map(|&q| (q - z) as f64).collect())
    };
    match (&node.op, plan.layers[i].as_ref()) {
        (FloatOp::Input { .. }, _) => Ok(input.mapv(|x| target.quantize(x, &p))),
        (FloatOp::Conv2d(c), Some(lq)) => {
            let finish = output_stage(plan, i, lq, false);
            let out = conv2d_with(
                &centred(0)?,
                nhwc(arg(0)?.shape()),
                c,
                &weight_codes(lq),
                &out_shape,
                finish,
            );
            shaped(out)
        }
        (FloatOp::Linear(l), Some(lq)) => {
            let finish = output_stage(plan, i, lq, true);
            let wf = weight_codes(lq);
            let out = linear_with(&centred(0)?, &wf, l.weight_shape, n, |_| 0.0, finish);
            shaped(out)
        }
        (FloatOp::Add { .. }, _) => {
            let stage = plan.add_stage(i).map_err(stage_err)?;
            let (a, b) = (arg(0)?, arg(1)?);
            shaped(a.iter().zip(b).map(|(&x, &y)| stage.apply(x, y)).collect())
        }
        (FloatOp::Concat, _) => {
            let parts = (0..ins.len())
                .map(|k| {
                    let stage = plan.rescale_stage(i, k).map_err(stage_err)?;
                    Ok(arg(k)?.mapv(|q| stage.apply(q)))
                })
                .collect::<Result<Vec<_>, GraphError>>()?;
            let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(out_shape.len() - 1), &views).map_err(|e| GraphError::Shape {
                node: node.name.clone(),
                op: node.op.kind(),
                reason: e.to_string(),
            })
        }
        (FloatOp::AvgPool(pool), _) => {
            let stage = plan.average_stage(i).map_err(stage_err)?;
            let xs: Vec<i32> = arg(0)?.iter().copied().collect();
            let out = pool_with(&xs, nhwc(arg(0)?.shape()), pool, &out_shape, |cells| {
                stage.apply(cells)
            });
            shaped(out)
        }
        (FloatOp::GlobalAvgPool, _) => {
            let stage = plan.average_stage(i).map_err(stage_err)?;
            let xs: Vec<i32> = arg(0)?.iter().copied().collect();
            shaped(global_pool_with(&xs, nhwc(arg(0)?.shape()), |cells| {
                stage.apply(cells)
            }))
        }
        (FloatOp::MaxPool(pool), _) => {
            let xs: Vec<i32> = arg(0)?.iter().copied().collect();
            // An all-padding window gives code 0, as the runtime's max pool.
            let out = pool_with(&xs, nhwc(arg(0)?.shape()), pool, &out_shape, |cells| {
                cells.iter().copied().max().unwrap_or(0)
            });
            shaped(out)
        }
        // Flatten, Output (and, unreachable by construction, a conv/linear without its plan
        // entry): the codes, reshaped.
        _ => shaped(arg(0)?.iter().copied().collect()),
    }
}

/// Weight codes centred on their zero points, `q_w − Z_w[c]`, in the layer's layout.
fn weight_codes(lq: &LayerQuant) -> Vec<f64> {
    let w = &lq.weights;
    let per = w.codes.len() / w.out_channels.max(1);
    w.codes
        .iter()
        .enumerate()
        .map(|(j, &q)| (q - w.channel(j / per.max(1)).zero_point()) as f64)
        .collect()
}

/// The conv/FC output stage of node `i`: the exact accumulator `Σ (q − Z)(q_w − Z_w)` (an integer
/// in f64) plus the int32 bias, wrapped to int32 as the runtime's accumulation, then the target's
/// requantization with the channel's multiplier and the fused clamp — for a fully-connected layer
/// (`fully_connected`) of a target that requantizes those in `f64`
/// ([`Target::fc_real_scale`](qat_core::target::Target::fc_real_scale)), that `f64` stage.
fn output_stage<'a>(
    plan: &'a QuantPlan,
    i: usize,
    lq: &'a LayerQuant,
    fully_connected: bool,
) -> impl Fn(f64, usize) -> i32 + Sync + 'a {
    let (target, z) = (plan.target(), plan.act_params[i].zero_point());
    let (s_in, s_out) = (plan.input_params(i, 0).scale(), plan.act_params[i].scale());
    let reals: Option<Vec<f64>> = fully_connected
        .then(|| {
            lq.weights
                .scales_per_channel()
                .iter()
                .map(|&sw| target.fc_real_scale(s_in, sw, s_out))
                .collect()
        })
        .flatten();
    move |dot, oc| {
        let acc = (dot as i64).wrapping_add(lq.bias[oc] as i64) as i32;
        if let Some(reals) = &reals {
            let (lo, hi) = (lq.clamp.lo as i32, lq.clamp.hi as i32);
            return qat_core::target::requantize_real(acc, reals[oc], z, lo, hi);
        }
        let m = if lq.multipliers.len() == 1 {
            lq.multipliers[0]
        } else {
            lq.multipliers[oc]
        };
        target.requantize(acc, m, z, lq.clamp.lo as i32, lq.clamp.hi as i32)
    }
}
