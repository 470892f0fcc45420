//! The training schedule as a typed state machine (paper §3; whitepaper §3.2 and §4), learning-rate
//! schedules and optimizers.
//!
//! ## Phases
//!
//! ```text
//!  Float ──► Calibrate ──► QatWarmup ──► Qat ──► BnFrozen ──► ObserversFrozen (export-ready once calibrated)
//!  (float     (optional:    (weights FQ,   (all FQ,  (BN moving   (ranges fixed)
//!   steps)     forward       activations    EMA       stats, no
//!              passes,       observed, not  ranges)   updates)
//!              observers     quantized:
//!              only)         quant_delay)
//! ```
//!
//! Every transition is driven by counters held in [`ScheduleState`] (optimizer steps and calibration
//! batches), so a resumed run re-enters exactly the phase it left. The QAT delays are counted from the first
//! QAT step (after `float_steps` float steps): weights are fake-quantized from the first QAT step,
//! activation fake quant starts at `quant_delay`, BN freezes at `freeze_bn_delay`, observers freeze
//! at `freeze_observers_delay`, with
//! `quant_delay ≤ freeze_bn_delay ≤ freeze_observers_delay` (the order of TF's `quantize` rewriter and of the
//! PyTorch QAT tutorial: freeze BN, then observers).
//!
//! A phase maps to [`QuantFlags`] that the model applies to its layers ([`PhaseControl`], the one
//! whole-model control). Export requires an [`ExportReady`] token, which only
//! [`Schedule::export_ready`] hands out, and only when the observers are frozen and the model reports
//! every range calibrated (an uncalibrated observer is an error, never a silent default range).
//!
//! ```
//! use qat_train::schedule::{Phase, QatDelays, Schedule, ScheduleConfig};
//! let cfg = ScheduleConfig {
//!     float_steps: 10,
//!     calibration_batches: 0,
//!     qat: Some(QatDelays { quant_delay: 5, freeze_bn_delay: 20, freeze_observers_delay: 30 }),
//! };
//! let s = Schedule::new(cfg)?;
//! assert_eq!(s.phase_at(0, 0), Phase::Float);
//! assert_eq!(s.phase_at(12, 0), Phase::QatWarmup);
//! assert_eq!(s.phase_at(15, 0), Phase::Qat);
//! assert_eq!(s.phase_at(30, 0), Phase::BnFrozen);
//! assert_eq!(s.phase_at(40, 0), Phase::ObserversFrozen);
//! # Ok::<(), qat_train::schedule::ScheduleError>(())
//! ```

mod lr;
mod optim;

use serde::{Deserialize, Serialize};

use crate::models::ModelError;

pub use lr::{LrConfig, LrSchedule};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};

/// Errors of the schedule, the LR schedule and the optimizer.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The configuration is inconsistent (delays out of order, non-positive LR, …).
    #[error("invalid schedule: {0}")]
    Config(String),
    /// Export was requested before the schedule reached an export-ready state.
    #[error("export refused: {0}")]
    NotExportReady(String),
    /// The model could not report its calibration state (boxed to keep the error small).
    #[error(transparent)]
    Model(Box<ModelError>),
    /// A torch call failed.
    #[error("torch error in the optimizer: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<ModelError> for ScheduleError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// The phases of training, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Float training: no observers, no fake quant, BN with batch statistics.
    Float,
    /// Post-training calibration: forward passes (no optimizer step) with the activation observers recording
    /// ranges and no fake quant.
    Calibrate,
    /// QAT before `quant_delay`: weights fake-quantized (folded with BN), activation observers
    /// running, activations not yet fake-quantized — the paper's schedule (§3: activation
    /// quantization is disabled at the start of training while the ranges settle). TF's
    /// `contrib/quantize` delays the weights' fake quant too.
    QatWarmup,
    /// Full QAT: weights and activations fake-quantized, EMA ranges updating, BN with batch statistics and
    /// the σ_B/σ correction.
    Qat,
    /// As `Qat` with BN frozen: moving statistics used and no longer updated (whitepaper §3.2.2).
    BnFrozen,
    /// As `BnFrozen` with observers frozen: the ranges are final; the model can be exported.
    ObserversFrozen,
}

impl Phase {
    /// The layer switches that this phase means.
    pub fn flags(self) -> QuantFlags {
        let (observe, weights, activations, bn_frozen) = match self {
            Phase::Float => (false, false, false, false),
            Phase::Calibrate => (true, false, false, false),
            Phase::QatWarmup => (true, true, false, false),
            Phase::Qat => (true, true, true, false),
            Phase::BnFrozen => (true, true, true, true),
            Phase::ObserversFrozen => (false, true, true, true),
        };
        QuantFlags {
            observe,
            calibrate: self == Phase::Calibrate,
            fake_quant_weights: weights,
            fake_quant_activations: activations,
            bn_frozen,
        }
    }

    /// Whether the optimizer steps in this phase (calibration only runs forward passes).
    pub fn trains(self) -> bool {
        self != Phase::Calibrate
    }

    /// Short name for logs and progress bars.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Float => "float",
            Phase::Calibrate => "calibrate",
            Phase::QatWarmup => "qat-warmup",
            Phase::Qat => "qat",
            Phase::BnFrozen => "qat/bn-frozen",
            Phase::ObserversFrozen => "qat/frozen",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the layers do in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantFlags {
    /// Activation observers update their ranges.
    pub observe: bool,
    /// Observers also collect in eval-mode forward passes (post-training calibration).
    pub calibrate: bool,
    /// Weights are fake-quantized (after BN folding).
    pub fake_quant_weights: bool,
    /// Activations are fake-quantized.
    pub fake_quant_activations: bool,
    /// BN uses (and no longer updates) its moving statistics.
    pub bn_frozen: bool,
}

/// The whole-model control: a model whose quantization behaviour the schedule drives, phase by phase
/// (implemented by [`crate::models::Net`], which sends the switches to its layers).
pub trait PhaseControl {
    /// Applies the switches of a phase to every layer.
    fn apply_flags(&mut self, flags: QuantFlags) -> Result<(), ModelError>;
    /// Names of the activation ranges that have not been observed yet (empty when all are calibrated).
    fn uncalibrated(&self) -> Result<Vec<String>, ModelError>;
}

/// The QAT delays, in optimizer steps counted from the first QAT step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QatDelays {
    /// Steps with weight fake quant and activation observation but no activation fake quant.
    pub quant_delay: u64,
    /// Step at which BN switches to (and freezes) its moving statistics.
    pub freeze_bn_delay: u64,
    /// Step at which the activation ranges freeze.
    pub freeze_observers_delay: u64,
}

/// Configuration of the phase state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Float training steps before anything else.
    pub float_steps: u64,
    /// Calibration batches (forward only) after float training; 0 skips calibration.
    pub calibration_batches: u64,
    /// QAT delays; `None` trains float only (then, with calibration, goes straight to `ObserversFrozen`:
    /// plain post-training quantization).
    pub qat: Option<QatDelays>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            float_steps: 0,
            calibration_batches: 0,
            qat: Some(QatDelays {
                quant_delay: 0,
                freeze_bn_delay: u64::MAX,
                freeze_observers_delay: u64::MAX,
            }),
        }
    }
}

/// The counters that determine the phase (saved in checkpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Calibration batches run so far.
    pub calibration_batches: u64,
    /// The phase last applied to the model (`None` before the first [`Schedule::sync`]).
    pub applied: Option<Phase>,
}

/// A phase change, as reported by [`Schedule::sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Previous phase (`None` at the start).
    pub from: Option<Phase>,
    /// New phase.
    pub to: Phase,
    /// Optimizer step at which it happened.
    pub step: u64,
}

/// Proof that the schedule allowed export: only [`Schedule::export_ready`] creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportReady {
    _private: (),
}

/// The schedule: configuration plus counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    config: ScheduleConfig,
    state: ScheduleState,
}

impl Schedule {
    /// Validates `config` (delays in order) and starts at step 0.
    pub fn new(config: ScheduleConfig) -> Result<Self, ScheduleError> {
        if let Some(d) = config.qat
            && !(d.quant_delay <= d.freeze_bn_delay
                && d.freeze_bn_delay <= d.freeze_observers_delay)
        {
            return Err(ScheduleError::Config(format!(
                "need quant_delay ≤ freeze_bn_delay ≤ freeze_observers_delay, got {} / {} / {}",
                d.quant_delay, d.freeze_bn_delay, d.freeze_observers_delay
            )));
        }
        Ok(Self {
            config,
            state: ScheduleState::default(),
        })
    }

    /// Restores a schedule from a checkpoint's state.
    pub fn with_state(config: ScheduleConfig, state: ScheduleState) -> Result<Self, ScheduleError> {
        let mut s = Self::new(config)?;
        s.state = state;
        Ok(s)
    }

    /// The configuration.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// The counters.
    pub fn state(&self) -> &ScheduleState {
        &self.state
    }

    /// The phase for `step` optimizer steps and `calibrated` calibration batches done.
    pub fn phase_at(&self, step: u64, calibrated: u64) -> Phase {
        let c = &self.config;
        if step < c.float_steps {
            return Phase::Float;
        }
        if calibrated < c.calibration_batches {
            return Phase::Calibrate;
        }
        match c.qat {
            None if c.calibration_batches > 0 => Phase::ObserversFrozen,
            None => Phase::Float,
            Some(d) => {
                let q = step - c.float_steps;
                if q >= d.freeze_observers_delay {
                    Phase::ObserversFrozen
                } else if q >= d.freeze_bn_delay {
                    Phase::BnFrozen
                } else if q >= d.quant_delay {
                    Phase::Qat
                } else {
                    Phase::QatWarmup
                }
            }
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase_at(self.state.step, self.state.calibration_batches)
    }

    /// Applies the current phase to `model` if it differs from the last applied one (always on the first
    /// call, e.g. after a resume) and returns the transition.
    pub fn sync(&mut self, model: &mut dyn PhaseControl) -> Result<Option<Transition>, ModelError> {
        let to = self.phase();
        if self.state.applied == Some(to) {
            return Ok(None);
        }
        model.apply_flags(to.flags())?;
        let t = Transition {
            from: self.state.applied,
            to,
            step: self.state.step,
        };
        self.state.applied = Some(to);
        tracing::info!(from = ?t.from, to = %to, step = t.step, "schedule transition");
        Ok(Some(t))
    }

    /// Records one optimizer step.
    pub fn record_step(&mut self) {
        self.state.step += 1;
    }

    /// Records one calibration batch.
    pub fn record_calibration_batch(&mut self) {
        self.state.calibration_batches += 1;
    }

    /// The export token: granted only in [`Phase::ObserversFrozen`] with every activation range observed.
    pub fn export_ready(&self, model: &dyn PhaseControl) -> Result<ExportReady, ScheduleError> {
        let phase = self.phase();
        if phase != Phase::ObserversFrozen || self.state.applied != Some(phase) {
            return Err(ScheduleError::NotExportReady(format!(
                "phase is {phase} at step {} (applied: {:?}); export needs frozen observers",
                self.state.step, self.state.applied
            )));
        }
        let missing = model.uncalibrated()?;
        if !missing.is_empty() {
            return Err(ScheduleError::NotExportReady(format!(
                "uncalibrated ranges: {}",
                missing.join(", ")
            )));
        }
        Ok(ExportReady { _private: () })
    }
}
