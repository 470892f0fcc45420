//! Why post-training quantization loses accuracy, per layer of the float model (range spread,
//! outlier ratio, weight SQNR per tensor vs per channel), and the accuracy each fix buys: PTQ per
//! tensor → PTQ per channel → QAT.

use anyhow::{Context, Result};
use qat_export::analysis::{WeightAnalysis, WeightAnalysisOptions, analyze_weights};
use qat_train::{convert, models::Net};
use xtask::report::FixStep;

use super::{
    Pipeline,
    study::{Study, VariantOutcome},
};

impl Pipeline {
    /// The per-layer weight analysis of the float model (BN folded as the export folds it), with
    /// SQNR at the default study's bit widths.
    pub(super) fn causes(&self, float_net: &Net) -> Result<WeightAnalysis> {
        let graph =
            convert::convert_unchecked(float_net).context("cannot convert the float model")?;
        let mut sqnr_bits = vec![self.cfg.qat.weight_bits, self.cfg.low_bit.weight_bits];
        sqnr_bits.dedup();
        let opts = WeightAnalysisOptions {
            sqnr_bits,
            ..WeightAnalysisOptions::default()
        };
        analyze_weights(&graph, &opts).context("weight analysis failed")
    }
}

/// For each variant of `study` (with its outcome): its PTQ per tensor, PTQ per channel (as
/// measured), then QAT in the integer runtime, each with the points it gains over the step before.
pub(super) fn fixes<'a>(
    study: &Study,
    outcomes: impl IntoIterator<Item = &'a VariantOutcome>,
) -> Vec<FixStep> {
    let mut steps = Vec::new();
    for (v, o) in study.variants.iter().zip(outcomes) {
        let (w, a) = (v.run.weight_bits, v.run.act_bits);
        let mut ladder: Vec<(&str, f64)> = v
            .ptq
            .iter()
            .zip(&o.ptq)
            .map(|(&per_channel, &acc)| {
                let method = if per_channel {
                    "PTQ per channel"
                } else {
                    "PTQ per tensor"
                };
                (method, acc)
            })
            .collect();
        ladder.push(("QAT (integer runtime)", o.qat.int8_acc));
        let mut prev = None;
        for (method, accuracy) in ladder {
            steps.push(FixStep {
                weight_bits: w,
                act_bits: a,
                method: method.into(),
                accuracy,
                gain: prev.map(|p| accuracy - p),
            });
            prev = Some(accuracy);
        }
    }
    steps
}
