//! The fidelity report: does the `Int8Model` do what the simulation promised, layer by layer?
//!
//! For every node with a quantized output, over all given batches, with `q_int` the runtime's
//! code, `q_sim` the simulation's code ([`crate::simulate`]: the plan in its target's arithmetic),
//! `S, Z` the node's params and `f` the plain float value (no quantization at all), two
//! comparisons are made:
//!
//! * **isolated** — the simulated node is fed the integer model's own input codes: a difference
//!   comes only from this node's arithmetic in the runtime. The simulation computes exactly what
//!   the target's runtime computes, so the contract is 100% equal codes; anything else is a bug in
//!   one of the two.
//! * **end to end** — the simulation runs from the graph input on its own: a difference in an
//!   early layer propagates.
//!
//! For each: `SQNR = 10·log10(Σ r_sim² / Σ (r_int − r_sim)²)` dB with `r = S·(q − Z)` (`None` =
//! identical, infinite SQNR); `max |Δ| = max |q_int − q_sim|` in LSBs; the shares of outputs with
//! `|Δ| ≤ 1` and `|Δ| = 0`. Also `SQNR_float = 10·log10(Σ f² / Σ (r_int − f)²)` — the total
//! quantization noise against the unquantized model — and, per graph output, the share of samples
//! whose argmax agrees (int8 vs end-to-end simulation, int8 vs float).
//!
//! Rendered as JSON ([`FidelityReport::to_json`]), a plain-text table
//! ([`FidelityReport::to_table`]) and Markdown ([`FidelityReport::to_markdown`]).

use std::fmt::Write as _;

use ndarray::{ArrayD, ArrayViewD};
use qat_int8_runtime::{Executor, Int8Model, RunError, TensorValue};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::{ExportError, GraphError};
use crate::interp;
use crate::ir::{BnTraining, FloatOp, WeightScheme};
use crate::plan::QuantPlan;
use crate::simulate;

/// Why a fidelity report could not be made.
#[derive(Debug, Error)]
pub enum FidelityError {
    /// The float graph could not run (bad input shape, invalid graph).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The integer model could not run.
    #[error("int8 runtime: {0}")]
    Runtime(#[from] RunError),
    /// The model was not emitted from this plan.
    #[error("tensor {tensor} of the int8 model is {got:?}, the plan expects node {expected:?}")]
    ModelMismatch {
        /// Tensor index.
        tensor: usize,
        /// Name the plan expects.
        expected: String,
        /// Name found (or a dtype problem).
        got: String,
    },
    /// No batch was given.
    #[error("fidelity report needs at least one batch")]
    NoBatches,
    /// The plan cannot be emitted as an `Int8Model` (a target the `.qat8` runtime cannot run).
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Fidelity of one layer (one quantized node output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerFidelity {
    /// Node name.
    pub node: String,
    /// Op kind.
    pub op: String,
    /// Activation bits of the output.
    pub bits: u32,
    /// Weight scheme (conv/linear).
    pub weight_scheme: Option<WeightScheme>,
    /// Weight bits (conv/linear).
    pub weight_bits: Option<u32>,
    /// How training treated batch norm (conv/linear; informational).
    pub bn_training: Option<BnTraining>,
    /// Output scale `S`.
    pub scale: f32,
    /// Output zero point `Z`.
    pub zero_point: i32,
    /// Number of compared values.
    pub elements: usize,
    /// int32 bias entries that saturated at export (conv/linear; should be 0).
    pub bias_saturated: usize,
    /// Agreement with the simulated layer fed the integer model's inputs.
    pub isolated: Agreement,
    /// Agreement with the end-to-end simulation.
    pub end_to_end: Agreement,
    /// SQNR of the int8 output against the unquantized float model, dB; `None` when identical.
    pub sqnr_vs_float_db: Option<f64>,
}

/// Agreement of integer codes with simulated codes (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// SQNR of the int8 output against the simulation, dB; `None` when identical.
    pub sqnr_db: Option<f64>,
    /// Largest `|q_int − q_sim|`.
    pub max_abs_lsb: u32,
    /// Share of values with `|q_int − q_sim| ≤ 1`.
    pub within_1_lsb: f64,
    /// Share of values with `q_int = q_sim`.
    pub exact: f64,
}

/// Argmax agreement of one graph output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputAgreement {
    /// Output node name.
    pub output: String,
    /// Samples compared.
    pub samples: usize,
    /// Share of samples where int8 and simulation pick the same argmax.
    pub argmax_vs_simulation: f64,
    /// Share of samples where int8 and the float model pick the same argmax.
    pub argmax_vs_float: f64,
}

/// Agreement of one node's output with the simulation's, in the node's output codes
/// `q = round(x/S) + Z` — for a model outside this crate (the libtorch fake-quant model that was
/// trained) against the simulation of its export. [`NodeMatch::compare`] computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMatch {
    /// Node name (the model's and the export graph's).
    pub node: String,
    /// Output scale `S`.
    pub scale: f32,
    /// Output zero point `Z`.
    pub zero_point: i32,
    /// Values compared.
    pub values: usize,
    /// Share of values with equal codes.
    pub exact: f64,
    /// Share within one code.
    pub within_one: f64,
    /// Largest code difference.
    pub max_abs: i32,
}

impl NodeMatch {
    /// Compares the real values `a` and `b` of node `node` (paired in order; `values` counts the
    /// pairs) in its output codes `q = p.quantize(x)`: `exact` and `within_one` are the shares of
    /// pairs with `|q_a − q_b|` 0 and ≤ 1 (0 when there is no pair), `max_abs` the largest.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange};
    /// use qat_export::fidelity::NodeMatch;
    /// let p = QuantParams::new(0.5, 0, QuantRange::unsigned(8)?)?; // codes round(x/0.5)
    /// let m = NodeMatch::compare("fc", &p, &[1.0, 2.0, 3.0, 4.0], &[1.1, 2.6, 4.0, 4.0]);
    /// assert_eq!((m.values, m.exact, m.within_one, m.max_abs), (4, 0.5, 0.75, 2));
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn compare(
        node: impl Into<String>,
        p: &qat_core::QuantParams,
        a: &[f32],
        b: &[f32],
    ) -> Self {
        let (mut values, mut exact, mut one, mut max_abs) = (0usize, 0usize, 0usize, 0i32);
        for (x, y) in a.iter().zip(b) {
            let d = (p.quantize(*x) - p.quantize(*y)).abs();
            values += 1;
            exact += usize::from(d == 0);
            one += usize::from(d <= 1);
            max_abs = max_abs.max(d);
        }
        let n = values.max(1) as f64;
        Self {
            node: node.into(),
            scale: p.scale(),
            zero_point: p.zero_point(),
            values,
            exact: exact as f64 / n,
            within_one: one as f64 / n,
            max_abs,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidelityReport {
    /// Model name.
    pub model: String,
    /// Samples run.
    pub samples: usize,
    /// Per layer, in graph order.
    pub layers: Vec<LayerFidelity>,
    /// Per graph output.
    pub outputs: Vec<OutputAgreement>,
}

#[derive(Default, Clone)]
struct Acc {
    n: usize,
    sig: f64,
    noise: f64,
    max_lsb: u32,
    within1: usize,
    exact: usize,
}

impl Acc {
    fn add(&mut self, qi: i32, qs: i32, p: &qat_core::QuantParams) {
        let d = (qi - qs).unsigned_abs();
        let (ri, rs) = (p.dequantize(qi) as f64, p.dequantize(qs) as f64);
        self.n += 1;
        self.sig += rs * rs;
        self.noise += (ri - rs) * (ri - rs);
        self.max_lsb = self.max_lsb.max(d);
        self.within1 += (d <= 1) as usize;
        self.exact += (d == 0) as usize;
    }

    fn finish(&self) -> Agreement {
        let share = |k: usize| {
            if self.n == 0 {
                1.0
            } else {
                k as f64 / self.n as f64
            }
        };
        Agreement {
            sqnr_db: sqnr(self.sig, self.noise),
            max_abs_lsb: self.max_lsb,
            within_1_lsb: share(self.within1),
            exact: share(self.exact),
        }
    }
}

/// `10·log10(sig/noise)` in dB; `None` when there is no noise.
pub(crate) fn sqnr(sig: f64, noise: f64) -> Option<f64> {
    (noise > 0.0).then(|| 10.0 * (sig.max(f64::MIN_POSITIVE) / noise).log10())
}

fn argmax_rows(x: &ArrayD<f32>) -> Vec<usize> {
    let n = x.shape().first().copied().unwrap_or(0);
    let per = x.len().checked_div(n).unwrap_or(0);
    let flat: Vec<f32> = x.iter().copied().collect();
    (0..n)
        .map(|b| {
            let row = &flat[b * per..(b + 1) * per];
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect()
}

impl FidelityReport {
    /// Runs the plan's simulation, the float graph and `exec` (an executor of
    /// `plan.to_int8_model()?`) on every batch and compares them (see the module docs).
    pub fn measure<'a>(
        plan: &QuantPlan,
        exec: &mut Executor<'_>,
        batches: impl IntoIterator<Item = ArrayViewD<'a, f32>>,
    ) -> Result<Self, FidelityError> {
        let node_t = plan.node_tensors();
        let model = exec.model();
        for (i, node) in plan.graph.nodes.iter().enumerate() {
            let expected = match node.op {
                FloatOp::Input { .. } => crate::emit::quantized_input_name(&node.name),
                _ => node.name.clone(),
            };
            let got = model.tensors.get(node_t[i]).map(|t| t.name.clone());
            if got.as_deref() != Some(expected.as_str()) {
                return Err(FidelityError::ModelMismatch {
                    tensor: node_t[i],
                    expected,
                    got: got.unwrap_or_else(|| "<missing>".into()),
                });
            }
        }
        let n_nodes = plan.graph.nodes.len();
        let mut iso = vec![Acc::default(); n_nodes];
        let mut e2e = vec![Acc::default(); n_nodes];
        let mut fl = vec![(0f64, 0f64); n_nodes];
        let outputs = plan.graph.output_ids();
        let mut agree = vec![(0usize, 0usize, 0usize); outputs.len()];
        let mut samples = 0;
        let mut batches_seen = 0;
        for batch in batches {
            batches_seen += 1;
            samples += batch.shape().first().copied().unwrap_or(0);
            let float = interp::run(&plan.graph, batch.view(), None)?;
            let sim = simulate::simulate_codes(plan, batch.view())?;
            let vals = exec.run_all(batch.view())?;
            // Every node's integer codes (an Output node: its input's codes).
            let mut int_codes: Vec<ArrayD<i32>> = Vec::with_capacity(n_nodes);
            for (i, node) in plan.graph.nodes.iter().enumerate() {
                if matches!(node.op, FloatOp::Output) {
                    int_codes.push(int_codes[node.inputs[0].0].clone());
                    continue;
                }
                let TensorValue::U8(q) = &vals[node_t[i]] else {
                    return Err(FidelityError::ModelMismatch {
                        tensor: node_t[i],
                        expected: node.name.clone(),
                        got: "an F32 tensor".into(),
                    });
                };
                let q = q.mapv(|c| c as i32);
                let p = plan.act_params[i];
                // isolated: this node of the simulation on the integer model's input codes
                let ins: Vec<&ArrayD<i32>> = node.inputs.iter().map(|j| &int_codes[j.0]).collect();
                let y = simulate::eval_codes(plan, i, &ins, batch.view())?;
                for (((&qi, &qs), &f), &qy) in q.iter().zip(&sim[i]).zip(&float[i]).zip(&y) {
                    e2e[i].add(qi, qs, &p);
                    iso[i].add(qi, qy, &p);
                    let ri = p.dequantize(qi) as f64;
                    fl[i].0 += f as f64 * f as f64;
                    fl[i].1 += (ri - f as f64) * (ri - f as f64);
                }
                int_codes.push(q);
            }
            for (k, o) in outputs.iter().enumerate() {
                let src = plan.graph.nodes[o.0].inputs[0].0;
                let p = plan.act_params[src];
                let real = |q: &ArrayD<i32>| q.mapv(|c| p.dequantize(c));
                let (ai, as_, af) = (
                    argmax_rows(&real(&int_codes[src])),
                    argmax_rows(&real(&sim[src])),
                    argmax_rows(&float[src]),
                );
                agree[k].0 += ai.len();
                agree[k].1 += ai.iter().zip(&as_).filter(|(a, b)| a == b).count();
                agree[k].2 += ai.iter().zip(&af).filter(|(a, b)| a == b).count();
            }
        }
        if batches_seen == 0 {
            return Err(FidelityError::NoBatches);
        }
        let share = |k: usize, n: usize| if n == 0 { 1.0 } else { k as f64 / n as f64 };
        let layers = plan
            .graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !matches!(n.op, FloatOp::Output))
            .map(|(i, node)| {
                let (ws, wb, bn) = match &node.op {
                    FloatOp::Conv2d(c) => (
                        Some(c.weight_quant.scheme),
                        Some(c.weight_quant.bits),
                        Some(c.bn_training),
                    ),
                    FloatOp::Linear(l) => (
                        Some(l.weight_quant.scheme),
                        Some(l.weight_quant.bits),
                        Some(l.bn_training),
                    ),
                    _ => (None, None, None),
                };
                let p = plan.act_params[i];
                LayerFidelity {
                    node: node.name.clone(),
                    op: node.op.kind().to_string(),
                    // the grid is [0, 2^b − 1]
                    bits: (p.qmax() - p.qmin() + 1).ilog2(),
                    weight_scheme: ws,
                    weight_bits: wb,
                    bn_training: bn,
                    scale: p.scale(),
                    zero_point: p.zero_point(),
                    elements: e2e[i].n,
                    bias_saturated: plan.layers[i].as_ref().map_or(0, |l| l.bias_saturated),
                    isolated: iso[i].finish(),
                    end_to_end: e2e[i].finish(),
                    sqnr_vs_float_db: sqnr(fl[i].0, fl[i].1),
                }
            })
            .collect();
        let outputs = outputs
            .iter()
            .zip(&agree)
            .map(|(o, &(n, s, f))| OutputAgreement {
                output: plan.graph.nodes[o.0].name.clone(),
                samples: n,
                argmax_vs_simulation: share(s, n),
                argmax_vs_float: share(f, n),
            })
            .collect();
        Ok(Self {
            model: plan.graph.name.clone(),
            samples,
            layers,
            outputs,
        })
    }

    /// Smallest per-layer share of outputs within 1 LSB, isolated comparison (1.0 if empty).
    pub fn min_within_1_lsb(&self) -> f64 {
        self.min_share(|l| l.isolated.within_1_lsb)
    }

    /// Smallest per-layer share of equal codes, isolated comparison (1.0 if empty).
    pub fn min_exact(&self) -> f64 {
        self.min_share(|l| l.isolated.exact)
    }

    /// Smallest per-layer share of outputs within 1 LSB, end-to-end comparison (1.0 if empty).
    pub fn min_within_1_lsb_end_to_end(&self) -> f64 {
        self.min_share(|l| l.end_to_end.within_1_lsb)
    }

    /// The smallest per-layer `share` (1.0 if there are no layers).
    fn min_share(&self, share: impl Fn(&LayerFidelity) -> f64) -> f64 {
        self.layers.iter().map(share).fold(1.0, f64::min)
    }

    /// Largest per-layer `max |Δ|` in LSBs, isolated comparison.
    pub fn max_abs_lsb(&self) -> u32 {
        self.layers
            .iter()
            .map(|l| l.isolated.max_abs_lsb)
            .max()
            .unwrap_or(0)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    fn rows(&self) -> Vec<[String; 13]> {
        let db = |v: Option<f64>| v.map_or("inf".to_string(), |v| format!("{v:.1}"));
        self.layers
            .iter()
            .map(|l| {
                let w = match (l.weight_scheme, l.weight_bits) {
                    (Some(s), Some(b)) => format!(
                        "{}{b}",
                        match s {
                            WeightScheme::SymmetricPerChannel => "sym/ch ",
                            WeightScheme::SymmetricPerTensor => "sym/t ",
                            WeightScheme::AsymmetricPerTensor => "asym/t ",
                        }
                    ),
                    _ => "-".into(),
                };
                let bn = match l.bn_training {
                    Some(BnTraining::FoldedWithCorrection) => "fold+corr",
                    Some(BnTraining::FoldedWithoutCorrection) => "fold",
                    Some(BnTraining::Unfolded) => "unfolded",
                    _ => "-",
                };
                [
                    l.node.clone(),
                    l.op.clone(),
                    l.bits.to_string(),
                    w,
                    bn.to_string(),
                    db(l.isolated.sqnr_db),
                    l.isolated.max_abs_lsb.to_string(),
                    format!("{:.2}", 100.0 * l.isolated.within_1_lsb),
                    format!("{:.2}", 100.0 * l.isolated.exact),
                    db(l.end_to_end.sqnr_db),
                    l.end_to_end.max_abs_lsb.to_string(),
                    format!("{:.2}", 100.0 * l.end_to_end.within_1_lsb),
                    db(l.sqnr_vs_float_db),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 13] = [
        "layer",
        "op",
        "bits",
        "weights",
        "BN train",
        "iso SQNR dB",
        "iso max|Δ|",
        "iso ≤1LSB %",
        "iso exact %",
        "e2e SQNR dB",
        "e2e max|Δ|",
        "e2e ≤1LSB %",
        "float SQNR dB",
    ];

    fn output_lines(&self) -> Vec<String> {
        self.outputs
            .iter()
            .map(|o| {
                format!(
                    "output {}: argmax agreement int8/sim {:.2}%, int8/float {:.2}% over {} samples",
                    o.output,
                    100.0 * o.argmax_vs_simulation,
                    100.0 * o.argmax_vs_float,
                    o.samples
                )
            })
            .collect()
    }

    /// A plain-text table for terminals.
    pub fn to_table(&self) -> String {
        let rows = self.rows();
        let mut widths: Vec<usize> = Self::HEADER.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                let pad = w - c.chars().count();
                if matches!(i, 0 | 1 | 3 | 4) {
                    let _ = write!(s, "{c}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(s, "{}{c}  ", " ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = format!("fidelity of {} ({} samples)\n", self.model, self.samples);
        out.push_str(&line(Self::HEADER.to_vec()));
        out.push('\n');
        out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
        out.push('\n');
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        for l in self.output_lines() {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// A Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "### Fidelity of `{}` ({} samples)\n\n| {} |\n|{}\n",
            self.model,
            self.samples,
            Self::HEADER.join(" | "),
            "---|".repeat(Self::HEADER.len())
        );
        for r in self.rows() {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out.push('\n');
        for l in self.output_lines() {
            let _ = writeln!(out, "- {l}");
        }
        out
    }
}

/// Convenience: emit the plan's model, run it with the best kernel path and measure.
///
/// ```
/// use ndarray::ArrayD;
/// use qat_export::{FloatGraph, ExportOptions, QuantPlan, fidelity::fidelity_report, ir::Linear};
/// let mut g = FloatGraph::new("fc");
/// let x = g.input("x", &[2]);
/// let y = g.linear("fc", x, Linear::new(vec![1.0, -0.5, 0.25, 2.0], [2, 2]));
/// g.output("y", y);
/// g.set_range(x, -1.0, 1.0)?;
/// g.set_range(y, -2.0, 2.0)?;
/// let plan = QuantPlan::new(&g, &ExportOptions::default())?;
/// let batch = ArrayD::from_shape_vec(vec![3, 2], vec![0.1, 0.9, -0.7, 0.3, 0.5, -0.5])?;
/// let report = fidelity_report(&plan, [batch.view()])?;
/// assert_eq!(report.min_exact(), 1.0);   // the runtime computes what the simulation computes
/// assert_eq!(report.outputs[0].argmax_vs_simulation, 1.0);
/// println!("{}", report.to_table());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn fidelity_report<'a>(
    plan: &QuantPlan,
    batches: impl IntoIterator<Item = ArrayViewD<'a, f32>>,
) -> Result<FidelityReport, FidelityError> {
    let model: Int8Model = plan.to_int8_model()?;
    let mut exec = Executor::new(&model)?;
    FidelityReport::measure(plan, &mut exec, batches)
}
