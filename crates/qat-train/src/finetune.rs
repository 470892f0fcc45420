//! QAT fine-tuning of a model brought as a float graph (for example imported from ONNX), with the
//! pipeline's schedule, and its export.
//!
//! [`qat_fine_tune`] builds the QAT net from the graph ([`crate::models::from_float_graph`]:
//! weights and batch-norm statistics loaded, conv+BN pairs folded), then [`fine_tune_net`] trains
//! it: calibration batches, then QAT with the three delays of the paper and the whitepaper —
//! activation fake quant off for `quant_delay` steps (observers collect), batch norm switched to
//! its moving statistics at `freeze_bn`, activation ranges frozen at `freeze_observers` — each
//! clamped into the run as the pipeline does ([`QatPhases::delays`]), so that the observers are
//! frozen before the run ends and the model can be exported. The result carries the exportable
//! float graph (observed ranges, BN statistics), ready for `qat_export::QuantPlan::new` with
//! [`crate::convert::export_options`].
//!
//! ```
//! use qat_train::finetune::QatPhases;
//! let p = QatPhases { calibration_batches: 16, quant_delay: 60, freeze_bn: 250, freeze_observers: 375 };
//! // A 100-step run: observers freeze at its last step, the BN freeze and the delay follow.
//! let d = p.delays(100);
//! assert_eq!((d.quant_delay, d.freeze_bn_delay, d.freeze_observers_delay), (60, 99, 99));
//! ```

use qat_export::FloatGraph;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data::Dataset;
use crate::models::{FromGraphError, GraphNetOptions, Net, from_float_graph};
use crate::schedule::{QatDelays, ScheduleConfig};
use crate::trainer::{self, Event, History, TrainConfig, TrainError};

/// The QAT phases of a fine-tuning run, in optimizer steps (the pipeline's `[qat]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QatPhases {
    /// Calibration batches (forward only, observers collecting) before the first step.
    pub calibration_batches: u64,
    /// Steps with activation fake quant off (observers collect), paper §3.
    pub quant_delay: u64,
    /// Step at which batch norm switches to its moving statistics (whitepaper §3.2.2).
    pub freeze_bn: u64,
    /// Step at which the activation observers freeze.
    pub freeze_observers: u64,
}

impl QatPhases {
    /// The delays of a run of `total_steps` steps: `freeze_observers` clamped to the last step,
    /// `freeze_bn` to it, `quant_delay` to `freeze_bn` (the pipeline's clamping).
    pub fn delays(&self, total_steps: u64) -> QatDelays {
        let freeze_observers_delay = self.freeze_observers.min(total_steps.saturating_sub(1));
        let freeze_bn_delay = self.freeze_bn.min(freeze_observers_delay);
        QatDelays {
            quant_delay: self.quant_delay.min(freeze_bn_delay),
            freeze_bn_delay,
            freeze_observers_delay,
        }
    }

    /// The schedule of a run of `total_steps` steps: no float steps, calibration, QAT.
    pub fn schedule(&self, total_steps: u64) -> ScheduleConfig {
        ScheduleConfig {
            float_steps: 0,
            calibration_batches: self.calibration_batches,
            qat: Some(self.delays(total_steps)),
        }
    }
}

/// Errors of a fine-tuning run.
#[derive(Debug, Error)]
pub enum FineTuneError {
    /// The graph has no QAT net (the error lists the nodes).
    #[error(transparent)]
    Graph(#[from] FromGraphError),
    /// Training or export failed.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A fine-tuned model.
#[derive(Debug)]
pub struct FineTuned {
    /// The trained QAT net (observers frozen).
    pub net: Net,
    /// The training history.
    pub history: History,
    /// The exportable float graph (weights, BN statistics, observed ranges).
    pub graph: FloatGraph,
    /// The training configuration that ran (with the clamped schedule).
    pub train: TrainConfig,
}

/// Optimizer steps of one epoch of `train` on `data`: full batches, at most
/// [`TrainConfig::steps_per_epoch`].
pub fn steps_per_epoch(data: &Dataset, train: &TrainConfig) -> u64 {
    let full = data.len() / train.batch_size.max(1);
    train.steps_per_epoch.map_or(full, |s| s.min(full)) as u64
}

/// Trains `net` (already holding its float weights) with `train` (its `schedule` is replaced by
/// `phases` clamped into the run) and returns the history, the exportable graph and the
/// configuration that ran. Seeds libtorch with `train.seed` first.
pub fn fine_tune_net(
    net: &mut Net,
    train_set: &Dataset,
    test_set: &Dataset,
    train: &TrainConfig,
    phases: &QatPhases,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(History, FloatGraph, TrainConfig), TrainError> {
    let total = steps_per_epoch(train_set, train) * train.epochs as u64;
    let cfg = TrainConfig {
        schedule: phases.schedule(total),
        ..train.clone()
    };
    trainer::seed_everything(cfg.seed);
    let history = trainer::train(net, train_set, test_set, &cfg, on_event)?;
    let graph = trainer::export_graph(net, &cfg, &history)?;
    Ok((history, graph, cfg))
}

/// Builds the QAT net of `graph` on `train.device` ([`from_float_graph`] with `opts`) and
/// fine-tunes it ([`fine_tune_net`]).
pub fn qat_fine_tune(
    graph: &FloatGraph,
    train_set: &Dataset,
    test_set: &Dataset,
    opts: &GraphNetOptions,
    train: &TrainConfig,
    phases: &QatPhases,
    on_event: &mut dyn FnMut(&Event),
) -> Result<FineTuned, FineTuneError> {
    let mut net = from_float_graph(graph, train.device.device(), opts)?;
    let (history, graph, train) =
        fine_tune_net(&mut net, train_set, test_set, train, phases, on_event)?;
    Ok(FineTuned {
        net,
        history,
        graph,
        train,
    })
}
