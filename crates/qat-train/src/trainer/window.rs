//! The per-step values the trainer reports (loss, correct predictions), kept on the device for a
//! window of steps and read back in one transfer: on a GPU every read is a synchronization, and
//! reading two scalars per step stalls the step's queue.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::ProgressBar;
use qat_autograd::host_read;
use tch::{Kind, Tensor};

use super::{Event, History, StepRecord, TrainError};
use crate::schedule::Phase;

/// One step whose values are still on the device.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingStep {
    pub step: u64,
    pub batch: usize,
    pub phase: Phase,
    pub batch_size: i64,
    /// The LR the optimizer step used (known after the step).
    pub lr: f64,
}

/// Steps and their `[loss, correct]` (f64, on the device) since the last read.
#[derive(Debug, Default)]
pub(super) struct StepWindow {
    steps: Vec<PendingStep>,
    values: Vec<Tensor>,
}

impl StepWindow {
    /// Adds a step: its loss (any float scalar tensor) and its count of correct predictions
    /// (an integer scalar tensor). No host read.
    pub fn push(
        &mut self,
        step: PendingStep,
        loss: &Tensor,
        correct: &Tensor,
    ) -> Result<(), tch::TchError> {
        // f32 → f64 and an integer count → f64 are exact: the values read are the same as
        // reading each scalar on its own.
        let v = Tensor::f_stack(
            &[
                loss.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([1])?,
                correct.f_to_kind(Kind::Double)?.f_reshape([1])?,
            ],
            0,
        )?;
        self.steps.push(step);
        self.values.push(v);
        Ok(())
    }

    /// Steps in the window.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Sets the LR of the newest step.
    pub fn set_last_lr(&mut self, lr: f64) {
        if let Some(s) = self.steps.last_mut() {
            s.lr = lr;
        }
    }

    /// `(loss, correct)` of every step in the window, in order: one host read, counted as `what`.
    pub fn read(&self, what: &'static str) -> Result<Vec<(f64, f64)>, tch::TchError> {
        if self.values.is_empty() {
            return Ok(Vec::new());
        }
        let all = Tensor::f_stack(&self.values, 0)?;
        let flat = host_read::vec_f64(&all, what)?;
        Ok(flat.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    /// The first step (and its loss) whose loss in `values` is not finite.
    pub fn first_non_finite(&self, values: &[(f64, f64)]) -> Option<(PendingStep, f64)> {
        (self.steps.iter().zip(values))
            .find(|(_, v)| !v.0.is_finite())
            .map(|(s, v)| (*s, v.0))
    }

    /// Empties the window, returning its steps.
    pub fn take(&mut self) -> Vec<PendingStep> {
        self.values.clear();
        std::mem::take(&mut self.steps)
    }
}

/// [`TrainError::NonFinite`] for the first non-finite loss in the window's `values`, if any.
pub(super) fn check_finite(
    window: &StepWindow,
    values: &[(f64, f64)],
    epoch: usize,
    last_checkpoint: &Option<PathBuf>,
    pb: &ProgressBar,
) -> Result<(), TrainError> {
    let Some((s, loss)) = window.first_non_finite(values) else {
        return Ok(());
    };
    pb.abandon_with_message(format!("non-finite loss {loss}"));
    tracing::error!(step = s.step, epoch, loss, "non-finite loss; stopping");
    Err(TrainError::NonFinite {
        loss,
        step: s.step,
        epoch,
        batch: s.batch,
        phase: s.phase,
        last_checkpoint: last_checkpoint.clone(),
    })
}

/// An epoch's running totals, which read windows add to.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EpochTotals {
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: i64,
}

impl EpochTotals {
    /// Adds the read `values` of `steps` (in order) to the totals, records each step in `history`
    /// (with `record_steps`) and sends its [`Event::Step`].
    pub fn record(
        &mut self,
        history: &mut History,
        steps: &[PendingStep],
        values: &[(f64, f64)],
        epoch: usize,
        record_steps: bool,
        on_event: &mut dyn FnMut(&Event),
    ) {
        for (s, &(loss, correct)) in steps.iter().zip(values) {
            self.loss_sum += loss * s.batch_size as f64;
            self.correct += correct as i64;
            self.seen += s.batch_size;
            let rec = StepRecord {
                step: s.step,
                epoch,
                loss,
                lr: s.lr,
                phase: s.phase,
            };
            if record_steps {
                history.steps.push(rec);
            }
            on_event(&Event::Step(rec));
        }
    }
}

/// The progress bar's message after a read window (the newest step's loss).
pub(super) fn progress_message(
    pb: &ProgressBar,
    values: &[(f64, f64)],
    phase: Phase,
    totals: &EpochTotals,
    t0: Instant,
) {
    let (correct, seen) = (totals.correct, totals.seen);
    let loss = values.last().map_or(f64::NAN, |v| v.0);
    let flags = phase.flags();
    pb.set_message(format!(
        "{phase} loss {loss:.4} acc {:.2}% {:.0} img/s{}{}",
        100.0 * correct as f64 / seen.max(1) as f64,
        seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
        if phase == Phase::ObserversFrozen {
            " [obs frozen]"
        } else {
            ""
        },
        if flags.bn_frozen { " [bn frozen]" } else { "" },
    ));
}
