//! Conversion of a trained [`Net`] into qat-export's [`FloatGraph`] (paper §2 ⇐ §3).
//!
//! Each node of the net becomes one IR node, read from the layer's export view
//! ([`crate::layers::LayerExport`]) so that nothing is re-derived here:
//!
//! | net node | IR node | what is converted |
//! |---|---|---|
//! | input quantizer | `Input [H, W, C]` | observed input range |
//! | conv+BN | `Conv2d` + `BatchNorm` | float weights `OIHW → OHWI`, γ, β, moving mean/var, ε (export folds them exactly as the QAT eval forward does: `γ·W/σ`, `β − γ·μ/σ`) |
//! | conv | `Conv2d` with bias | `OIHW → OHWI` |
//! | linear | `Linear` | `[out, in]`; after a flatten, columns permuted from NCHW to NHWC order |
//! | add / concat | `Add` / `Concat` | own observed range |
//! | avg / global-avg / max pool | `AvgPool` / `GlobalAvgPool` / `MaxPool` | window; own range except max pool |
//! | flatten | `Flatten` | — |
//!
//! plus an `Output` node after the model's output. Activation kinds (None/ReLU/ReLU6), observed ranges,
//! activation bits and the weight scheme/bits come from each layer's config and observers.
//!
//! Conversion needs the [`ExportReady`] token of [`crate::schedule::Schedule::export_ready`] (observers
//! frozen, every range calibrated), so a half-calibrated model cannot be exported by mistake.

use qat_export::ir::{
    self, ActQuant, BatchNorm, BnTraining, Conv2d, FloatGraph, Linear, NodeId, Pool2d, Range,
    WeightQuant, WeightScheme,
};

use crate::layers::{
    BnFoldMode, ConvExport, LayerExport, OutputExport, PoolKind, WeightExport, WeightGranularity,
    WeightRange,
};
use crate::models::{ModelError, Net, NodeOp};
use crate::observer::QuantScheme;
use crate::schedule::ExportReady;

/// Conversion errors, naming the node.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A layer's export view could not be produced.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The node cannot be expressed in the IR.
    #[error("convert node '{node}': {what}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Why.
        what: String,
    },
    /// The produced graph is invalid (a bug; the IR names the problem).
    #[error("converted graph is invalid: {0}")]
    Graph(#[from] qat_export::GraphError),
}

fn weight_quant(node: &str, w: &WeightExport) -> Result<WeightQuant, ConvertError> {
    if w.range == WeightRange::Lsq {
        // qat-export derives weight scales from min/max of the final weights; the learned LSQ scales
        // would be silently replaced and the integer model would differ from the trained one.
        return Err(ConvertError::Unsupported {
            node: node.to_string(),
            what: "LSQ-learned weight scales cannot be exported yet (export derives weight scales from \
                   min/max); train this layer with WeightRange::MinMax"
                .into(),
        });
    }
    let scheme = match (w.scheme, w.granularity) {
        (QuantScheme::SymmetricNarrow, WeightGranularity::PerChannel) => {
            WeightScheme::SymmetricPerChannel
        }
        (QuantScheme::SymmetricNarrow, WeightGranularity::PerTensor) => {
            WeightScheme::SymmetricPerTensor
        }
        (QuantScheme::AsymmetricUnsigned, WeightGranularity::PerTensor) => {
            WeightScheme::AsymmetricPerTensor
        }
        (QuantScheme::AsymmetricUnsigned, WeightGranularity::PerChannel) => {
            return Err(ConvertError::Unsupported {
                node: node.to_string(),
                what: "asymmetric per-channel weights have no integer kernel; use per-tensor"
                    .into(),
            });
        }
    };
    Ok(WeightQuant {
        scheme,
        bits: w.bits,
    })
}

fn act_quant(o: &OutputExport) -> ActQuant {
    ActQuant {
        range: o.range.map(|(min, max)| Range { min, max }),
        bits: o.bits,
    }
}

fn shape4(node: &str, s: &[usize]) -> Result<[usize; 4], ConvertError> {
    s.try_into().map_err(|_| ConvertError::Unsupported {
        node: node.into(),
        what: format!("weight shape {s:?} is not 4-D"),
    })
}

fn conv_node(c: &ConvExport) -> Result<Conv2d, ConvertError> {
    let (w, ohwi) = ir::ohwi_from_oihw(&c.weight.data, shape4(&c.name, &c.weight.shape)?);
    let [ph, pw] = c.padding;
    let mut conv = Conv2d::new(w, ohwi)
        .with_stride(c.stride)
        .with_padding([ph, pw, ph, pw])
        .with_dilation(c.dilation)
        .with_groups(c.groups)
        .with_activation(c.activation)
        .with_weight_quant(weight_quant(&c.name, &c.weight_quant)?);
    if let Some(b) = &c.bias {
        conv = conv.with_bias(b.clone());
    }
    if let Some(bn) = &c.bn {
        conv = conv
            .with_batch_norm(BatchNorm {
                gamma: bn.gamma.clone(),
                beta: bn.beta.clone(),
                mean: bn.mean.clone(),
                var: bn.var.clone(),
                eps: bn.eps as f32,
            })
            .with_bn_training(match bn.fold_mode {
                BnFoldMode::Whitepaper => BnTraining::FoldedWithCorrection,
                BnFoldMode::PyTorch => BnTraining::FoldedWithoutCorrection,
            });
    }
    Ok(conv)
}

/// The qat-export options that match how these models train: average pools (incl. global) have their own
/// observed output range and fake quant, so export must give them their own parameters
/// (`avg_pool_own_params`) instead of inheriting the input's.
pub fn export_options() -> qat_export::ExportOptions {
    qat_export::ExportOptions {
        avg_pool_own_params: true,
        ..Default::default()
    }
}

/// The export options of a model trained for `target` ([`QuantConfig::target`](crate::layers::QuantConfig::target);
/// `None`: [`export_options`]): the plan in the target's arithmetic, and average pools with
/// parameters of their own only where the target can rescale them (QAT tied the others to their
/// input's, [`qat_core::Target::average_pool_rescales`]).
///
/// ```
/// use qat_core::Target;
/// use qat_train::convert::{export_options, export_options_for};
/// assert_eq!(export_options_for(None), export_options());
/// let o = export_options_for(Some(Target::Tflite));
/// assert!(o.target == Target::Tflite && !o.avg_pool_own_params);
/// assert!(export_options_for(Some(Target::Ort)).avg_pool_own_params);
/// ```
pub fn export_options_for(target: Option<qat_core::Target>) -> qat_export::ExportOptions {
    match target {
        None => export_options(),
        Some(t) => qat_export::ExportOptions {
            target: t,
            avg_pool_own_params: t.average_pool_rescales(),
            ..export_options()
        },
    }
}

/// Converts `net` into a [`FloatGraph`] (validated), given the schedule's export token. Export it with
/// [`export_options`].
///
/// ```
/// use qat_train::{convert, models::{self, ModelSpec}, schedule::{Schedule, ScheduleConfig}};
/// let mut net = models::build(&ModelSpec::lenet(), tch::Device::Cpu)?;
/// let schedule = Schedule::new(ScheduleConfig::default())?;
/// // Untrained, observers live: the schedule refuses to hand out the token.
/// assert!(schedule.export_ready(&net).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_float_graph(net: &Net, _ready: &ExportReady) -> Result<FloatGraph, ConvertError> {
    convert_unchecked(net)
}

/// The conversion without the schedule's check (for tests and for inspecting an unfinished model; the
/// resulting graph may hold uncalibrated ranges, which qat-export refuses).
pub fn convert_unchecked(net: &Net) -> Result<FloatGraph, ConvertError> {
    let mut g = FloatGraph::new(net.name());
    let exports = net.export_layers()?;
    let mut ids: Vec<NodeId> = Vec::with_capacity(net.nodes().len());
    for (i, (node, exp)) in net.nodes().iter().zip(exports).enumerate() {
        let name = node.name.as_str();
        let input = |k: usize| -> Result<NodeId, ConvertError> {
            node.inputs
                .get(k)
                .and_then(|r| ids.get(r.0))
                .copied()
                .ok_or_else(|| ConvertError::Unsupported {
                    node: name.into(),
                    what: format!("missing input {k}"),
                })
        };
        let unsupported = |what: &str| ConvertError::Unsupported {
            node: name.into(),
            what: what.into(),
        };
        let (id, aq) = match (&node.op, exp) {
            (NodeOp::Input(_), Some(LayerExport::Quantize(o))) => {
                let [c, h, w] = net.input_chw();
                (g.input(name, &[h, w, c]), Some(act_quant(&o)))
            }
            (NodeOp::ConvBn(_) | NodeOp::Conv(_), Some(LayerExport::Conv(c))) => {
                let x = input(0)?;
                (
                    g.conv2d(name, x, conv_node(&c)?),
                    Some(act_quant(&c.output)),
                )
            }
            (NodeOp::Linear(_), Some(LayerExport::Linear(l))) => {
                let x = input(0)?;
                let [out, inp]: [usize; 2] = l
                    .weight
                    .shape
                    .as_slice()
                    .try_into()
                    .map_err(|_| unsupported("linear weight is not 2-D"))?;
                // After a flatten of [C, H, W], the IR flattens in NHWC order: permute the columns.
                let src = &net.nodes()[node.inputs[0].0];
                let weight = match (
                    &src.op,
                    net.nodes()
                        .get(src.inputs.first().map_or(usize::MAX, |r| r.0)),
                ) {
                    (NodeOp::Flatten, Some(pre)) if pre.shape.len() == 3 => {
                        ir::linear_from_nchw_flatten(
                            &l.weight.data,
                            out,
                            [pre.shape[0], pre.shape[1], pre.shape[2]],
                        )
                    }
                    _ => l.weight.data.clone(),
                };
                let lin = Linear::new(weight, [out, inp])
                    .with_bias(l.bias.clone())
                    .with_activation(l.activation)
                    .with_weight_quant(weight_quant(name, &l.weight_quant)?);
                (g.linear(name, x, lin), Some(act_quant(&l.output)))
            }
            (NodeOp::Add(_), Some(LayerExport::Add(m))) => {
                let (a, b) = (input(0)?, input(1)?);
                (g.add(name, a, b, m.activation), Some(act_quant(&m.output)))
            }
            (NodeOp::Concat(_), Some(LayerExport::Concat(m))) => {
                let xs: Vec<NodeId> = (0..node.inputs.len())
                    .map(input)
                    .collect::<Result<_, _>>()?;
                (g.concat(name, &xs), Some(act_quant(&m.output)))
            }
            (
                NodeOp::AvgPool(_) | NodeOp::MaxPool(_) | NodeOp::GlobalAvgPool(_),
                Some(LayerExport::Pool(p)),
            ) => {
                let x = input(0)?;
                let [ph, pw] = p.padding;
                let window = Pool2d {
                    kernel: p.kernel,
                    stride: p.stride,
                    padding: [ph, pw, ph, pw],
                };
                let id = match p.kind {
                    PoolKind::Avg => g.avg_pool(name, x, window),
                    PoolKind::Max => g.max_pool(name, x, window),
                    PoolKind::GlobalAvg => g.global_avg_pool(name, x),
                };
                (id, p.output.as_ref().map(act_quant))
            }
            (NodeOp::Flatten, None) => {
                let x = input(0)?;
                (g.flatten(name, x), None)
            }
            (_, e) => {
                return Err(unsupported(&format!(
                    "node {i} has an unexpected export view {:?}",
                    e.map(|_| ())
                )));
            }
        };
        if let Some(aq) = aq {
            g.node_mut(id)?.act = aq;
        }
        ids.push(id);
    }
    // Nodes that inherit their input's grid (max pool, flatten) also carry it, informationally.
    for k in 0..g.nodes.len() {
        if g.nodes[k].op.inherits_params()
            && g.nodes[k].act.range.is_none()
            && let Some(src) = g.nodes[k].inputs.first().copied()
        {
            g.nodes[k].act = g.nodes[src.0].act;
        }
    }
    let out = ids
        .get(net.output().0)
        .copied()
        .ok_or_else(|| ConvertError::Unsupported {
            node: net.name().into(),
            what: "output node missing".into(),
        })?;
    let o = g.output("logits", out);
    g.nodes[o.0].act = g.nodes[out.0].act;
    g.validate()?;
    Ok(g)
}
