//! The quantization plan: every number export decides, computed once and shared by the
//! `Int8Model` emitter ([`crate::emit`]) and the simulation twin ([`crate::simulate`]), so the two
//! cannot disagree about parameters.
//!
//! [`QuantPlan::new`] runs, in order:
//! 1. structural validation ([`crate::validate`]);
//! 2. the refusal checks, collecting **every** offending node into one [`ExportError::Refused`]:
//!    uncalibrated ranges ([`Refusal::Uncalibrated`]), batch norm left unfolded with folding off
//!    ([`Refusal::UnfoldedBatchNorm`]), ops the runtime cannot run ([`Refusal::Unsupported`]),
//!    NaN/inf weights, biases or batch-norm parameters ([`Refusal::NonFinite`]);
//! 3. BN folding ([`crate::passes::bn_fold`]);
//! 4. activation parameters per node ([`crate::passes::ranges`]; max pool, flatten and output
//!    inherit their input's, and so do average pools unless
//!    [`ExportOptions::avg_pool_own_params`]: see `FloatOp::inherits_params`);
//! 5. per conv/linear: weight quantization, int32 bias, multipliers and the fused clamp
//!    ([`crate::passes::weights`], [`crate::passes::fuse`]), as [`ExportOptions::target`]'s runtime
//!    derives them from the `f32` scales the exported file carries;
//! 6. the target checks: every add, concat input and average pool must be computable by the
//!    target's runtime exactly as planned ([`Refusal::Target`] names the node and the reason).

use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::{AddStage, AverageStage, RescaleStage};
use qat_core::{QuantError, QuantParams, Target};
use qat_int8_runtime::Clamp;
use serde::{Deserialize, Serialize};

use crate::error::{ExportError, Refusal};
use crate::ir::{Activation, FloatGraph, FloatOp, Node, WeightQuant, WeightScheme};
use crate::passes::{bn_fold, fuse, ranges, weights};

/// Export options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Fold batch norm into the preceding conv (default `true`). With `false`, a conv that still
    /// carries batch norm is refused ([`Refusal::UnfoldedBatchNorm`]).
    pub fold_batch_norm: bool,
    /// Give `AvgPool`/`GlobalAvgPool` outputs their own observed range instead of their input's
    /// params (default `false`, see [`FloatOp::inherits_params`]). Use it for a graph whose
    /// training fake-quantized pool outputs with their own observers; the runtime then averages
    /// and rescales with one rounding (`M' = S_in/(S_out·count)`), within one LSB of the
    /// simulation and equal to it except on rounding ties.
    pub avg_pool_own_params: bool,
    /// The deployment target whose requantization arithmetic the plan, the simulation and the
    /// emitted model use ([`Target`]; default [`Target::Qat`], one rounding of `acc·M`, what the
    /// float simulation of QAT approximates best). `tflite` reproduces TFLite's builtin kernels
    /// (gemmlowp double rounding), `ort` and `xnnpack` onnxruntime's and XNNPACK's `f32`
    /// requantization; the multipliers are derived from the `f32` scales as that runtime derives
    /// them. Serialized options written before the field carry `"rounding": "Single"` or
    /// `"Gemmlowp"`, read as `qat` and `tflite`.
    #[serde(default, alias = "rounding")]
    pub target: Target,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            fold_batch_norm: true,
            avg_pool_own_params: false,
            target: Target::default(),
        }
    }
}

impl ExportOptions {
    /// Whether `op`'s output takes its input's params under these options.
    pub fn inherits_params(&self, op: &FloatOp) -> bool {
        match op {
            FloatOp::AvgPool(_) | FloatOp::GlobalAvgPool => !self.avg_pool_own_params,
            _ => op.inherits_params(),
        }
    }
}

/// Everything export decided for one conv or linear layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerQuant {
    /// Quantized folded weights.
    pub weights: weights::QuantizedWeights,
    /// The folded float bias (zeros without bias); the simulation adds it unquantized.
    pub float_bias: Vec<f32>,
    /// int32 bias, scale `S_in·S_w[c]`.
    pub bias: Vec<i32>,
    /// How many bias entries saturated the int32 range.
    pub bias_saturated: usize,
    /// `M[c] = S_in·S_w[c]/S_out` (one per channel, or one when weights are per tensor).
    pub multipliers: Vec<QuantizedMultiplier>,
    /// Fused activation clamp.
    pub clamp: Clamp,
}

/// The export plan (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantPlan {
    /// The graph after BN folding.
    pub graph: FloatGraph,
    /// Per-sample output shape of every node.
    pub shapes: Vec<Vec<usize>>,
    /// Output quantization parameters of every node (inherited ones resolved).
    pub act_params: Vec<QuantParams>,
    /// Conv/linear decisions, `None` for other nodes.
    pub layers: Vec<Option<LayerQuant>>,
    /// The options the plan was made with.
    pub options: ExportOptions,
}

fn non_finite(xs: &[f32]) -> bool {
    xs.iter().any(|v| !v.is_finite())
}

/// TFLite's int8 kernels (builtin and XNNPACK) take symmetric int8 weights with zero point 0 only.
fn weight_refusal(node: &Node, wq: WeightQuant, target: Target) -> Option<Refusal> {
    let int8_only = matches!(target, Target::Tflite | Target::Xnnpack);
    (int8_only && wq.scheme == WeightScheme::AsymmetricPerTensor).then(|| Refusal::Target {
        node: node.name.clone(),
        op: node.op.kind(),
        target,
        reason: "TFLite's int8 conv and fully connected take symmetric int8 weights \
                 (zero point 0); this layer has asymmetric uint8 weights"
            .into(),
    })
}

/// The refusals a conv and a linear layer share: the weight scheme `wq` on `target`, and
/// non-finite weights or bias.
fn layer_refusals(
    node: &Node,
    wq: WeightQuant,
    weight: &[f32],
    bias: Option<&[f32]>,
    target: Target,
    out: &mut Vec<Refusal>,
) {
    out.extend(weight_refusal(node, wq, target));
    for (what, v) in [("weight", Some(weight)), ("bias", bias)] {
        if v.is_some_and(non_finite) {
            out.push(Refusal::NonFinite {
                node: node.name.clone(),
                what,
            });
        }
    }
}

/// Every refusal for `node` (see [`Refusal`]).
fn refusals_for(
    node: &Node,
    input_shapes: &[&[usize]],
    opts: &ExportOptions,
    out: &mut Vec<Refusal>,
) {
    let nf = |what| Refusal::NonFinite {
        node: node.name.clone(),
        what,
    };
    match &node.op {
        FloatOp::Conv2d(c) => {
            let bias = c.bias.as_deref();
            layer_refusals(node, c.weight_quant, &c.weight, bias, opts.target, out);
            if let Some(bn) = &c.batch_norm {
                if !opts.fold_batch_norm {
                    out.push(Refusal::UnfoldedBatchNorm {
                        node: node.name.clone(),
                    });
                }
                if non_finite(&bn.gamma)
                    || non_finite(&bn.beta)
                    || non_finite(&bn.mean)
                    || non_finite(&bn.var)
                    || !bn.eps.is_finite()
                {
                    out.push(nf("batch_norm"));
                }
            }
        }
        FloatOp::Linear(l) => {
            let bias = l.bias.as_deref();
            layer_refusals(node, l.weight_quant, &l.weight, bias, opts.target, out);
            if let Some(s) = input_shapes.first()
                && s.len() != 1
            {
                out.push(Refusal::Unsupported {
                    node: node.name.clone(),
                    op: "Linear",
                    reason: format!(
                        "input has shape {s:?}; the runtime's FullyConnected takes [C] (insert a Flatten)"
                    ),
                });
            }
        }
        _ => {}
    }
    if !opts.inherits_params(&node.op) && node.act.range.is_none() {
        out.push(Refusal::Uncalibrated {
            node: node.name.clone(),
        });
    }
}

fn quant_err(node: &Node, what: &'static str) -> impl FnOnce(qat_core::QuantError) -> ExportError {
    let name = node.name.clone();
    move |source| ExportError::Quant {
        node: name,
        what,
        source,
    }
}

fn layer_quant(
    node: &Node,
    w: &[f32],
    out_channels: usize,
    bias: Option<&Vec<f32>>,
    (wq, act): (WeightQuant, Activation),
    (p_in, p_out): (&QuantParams, &QuantParams),
    target: Target,
) -> Result<LayerQuant, ExportError> {
    let fully_connected = matches!(node.op, FloatOp::Linear(_));
    let qw = weights::quantize_weights(w, out_channels, wq).map_err(quant_err(node, "weights"))?;
    let float_bias = bias.cloned().unwrap_or_else(|| vec![0.0; out_channels]);
    let (bias, bias_saturated) =
        weights::quantize_bias(&float_bias, p_in.scale(), &qw.scales_per_channel());
    if bias_saturated > 0 {
        tracing::warn!(
            node = %node.name,
            bias_saturated,
            "int32 bias saturated; the layer's output will deviate from the float simulation"
        );
    }
    let scales: Vec<f32> = qw.params.iter().map(|p| p.scale()).collect();
    let multipliers = weights::requant_multipliers(
        target,
        p_in.scale(),
        &scales,
        p_out.scale(),
        fully_connected,
    )
    .map_err(quant_err(node, "requantization multiplier"))?;
    Ok(LayerQuant {
        weights: qw,
        float_bias,
        bias,
        bias_saturated,
        multipliers,
        clamp: fuse::activation_clamp(act, p_out, target),
    })
}

impl QuantPlan {
    /// Builds the plan for `graph` (see the module docs), or says why not.
    pub fn new(graph: &FloatGraph, opts: &ExportOptions) -> Result<Self, ExportError> {
        let shapes = graph.validate()?;
        let mut refusals = Vec::new();
        for node in &graph.nodes {
            let ins: Vec<&[usize]> = node.inputs.iter().map(|j| shapes[j.0].as_slice()).collect();
            refusals_for(node, &ins, opts, &mut refusals);
        }
        // Activation params where they can be computed (uncalibrated nodes are already refused).
        let mut params: Vec<Option<QuantParams>> = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let p = if opts.inherits_params(&node.op) {
                params[node.inputs[0].0]
            } else {
                match node.act.range {
                    Some(r) => Some(
                        ranges::activation_params(r, node.act.bits)
                            .map_err(quant_err(node, "activation range"))?,
                    ),
                    None => None,
                }
            };
            params.push(p);
        }
        if !refusals.is_empty() {
            refusals.sort_by_key(|r| graph.find(r.node()).map_or(usize::MAX, |id| id.0));
            return Err(ExportError::Refused { refusals });
        }
        let act_params: Vec<QuantParams> = params.into_iter().flatten().collect();
        let graph = if opts.fold_batch_norm {
            bn_fold::fold_graph_batch_norms(graph)
        } else {
            graph.clone()
        };
        let mut layers = Vec::with_capacity(graph.nodes.len());
        for (i, node) in graph.nodes.iter().enumerate() {
            let lq = match &node.op {
                FloatOp::Conv2d(c) => Some(layer_quant(
                    node,
                    &c.weight,
                    c.out_channels(),
                    c.bias.as_ref(),
                    (c.weight_quant, c.activation),
                    (&act_params[node.inputs[0].0], &act_params[i]),
                    opts.target,
                )?),
                FloatOp::Linear(l) => Some(layer_quant(
                    node,
                    &l.weight,
                    l.weight_shape[0],
                    l.bias.as_ref(),
                    (l.weight_quant, l.activation),
                    (&act_params[node.inputs[0].0], &act_params[i]),
                    opts.target,
                )?),
                _ => None,
            };
            layers.push(lq);
        }
        let plan = Self {
            graph,
            shapes,
            act_params,
            layers,
            options: *opts,
        };
        let refusals = plan.target_refusals();
        if !refusals.is_empty() {
            return Err(ExportError::Refused { refusals });
        }
        Ok(plan)
    }

    /// The plan's deployment target.
    pub fn target(&self) -> Target {
        self.options.target
    }

    /// Every node whose add, concat rescale or average pool the target cannot compute as planned.
    fn target_refusals(&self) -> Vec<Refusal> {
        let mut out = Vec::new();
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let checks: Vec<Result<(), QuantError>> = match node.op {
                FloatOp::Add { .. } => vec![self.add_stage(i).map(drop)],
                FloatOp::Concat => (0..node.inputs.len())
                    .map(|k| self.rescale_stage(i, k).map(drop))
                    .collect(),
                FloatOp::AvgPool(_) | FloatOp::GlobalAvgPool => {
                    vec![self.average_stage(i).and_then(|_| self.check_global(i))]
                }
                _ => Vec::new(),
            };
            out.extend(
                checks
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|e| Refusal::Target {
                        node: node.name.clone(),
                        op: node.op.kind(),
                        target: self.target(),
                        reason: e.to_string(),
                    }),
            );
        }
        out
    }

    /// onnxruntime refuses a global pool whose `f32` scale or size is out of its range.
    fn check_global(&self, i: usize) -> Result<(), QuantError> {
        if self.target() != Target::Ort || !self.is_global_pool(i) {
            return Ok(());
        }
        let input = &self.shapes[self.graph.nodes[i].inputs[0].0];
        let (pi, po) = (self.input_params(i, 0), self.act_params[i]);
        AverageStage::ort_global_scale(pi.scale(), po.scale(), input[0] * input[1]).map(drop)
    }

    /// The params of input `k` of node `i`.
    pub fn input_params(&self, i: usize, k: usize) -> QuantParams {
        self.act_params[self.graph.nodes[i].inputs[k].0]
    }

    /// The add of node `i` (an [`FloatOp::Add`]) in the plan's target: its inputs' params, its
    /// own params and its fused clamp.
    pub fn add_stage(&self, i: usize) -> Result<AddStage, QuantError> {
        let clamp = self.clamp_of(i).unwrap_or(Clamp { lo: 0, hi: 255 });
        AddStage::new(
            self.target(),
            &self.input_params(i, 0),
            &self.input_params(i, 1),
            &self.act_params[i],
            clamp.lo as i32,
            clamp.hi as i32,
        )
    }

    /// The requantization of input `k` of node `i` (a [`FloatOp::Concat`]) to the node's params.
    pub fn rescale_stage(&self, i: usize, k: usize) -> Result<RescaleStage, QuantError> {
        RescaleStage::new(self.target(), &self.input_params(i, k), &self.act_params[i])
    }

    /// Whether node `i` is a global average pool for the target's runtime: a
    /// [`FloatOp::GlobalAvgPool`], or an [`FloatOp::AvgPool`] whose unpadded kernel covers its
    /// input (onnxruntime then takes its global-pool kernel).
    pub fn is_global_pool(&self, i: usize) -> bool {
        match &self.graph.nodes[i].op {
            FloatOp::GlobalAvgPool => true,
            FloatOp::AvgPool(p) => {
                let input = &self.shapes[self.graph.nodes[i].inputs[0].0];
                input.len() == 3 && p.kernel == [input[0], input[1]] && p.padding == [0; 4]
            }
            _ => false,
        }
    }

    /// The average-pool output stage of node `i` (an average or global average pool).
    pub fn average_stage(&self, i: usize) -> Result<AverageStage, QuantError> {
        AverageStage::new(
            self.target(),
            &self.input_params(i, 0),
            &self.act_params[i],
            self.is_global_pool(i),
        )
    }

    /// The folded graph with every conv/linear weight replaced by its fake-quantized value
    /// `S_w[c]·(q − Z_w[c])` and every bias by its value on the int32 grid the integer model adds
    /// it on, `S_in·S_w[c]·b_q[c]` (paper §2.4; QAT simulates the same rounding once activation
    /// ranges are frozen). At 8 bits the bias rounding is far below an output LSB; at 4 bits
    /// (`M = S_in·S_w/S_out` up to ~1) leaving it out of the simulation changed several percent of
    /// a layer's output codes.
    pub fn simulation_graph(&self) -> FloatGraph {
        let mut g = self.graph.clone();
        for (node, lq) in g.nodes.iter_mut().zip(&self.layers) {
            let Some(lq) = lq else { continue };
            let s_in = f64::from(self.act_params[node.inputs[0].0].scale());
            let bias: Vec<f32> = lq
                .bias
                .iter()
                .zip(lq.weights.scales_per_channel())
                .map(|(&b, sw)| (f64::from(b) * s_in * f64::from(sw)) as f32)
                .collect();
            match &mut node.op {
                FloatOp::Conv2d(c) => {
                    c.weight = lq.weights.dequantized();
                    c.bias = Some(bias);
                }
                FloatOp::Linear(l) => {
                    l.weight = lq.weights.dequantized();
                    l.bias = Some(bias);
                }
                _ => {}
            }
        }
        g
    }

    /// Where the simulation fake-quantizes activations: `Some(params)` for every node that defines
    /// its own grid (input, conv, linear, add, concat, pools), `None` where the output inherits
    /// its input's grid (max pool, flatten, output — their values are already on it).
    pub fn fake_quant_points(&self) -> Vec<Option<QuantParams>> {
        self.graph
            .nodes
            .iter()
            .zip(&self.act_params)
            .map(|(n, p)| (!self.options.inherits_params(&n.op)).then_some(*p))
            .collect()
    }
}
