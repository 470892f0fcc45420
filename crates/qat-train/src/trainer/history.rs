//! What a training run reports: per-step and per-epoch records, the [`History`], and the [`Event`]s
//! delivered while it runs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::schedule::{Phase, ScheduleState, Transition};

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Phase of the epoch's last optimizer step.
    pub phase: Phase,
    /// Optimizer steps done at the end of the epoch.
    pub step: u64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy (train-mode forward, as seen during the epoch).
    pub train_acc: f64,
    /// Evaluation loss (eval mode).
    pub test_loss: f64,
    /// Evaluation accuracy (eval mode).
    pub test_acc: f64,
    /// Training throughput, images per second (forward + backward + update).
    pub images_per_sec: f64,
    /// Wall time of the epoch's training part.
    pub seconds: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Whether activation observers were frozen.
    pub observers_frozen: bool,
    /// Whether BN statistics were frozen.
    pub bn_frozen: bool,
}

/// One optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Step index (0-based).
    pub step: u64,
    /// Epoch.
    pub epoch: usize,
    /// Loss of the batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Phase.
    pub phase: Phase,
}

/// What a run produced, for reports and plots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Per-epoch statistics.
    pub epochs: Vec<EpochStats>,
    /// Per-step losses (if [`TrainConfig::record_steps`](super::TrainConfig::record_steps)).
    pub steps: Vec<StepRecord>,
    /// Phase transitions.
    pub transitions: Vec<Transition>,
    /// The schedule's counters at the end of the run (for [`export_graph`](super::export_graph) and reports).
    pub schedule: ScheduleState,
}

/// Progress events delivered to the caller's callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The run starts (or resumes) at `epoch`.
    Start {
        /// Epoch (runs and checkpoints resume at epoch boundaries).
        epoch: usize,
        /// Steps already done.
        step: u64,
    },
    /// A phase change was applied to the model.
    Transition(Transition),
    /// A calibration pass ran `batches` forward-only batches.
    Calibrated {
        /// Batches.
        batches: u64,
    },
    /// An optimizer step finished.
    Step(StepRecord),
    /// An epoch finished (after evaluation).
    Epoch(EpochStats),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}
