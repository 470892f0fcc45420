//! Research analyses on a [`FloatGraph`](crate::FloatGraph): why post-training quantization fails,
//! how sensitive each layer is, and which per-layer bit widths to choose.
//!
//! | question | module | what |
//! |---|---|---|
//! | which layers PTQ hurts, and why | [`causes`] | per layer (BN folded as export folds it): per-channel weight ranges, a weight histogram with outliers marked, range spread `max range/min range`, outlier ratio `max\|W\|/P99.9(\|W\|)`, weight SQNR per tensor vs per channel at 8 and 4 bits |
//! | how much each layer costs at `b` bits | [`sensitivity`] | [`SensitivityTable`]: layer × {weights, activations} × {8, 6, 4, 3, 2} bits → accuracy drop, and the [`Probe`]s to measure it |
//! | which bit widths to use | [`search()`] | Pareto front of predicted drop vs cost (weight bytes, bit operations, or a measured table), exact (dynamic programming) or greedy; the best point within a budget |
//! | writing widths into the graph | [`assign`] | [`quantizable_layers`], [`BitAssignment::apply`] |
//!
//! The evaluation of a probe (training or simulating a model) belongs to whoever runs the study; the
//! types here are serde-serializable so a report can carry them.

pub mod assign;
pub mod causes;
mod error;
pub mod search;
pub mod sensitivity;

use std::fmt::Write as _;

pub use assign::{BitAssignment, LayerBits, LayerInfo, quantizable_layers};
pub use causes::{
    ChannelRange, LayerWeightAnalysis, SqnrAtBits, WeightAnalysis, WeightAnalysisOptions,
    WeightHistogram, WeightOutlier, analyze_layer, analyze_weights,
};
pub use error::AnalysisError;
pub use search::{
    CostModel, LayerCostTable, MixedPrecision, ParetoPoint, SearchMethod, SearchOptions, evaluate,
    pareto_front, search,
};
pub use sensitivity::{
    Baseline, LayerSensitivity, Operand, Probe, SENSITIVITY_BITS, SensitivityTable,
};

impl WeightAnalysis {
    /// The per-layer table as Markdown: range spread, outlier ratio and weight SQNR per tensor /
    /// per channel at each analyzed bit width (`—`: undefined, `∞`: no quantization noise).
    pub fn to_markdown(&self) -> String {
        let opt = |v: Option<f64>, inf: &str| v.map_or(inf.to_string(), |x| format!("{x:.2}"));
        let mut s = format!(
            "| layer | op | channels | range spread | max-abs spread | outlier ratio (max/P{}) |",
            self.options.outlier_percentile
        );
        for b in &self.options.sqnr_bits {
            let _ = write!(s, " SQNR {b}b tensor / channel (dB) |");
        }
        s.push_str("\n|---|---|---:|---:|---:|---:|");
        s.push_str(&"---:|".repeat(self.options.sqnr_bits.len()));
        for l in &self.layers {
            let _ = write!(
                s,
                "\n| {} | {} | {} | {} | {} | {} |",
                l.node,
                l.op,
                l.channels.len(),
                opt(l.range_spread, "—"),
                opt(l.max_abs_spread, "—"),
                opt(l.outlier_ratio, "—"),
            );
            for q in &l.sqnr {
                let _ = write!(
                    s,
                    " {} / {} |",
                    opt(q.per_tensor_db, "∞"),
                    opt(q.per_channel_db, "∞")
                );
            }
        }
        s.push('\n');
        s
    }
}
