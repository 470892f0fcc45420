//! The optional research studies (`--study sensitivity,mixed-precision`), on post-training
//! quantization of the float model (per-channel weights, min/max calibration):
//!
//! - **sensitivity**: for every conv/linear layer and every width in {8, 6, 4, 3, 2}, only that
//!   layer's weights (or only its output activations) at that width, the rest at 8 bits; the accuracy
//!   drop on the held-out validation split (`data.validation`), as a layer × bits table.
//! - **mixed-precision**: the Pareto front of predicted drop against packed weight bytes from that
//!   table (exact or greedy search), the best assignment within the weight bytes of the uniform
//!   low-bit model, and its measured test accuracy next to uniform W8A8, W6A6 and the low bit width;
//!   then that assignment and the uniform widths QAT-trained with the low-bit run's schedule and
//!   exported (the chosen model as `model_mixed.qat8`), measured in the integer runtime.

use anyhow::{Context, Result};
use ndarray::ArrayD;
use qat_export::{
    CalibrationMethod, PtqConfig,
    analysis::{
        Baseline, BitAssignment, CostModel, LayerInfo, SENSITIVITY_BITS, SearchOptions,
        SensitivityTable, evaluate, quantizable_layers, search,
    },
    ir::{FloatGraph, FloatOp, WeightScheme},
};
use qat_int8_runtime::Int8Model;
use qat_train::{
    convert,
    models::{LayerBitsOverride, Net},
};
use xtask::report::{MixedPrecisionResult, QatPoint, UniformPoint};

use super::{Pipeline, eval::eval_int8_on, study::Run, train::QatOutcome};

/// The float model as an export graph with every conv/linear layer at 8-bit per-channel weights and
/// 8-bit activations, and its layers.
fn graph_at_8_bits(float_net: &Net) -> Result<(FloatGraph, Vec<LayerInfo>)> {
    let mut graph =
        convert::convert_unchecked(float_net).context("cannot convert the float model")?;
    for node in &mut graph.nodes {
        match &mut node.op {
            FloatOp::Conv2d(c) => c.weight_quant.scheme = WeightScheme::SymmetricPerChannel,
            FloatOp::Linear(l) => l.weight_quant.scheme = WeightScheme::SymmetricPerChannel,
            _ => {}
        }
    }
    let layers = quantizable_layers(&graph).context("cannot list the layers")?;
    BitAssignment::uniform(&layers, 8, 8)
        .apply(&mut graph)
        .context("cannot set 8 bits")?;
    Ok((graph, layers))
}

impl Pipeline {
    /// PTQ of `graph` with its own per-layer widths; top-1 in percent on `x`, `labels`.
    fn ptq_graph(&self, graph: &FloatGraph, x: &ArrayD<f32>, labels: &[i64]) -> Result<f64> {
        let cfg = PtqConfig {
            method: CalibrationMethod::MinMax,
            weight_quant: None,
            activation_bits: None,
            export: convert::export_options(),
        };
        let batches = self.calibration_batches()?;
        let model = qat_export::ptq_export(graph, batches.iter().map(|b| b.view()), &cfg)
            .context("PTQ export failed")?;
        Ok(100.0 * eval_int8_on(&model, x, labels)?.0)
    }

    /// The sensitivity table on the validation split (the rest of the network at 8 bits).
    pub(super) fn sensitivity(&self, float_net: &Net) -> Result<SensitivityTable> {
        let (x, labels) = self.validation.as_ref().context(
            "the sensitivity study measures on held-out training images: set data.validation > 0",
        )?;
        let (graph, layers) = graph_at_8_bits(float_net)?;
        let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        let baseline = self.ptq_graph(&graph, x, labels)?;
        let mut table = SensitivityTable::new(
            graph.name.clone(),
            Baseline::Int8,
            baseline,
            &SENSITIVITY_BITS,
            &names,
        )?;
        let probes = table.probes();
        eprintln!(
            "[pipeline] sensitivity: {} probes on {} validation images (baseline W8A8 PTQ {baseline:.2}%)",
            probes.len(),
            labels.len()
        );
        for p in probes {
            let mut g = graph.clone();
            p.assignment.apply(&mut g)?;
            let acc = self.ptq_graph(&g, x, labels)?;
            table.record(&p.layer, p.operand, p.bits, acc)?;
        }
        Ok(table)
    }

    /// The mixed-precision search within the weight bytes of the uniform low-bit model, and the test
    /// accuracy (PTQ) of its choice and of uniform widths; then the choice QAT-trained with the
    /// low-bit run's schedule (`low_run`), exported (`model_mixed.qat8`) and run, next to the same
    /// QAT of the uniform widths (`trained`: the widths already trained by the default study, with
    /// their results; the others are trained here).
    pub(super) fn mixed_precision(
        &self,
        float_net: &Net,
        table: &SensitivityTable,
        low_run: Run,
        trained: &[(u32, u32, QatPoint, &Int8Model)],
    ) -> Result<MixedPrecisionResult> {
        let (graph, layers) = graph_at_8_bits(float_net)?;
        let cost = CostModel::WeightBytes;
        let lb = &self.cfg.low_bit;
        let low = BitAssignment::uniform(&layers, lb.weight_bits, lb.act_bits);
        let budget = evaluate(table, &layers, &cost, &low)?.cost;
        let result = search(table, &layers, &cost, budget, &SearchOptions::default())
            .context("mixed-precision search failed")?;
        let measure = |a: &BitAssignment| -> Result<f64> {
            let mut g = graph.clone();
            a.apply(&mut g)?;
            self.ptq_graph(&g, &self.test_nhwc, &self.test_labels)
        };
        let chosen_ptq = result
            .chosen
            .as_ref()
            .map(|p| measure(&p.assignment))
            .transpose()?;
        let qat_point = |o: &QatOutcome| -> Result<QatPoint> {
            Ok(QatPoint {
                fake_quant: 100.0 * o.fake_quant_acc,
                int8: 100.0 * o.int8_acc,
                int8_us: Some(self.int8_latency(&o.model, 1)?.0),
            })
        };
        let chosen_qat = match &result.chosen {
            Some(p) => {
                let layer_bits = (p.assignment.layers.iter())
                    .map(|l| LayerBitsOverride {
                        layer: l.layer.clone(),
                        weight_bits: l.weight_bits,
                        act_bits: l.act_bits,
                    })
                    .collect();
                // The input and the nodes without weights stay at 8 bits, as in the search's graph.
                let base = Run {
                    weight_bits: 8,
                    act_bits: 8,
                    ..low_run
                };
                let o = self.qat_with_layer_bits(float_net, base, layer_bits)?;
                let file = self.out.join("model_mixed.qat8");
                o.model
                    .save(&file)
                    .with_context(|| format!("cannot save {}", file.display()))?;
                Some(qat_point(&o)?)
            }
            None => None,
        };
        let mut uniform = Vec::new();
        for (w, a) in [(8, 8), (6, 6), (lb.weight_bits, lb.act_bits)] {
            if uniform
                .iter()
                .any(|u: &UniformPoint| (u.weight_bits, u.act_bits) == (w, a))
            {
                continue;
            }
            let asg = BitAssignment::uniform(&layers, w, a);
            let point = evaluate(table, &layers, &cost, &asg)?;
            let qat = match trained.iter().find(|t| (t.0, t.1) == (w, a)) {
                Some(t) => QatPoint {
                    int8_us: Some(self.int8_latency(t.3, 1)?.0),
                    ..t.2
                },
                None => {
                    let run = Run {
                        weight_bits: w,
                        act_bits: a,
                        ..low_run
                    };
                    qat_point(&self.qat(float_net, run)?)?
                }
            };
            uniform.push(UniformPoint {
                weight_bits: w,
                act_bits: a,
                cost: point.cost,
                predicted_drop: point.predicted_drop,
                ptq: measure(&asg)?,
                qat: Some(qat),
            });
        }
        Ok(MixedPrecisionResult {
            search: result,
            chosen_ptq,
            chosen_qat,
            uniform,
        })
    }
}
