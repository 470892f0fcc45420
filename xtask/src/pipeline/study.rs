//! Studies as data. A [`Study`] is a name and a list of [`Variant`]s; each variant is the base
//! [`Run`] of the configuration with the fields that differ overridden (`Run { weight_bits: 4, ..base }`).
//! The default run is a study too (the 8-bit and the low-bit variant); `--ablations` adds the others.

use anyhow::Result;
use qat_train::{
    layers::{Activation, BnFoldMode},
    models::Net,
};
use xtask::report::{AblationRow, BitPoint};

use xtask::config::Config;

use super::{Pipeline, train::QatOutcome};

/// One QAT fine-tuning run's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Run {
    pub act: Activation,
    pub weight_bits: u32,
    pub act_bits: u32,
    pub per_channel: bool,
    pub fold: BnFoldMode,
    pub stats_grad: bool,
    pub epochs: usize,
    pub lr: f64,
    /// Compare the trained model with the export's simulation node by node (the report's two main
    /// exports; the ablation points skip it).
    pub compare_nodes: bool,
}

impl Run {
    /// The configuration's 8-bit QAT run (`[model]` and `[qat]`).
    pub fn base(cfg: &Config) -> Self {
        let q = &cfg.qat;
        Self {
            act: if cfg.model.activation == "relu" {
                Activation::Relu
            } else {
                Activation::Relu6
            },
            weight_bits: q.weight_bits,
            act_bits: q.act_bits,
            per_channel: q.per_channel,
            fold: q.bn_fold(),
            stats_grad: q.bn_stats_grad,
            epochs: q.epochs,
            lr: q.lr,
            compare_nodes: true,
        }
    }

    /// `W{w}A{a}`.
    pub fn bits_name(&self) -> String {
        format!("W{}A{}", self.weight_bits, self.act_bits)
    }
}

/// The float model a variant starts from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FloatModel {
    /// The run's float model.
    Base,
    /// A separately trained float model with the variant's activation, for this many epochs.
    Train { epochs: usize },
}

/// One variant of a study: PTQ of its float model at the run's bit widths (per tensor and/or per
/// channel, in this order), then QAT fine-tuning.
#[derive(Debug, Clone)]
pub(super) struct Variant {
    pub name: String,
    pub float: FloatModel,
    /// PTQ measurements: per channel (`true`) or per tensor (`false`).
    pub ptq: Vec<bool>,
    pub run: Run,
}

/// How a study's results enter the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    /// Points of the bit-width sweep (`report.bit_sweep`).
    BitSweep,
    /// Rows of the ablation table (`report.ablations`).
    Ablation,
}

/// A named list of variants.
#[derive(Debug, Clone)]
pub(super) struct Study {
    pub name: String,
    pub table: Table,
    pub variants: Vec<Variant>,
}

/// What a variant measured (its trained model is dropped).
#[derive(Debug, Clone)]
pub(super) struct VariantResult {
    pub variant: Variant,
    pub float_acc: f64,
    pub ptq: Vec<f64>,
    pub qat: f64,
    pub qat_int8: f64,
}

/// The default run: QAT at the configuration's bits, and the low-bit run (always per channel).
pub(super) fn default_study(cfg: &Config) -> Study {
    let base = Run::base(cfg);
    let lb = &cfg.low_bit;
    let low = Run {
        weight_bits: lb.weight_bits,
        act_bits: lb.act_bits,
        per_channel: true,
        epochs: lb.epochs,
        lr: lb.lr,
        ..base
    };
    Study {
        name: "default".into(),
        table: Table::BitSweep,
        variants: vec![
            Variant {
                name: base.bits_name(),
                float: FloatModel::Base,
                ptq: vec![false, true],
                run: base,
            },
            Variant {
                name: low.bits_name(),
                float: FloatModel::Base,
                ptq: vec![false, true],
                run: low,
            },
        ],
    }
}

/// The `--ablations` studies, skipping bit-sweep points in `done` (weight bits, activation bits).
pub(super) fn ablation_studies(cfg: &Config, done: &[(u32, u32)]) -> Vec<Study> {
    let ab = &cfg.ablations;
    let base = Run {
        epochs: ab.qat_epochs,
        compare_nodes: false,
        ..Run::base(cfg)
    };
    let variant = |name: String, ptq: Vec<bool>, run: Run| Variant {
        name,
        float: FloatModel::Base,
        ptq,
        run,
    };
    // Weight bits × activation bits (paper tables 4.7/4.8), PTQ per channel.
    let mut sweep = Vec::new();
    let mut seen = done.to_vec();
    for &w in &ab.bits {
        for &a in &ab.bits {
            if seen.contains(&(w, a)) {
                continue;
            }
            seen.push((w, a));
            let run = Run {
                weight_bits: w,
                act_bits: a,
                per_channel: true,
                ..base
            };
            sweep.push(variant(run.bits_name(), vec![true], run));
        }
    }
    // BN-fold correction on/off, and the whitepaper fold's batch statistics as constants of the
    // backward pass (TF) or differentiated through.
    let folds = [
        (
            "whitepaper σ_B/σ correction, statistics constant in backward (TF)",
            BnFoldMode::Whitepaper,
            false,
        ),
        (
            "whitepaper σ_B/σ correction, gradient through statistics",
            BnFoldMode::Whitepaper,
            true,
        ),
        ("PyTorch conv_fused", BnFoldMode::PyTorch, false),
    ]
    .into_iter()
    .map(|(name, fold, stats_grad)| {
        let run = Run {
            fold,
            stats_grad,
            ..base
        };
        variant(name.into(), Vec::new(), run)
    })
    .collect();
    // Per tensor vs per channel, at the 8-bit and at the low weight width.
    let mut granularity = Vec::new();
    for weight_bits in [cfg.qat.weight_bits, cfg.low_bit.weight_bits] {
        for per_channel in [false, true] {
            let run = Run {
                weight_bits,
                per_channel,
                ..base
            };
            let name = format!(
                "{} {}",
                run.bits_name(),
                if per_channel {
                    "per channel"
                } else {
                    "per tensor"
                }
            );
            granularity.push(variant(name, vec![per_channel], run));
        }
    }
    // ReLU vs ReLU6: a separate float model for the activation the base run does not use.
    let activation = [Activation::Relu, Activation::Relu6]
        .into_iter()
        .map(|act| Variant {
            name: format!("{act:?}"),
            float: if act == base.act {
                FloatModel::Base
            } else {
                FloatModel::Train {
                    epochs: ab.float_epochs,
                }
            },
            ptq: vec![false],
            run: Run { act, ..base },
        })
        .collect();
    vec![
        Study {
            name: "bit width".into(),
            table: Table::BitSweep,
            variants: sweep,
        },
        Study {
            name: "BN folding".into(),
            table: Table::Ablation,
            variants: folds,
        },
        Study {
            name: "weight granularity".into(),
            table: Table::Ablation,
            variants: granularity,
        },
        Study {
            name: "activation".into(),
            table: Table::Ablation,
            variants: activation,
        },
    ]
}

/// A variant's float model, trained outcome and PTQ accuracies.
pub(super) struct VariantOutcome {
    pub float_acc: f64,
    pub ptq: Vec<f64>,
    pub qat: QatOutcome,
}

impl VariantOutcome {
    /// The measured numbers of variant `v`, without the trained model.
    pub fn summary(&self, v: &Variant) -> VariantResult {
        VariantResult {
            variant: v.clone(),
            float_acc: self.float_acc,
            ptq: self.ptq.clone(),
            qat: self.qat.fake_quant_acc,
            qat_int8: self.qat.int8_acc,
        }
    }
}

impl Pipeline {
    /// Runs one variant from the run's float model `float_net` (test accuracy `float_acc`).
    pub(super) fn run_variant(
        &self,
        float_net: &Net,
        float_acc: f64,
        v: &Variant,
    ) -> Result<VariantOutcome> {
        let own = match v.float {
            FloatModel::Base => None,
            FloatModel::Train { epochs } => Some(self.train_float(v.run.act, epochs)?),
        };
        let (net, float_acc) = match &own {
            Some((net, _, acc)) => (net, *acc),
            None => (float_net, float_acc),
        };
        let ptq = v
            .ptq
            .iter()
            .map(|&per_channel| self.ptq(net, v.run.weight_bits, v.run.act_bits, per_channel))
            .collect::<Result<Vec<_>>>()?;
        let qat = self.qat(net, v.run)?;
        Ok(VariantOutcome {
            float_acc,
            ptq,
            qat,
        })
    }

    /// Runs every variant of `study` in order.
    pub(super) fn run_study(
        &self,
        float_net: &Net,
        float_acc: f64,
        study: &Study,
    ) -> Result<Vec<VariantResult>> {
        study
            .variants
            .iter()
            .map(|v| Ok(self.run_variant(float_net, float_acc, v)?.summary(v)))
            .collect()
    }
}

/// A study's results as report rows: bit-sweep points or ablation rows.
pub(super) fn report_rows(
    study: &Study,
    results: &[VariantResult],
    sweep: &mut Vec<BitPoint>,
    ablations: &mut Vec<AblationRow>,
) {
    for r in results {
        let run = &r.variant.run;
        match study.table {
            Table::BitSweep => sweep.push(BitPoint {
                weight_bits: run.weight_bits,
                act_bits: run.act_bits,
                // The per-channel PTQ measurement.
                ptq: r.variant.ptq.iter().position(|&pc| pc).map(|i| r.ptq[i]),
                qat: r.qat,
                qat_int8: Some(r.qat_int8),
            }),
            Table::Ablation => ablations.push(AblationRow {
                study: study.name.clone(),
                variant: r.variant.name.clone(),
                float: Some(r.float_acc),
                ptq: r.ptq.first().copied(),
                qat: r.qat,
            }),
        }
    }
}
