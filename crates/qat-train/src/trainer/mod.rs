//! The trainer: epochs of optimizer steps driven by the [`Schedule`], evaluation, progress bars, `tracing`
//! logs, NaN/Inf guard, checkpoints with exact resume, and a serde [`History`].
//!
//! Library first: [`train`] takes a model, the datasets, a serde [`TrainConfig`] and an event callback, and
//! returns the [`History`]. Progress bars (indicatif) are drawn on stderr only when it is a terminal and
//! [`TrainConfig::progress`] is on; logs go through `tracing` (install a subscriber to see them).
//!
//! Reproducibility: the batch order and augmentation come from [`crate::data::SplitMix64`] seeded by
//! `(seed, epoch, batch)`; the model's initial weights come from `tch::manual_seed` (see [`seed_everything`]);
//! nothing else in a step is random. On the CPU with one thread (`tch::set_num_threads(1)`), a run resumed
//! from a checkpoint reproduces the uninterrupted run bit for bit (the tests check ≤ 1e-6).
//!
//! Per step: `schedule.sync` (apply a phase change to the layers) → forward (train mode) → cross-entropy →
//! finite check → backward → optimizer step with the scheduled LR. A non-finite loss stops training with
//! [`TrainError::NonFinite`], leaving the last checkpoint (written only at epoch ends, after a finite
//! epoch) untouched. The loss and accuracy of each step stay on the device for
//! [`TrainConfig::sync_every`] steps and are read back together (one read per window, none in the
//! other steps: on a GPU a read is a synchronization); the check runs before the update of the
//! window's last step, so with a window of one step (the CPU default) training stops before the
//! update of the non-finite step.
//!
//! A binary that trains should call [`tune_allocator`] once at start-up (opt-in: it changes glibc's
//! allocator for the whole process; the speed-ups it buys are in its docs).
//!
//! ```no_run
//! use qat_train::data::Dataset;
//! use qat_train::models::{self, ModelSpec};
//! use qat_train::trainer::{self, TrainConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = Dataset::load_mnist_dir("data/mnist-10k")?;
//! trainer::seed_everything(0);
//! let mut net = models::build(&ModelSpec::lenet(), tch::Device::cuda_if_available())?;
//! let cfg = TrainConfig { epochs: 2, ..TrainConfig::default() };
//! let history = trainer::train(&mut net, &data.train, &data.test, &cfg, &mut |_| {})?;
//! println!("test accuracy {:.2}%", 100.0 * history.epochs.last().unwrap().test_acc);
//! # Ok(()) }
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

mod alloc;
pub mod collective;
mod config;
mod history;
mod window;

pub use alloc::tune_allocator;
pub use config::{DeviceChoice, TrainConfig};
pub use history::{EpochStats, Event, History, StepRecord};
use window::{EpochTotals, PendingStep, StepWindow, check_finite, progress_message};

use crate::checkpoint::{self, CheckpointError};
use crate::data::{Augment, DataError, Dataset, Loader, LoaderConfig};
use crate::models::{ModelError, Net};
use crate::schedule::{Optimizer, Phase, Schedule, ScheduleError, ScheduleState};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Data loading or batching failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model failed (a layer error names the layer).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Schedule or optimizer misconfiguration.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Saving or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A torch op of the trainer itself failed.
    #[error("trainer: {0}")]
    Torch(#[from] tch::TchError),
    /// The loss became NaN or infinite; training stopped before applying the update.
    #[error(
        "non-finite loss {loss} at step {step} (epoch {epoch}, batch {batch}, phase {phase}); \
         last good checkpoint: {}", last_checkpoint.as_ref().map_or("none".into(), |p| p.display().to_string())
    )]
    NonFinite {
        /// The loss value.
        loss: f64,
        /// Optimizer step.
        step: u64,
        /// Epoch.
        epoch: usize,
        /// Batch within the epoch.
        batch: usize,
        /// Phase.
        phase: Phase,
        /// The checkpoint left untouched, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// Conversion to the export graph failed.
    #[error(transparent)]
    Convert(Box<crate::convert::ConvertError>),
    /// The configuration does not fit the data or the model.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A data-parallel synchronization failed (a rank went away, a timeout).
    #[error(transparent)]
    Sync(#[from] collective::SyncError),
}

/// What a checkpoint's JSON holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    model: String,
    schedule: ScheduleState,
    /// Next epoch to run.
    epoch: usize,
    history: History,
    /// Informational snapshot of observer ranges `(name, min, max, frozen)`.
    observers: Vec<crate::models::ObserverSnapshot>,
}

/// Seeds libtorch's generator (weight initialisation) — call before building the model.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// Mean cross-entropy loss and accuracy of `model` on `data` in eval mode (no observer updates, moving BN
/// statistics), at most `limit` samples.
pub fn evaluate(
    model: &mut Net,
    data: &Dataset,
    cfg: &TrainConfig,
    limit: Option<usize>,
) -> Result<(f64, f64), TrainError> {
    evaluate_loader(model, &eval_loader(data, cfg, limit)?)
}

fn eval_loader(
    data: &Dataset,
    cfg: &TrainConfig,
    limit: Option<usize>,
) -> Result<Loader, TrainError> {
    let data = match limit {
        Some(n) if n < data.len() => data.take(n),
        _ => data.clone(),
    };
    Ok(Loader::new(
        Arc::new(data),
        LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: false,
            seed: cfg.seed,
            drop_last: false,
            normalize: cfg.normalize.clone(),
            augment: Augment::none(),
            prefetch: cfg.prefetch,
        },
    )?)
}

fn evaluate_loader(model: &mut Net, loader: &Loader) -> Result<(f64, f64), TrainError> {
    let device = model.device();
    let _g = tch::no_grad_guard();
    // Every batch's loss and count stay on the device; one read at the end.
    let mut window = StepWindow::default();
    for b in loader.epoch(0, 0) {
        let b = b?;
        let x = b.images.f_to_device(device)?;
        let y = b.labels.f_to_device(device)?;
        let logits = model.forward_t(&x, false)?;
        let correct = logits
            .f_argmax(-1, false)?
            .f_eq_tensor(&y)?
            .f_sum(Kind::Int64)?;
        let batch = PendingStep {
            step: 0,
            batch: b.index,
            phase: Phase::Float,
            batch_size: y.size()[0],
            lr: 0.0,
        };
        window.push(batch, &cross_entropy(&logits, &y)?, &correct)?;
    }
    let values = window.read("eval loss window")?;
    let (mut loss_sum, mut correct, mut n) = (0f64, 0i64, 0i64);
    for (b, (loss, c)) in window.take().iter().zip(values) {
        loss_sum += loss * b.batch_size as f64;
        correct += c as i64;
        n += b.batch_size;
    }
    let n = n.max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

fn progress_bar(enabled: bool, len: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Trains `model` on `train_set`, evaluating on `test_set` after every epoch; see the [module docs](self).
///
/// With `cfg.resume` and a checkpoint in `cfg.checkpoint_dir`, the model, optimizer, schedule counters and
/// history are restored and training continues at the next epoch.
pub fn train(
    model: &mut Net,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(&Event),
) -> Result<History, TrainError> {
    train_with(model, train_set, test_set, cfg, None, on_event)
}

/// [`train`] as one rank of a data-parallel group (see [`collective`]): rank 0's model is
/// broadcast to every rank, each rank takes every `W`-th batch of the epoch (`cfg.batch_size` is
/// the per-rank batch; the global batch is `W` times larger and `cfg.steps_per_epoch` counts
/// global steps), gradients are averaged before every optimizer step and the batch-norm and
/// observer buffers after it, so every rank holds the same model at every step. The losses and
/// accuracies in the history and the events are those of the global batch. Only rank 0 draws
/// progress and writes checkpoints; every rank resumes from `cfg.checkpoint_dir` when asked to.
/// Every rank must call this with the same model, data and configuration.
pub fn train_distributed(
    model: &mut Net,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    comm: &dyn collective::Collective,
    on_event: &mut dyn FnMut(&Event),
) -> Result<History, TrainError> {
    train_with(model, train_set, test_set, cfg, Some(comm), on_event)
}

fn train_with(
    model: &mut Net,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    comm: Option<&dyn collective::Collective>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<History, TrainError> {
    let device = model.device();
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world_size()));
    if train_set.image_shape() != model.input_chw() {
        return Err(TrainError::Config(format!(
            "model {} expects images {:?}, dataset {} has {:?}",
            model.name(),
            model.input_chw(),
            train_set.name,
            train_set.image_shape()
        )));
    }
    let loader = Loader::new(
        Arc::new(train_set.clone()),
        LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            seed: cfg.seed,
            drop_last: true,
            normalize: cfg.normalize.clone(),
            augment: cfg.augment,
            prefetch: cfg.prefetch,
        },
    )?;
    let steps_per_epoch = collective::shard_steps(loader.num_batches(), world, cfg.steps_per_epoch);
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "{} has {} samples, fewer than one batch of {} for each of {world} rank(s)",
            train_set.name,
            train_set.len(),
            cfg.batch_size
        )));
    }
    let eval = eval_loader(test_set, cfg, cfg.eval_samples)?;
    let sync_every = cfg.sync_every_on(device);
    let mut schedule = Schedule::new(cfg.schedule)?;
    let mut opt = Optimizer::new(model.var_store(), cfg.optimizer)?;
    let mut history = History::default();
    let mut start_epoch = 0;
    if cfg.resume
        && let Some(dir) = &cfg.checkpoint_dir
        && checkpoint::exists(dir)
    {
        let st: TrainerState = checkpoint::load(dir, model.var_store(), &mut opt)?;
        if st.model != model.name() {
            return Err(TrainError::Config(format!(
                "checkpoint {} holds model {}, not {}",
                dir.display(),
                st.model,
                model.name()
            )));
        }
        // Re-apply the phase to the fresh model on the first sync.
        schedule = Schedule::with_state(
            cfg.schedule,
            ScheduleState {
                applied: None,
                ..st.schedule
            },
        )?;
        history = st.history;
        start_epoch = st.epoch;
        tracing::info!(dir = %dir.display(), epoch = start_epoch, step = schedule.state().step, "resumed");
    }
    if let Some(c) = comm {
        collective::broadcast_state(c, model.var_store())?;
        tracing::info!(
            rank,
            world,
            "data-parallel replicas start from rank 0's model"
        );
    }
    on_event(&Event::Start {
        epoch: start_epoch,
        step: schedule.state().step,
    });
    let mut last_checkpoint = cfg.checkpoint_dir.clone().filter(|d| checkpoint::exists(d));

    for epoch in start_epoch..cfg.epochs {
        let pb = progress_bar(cfg.progress && rank == 0, steps_per_epoch as u64);
        pb.set_prefix(format!("epoch {epoch}"));
        let t0 = Instant::now();
        let mut totals = EpochTotals::default();
        let mut lr = opt.current_lr();
        let mut last_phase = schedule.phase();
        let mut window = StepWindow::default();
        let batches = loader
            .epoch_shard(epoch as u64, 0, rank, world)
            .take(steps_per_epoch);
        for batch in batches {
            let batch = batch?;
            sync(&mut schedule, model, &mut history, on_event)?;
            if schedule.phase() == Phase::Calibrate {
                let n = calibrate(model, &loader, &mut schedule, device)?;
                on_event(&Event::Calibrated { batches: n });
                sync(&mut schedule, model, &mut history, on_event)?;
            }
            let phase = schedule.phase();
            let x = batch.images.f_to_device(device)?;
            let y = batch.labels.f_to_device(device)?;
            let logits = model.forward_t(&x, true)?;
            let loss = cross_entropy(&logits, &y)?;
            let correct_t = logits
                .f_argmax(-1, false)?
                .f_eq_tensor(&y)?
                .f_sum(Kind::Int64)?;
            // Data-parallel: the global batch's mean loss and correct count (a non-finite loss on
            // any rank is then seen by every rank at the same step, and all stop together).
            let (loss_seen, correct_t) = match comm {
                Some(c) => global_stats(c, &loss, &correct_t)?,
                None => (loss.shallow_clone(), correct_t),
            };
            let pending = PendingStep {
                step: schedule.state().step,
                batch: batch.index,
                phase,
                batch_size: y.size()[0] * world as i64,
                lr,
            };
            window.push(pending, &loss_seen, &correct_t)?;
            // The window's values are read (one transfer) before the update of its last step, so
            // with a window of one step a non-finite loss stops before its own update.
            let values = if window.len() >= sync_every {
                let v = window.read("train loss window")?;
                check_finite(&window, &v, epoch, &last_checkpoint, &pb)?;
                Some(v)
            } else {
                None
            };
            opt.zero_grad();
            loss.f_backward()?;
            if let Some(c) = comm {
                collective::all_reduce_mean_grads(c, model.var_store())?;
            }
            lr = opt.step();
            if let Some(c) = comm {
                collective::sync_buffers(c, model.var_store())?;
            }
            schedule.record_step();
            window.set_last_lr(lr);
            last_phase = phase;
            pb.inc(1);
            if let Some(v) = values {
                let steps = window.take();
                totals.record(&mut history, &steps, &v, epoch, cfg.record_steps, on_event);
                progress_message(&pb, &v, phase, &totals, t0);
            }
        }
        if window.len() > 0 {
            let v = window.read("train loss window")?;
            check_finite(&window, &v, epoch, &last_checkpoint, &pb)?;
            let steps = window.take();
            totals.record(&mut history, &steps, &v, epoch, cfg.record_steps, on_event);
        }
        let seconds = t0.elapsed().as_secs_f64();
        let (test_loss, test_acc) = evaluate_loader(model, &eval)?;
        if !test_loss.is_finite() {
            return Err(TrainError::NonFinite {
                loss: test_loss,
                step: schedule.state().step,
                epoch,
                batch: steps_per_epoch,
                phase: schedule.phase(),
                last_checkpoint,
            });
        }
        // The phase the epoch's last step ran in (the next step may already be in a new one).
        let phase = last_phase;
        let EpochTotals {
            loss_sum,
            correct,
            seen,
        } = totals;
        let seen_f = seen.max(1) as f64;
        let stats = EpochStats {
            epoch,
            phase,
            step: schedule.state().step,
            train_loss: loss_sum / seen_f,
            train_acc: correct as f64 / seen_f,
            test_loss,
            test_acc,
            images_per_sec: seen as f64 / seconds.max(1e-9),
            seconds,
            lr,
            observers_frozen: phase == Phase::ObserversFrozen,
            bn_frozen: phase.flags().bn_frozen,
        };
        pb.finish_with_message(format!(
            "{phase} train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s",
            stats.train_loss,
            100.0 * stats.train_acc,
            test_loss,
            100.0 * test_acc,
            stats.images_per_sec
        ));
        tracing::info!(
            epoch,
            phase = %phase,
            train_loss = stats.train_loss,
            train_acc = stats.train_acc,
            test_loss,
            test_acc,
            images_per_sec = stats.images_per_sec,
            "epoch done"
        );
        history.epochs.push(stats.clone());
        on_event(&Event::Epoch(stats));
        if let Some(dir) = cfg.checkpoint_dir.as_ref().filter(|_| rank == 0) {
            let state = TrainerState {
                model: model.name().to_string(),
                schedule: *schedule.state(),
                epoch: epoch + 1,
                history: history.clone(),
                observers: model.observer_snapshot()?,
            };
            checkpoint::save(dir, model.var_store(), &opt, &state)?;
            last_checkpoint = Some(dir.clone());
            on_event(&Event::Checkpoint(dir.clone()));
        }
    }
    // Leave the model in the schedule's current phase (e.g. for export right after training).
    sync(&mut schedule, model, &mut history, on_event)?;
    history.schedule = *schedule.state();
    Ok(history)
}

/// Applies a phase change of `schedule` to `model` and records it.
fn sync(
    schedule: &mut Schedule,
    model: &mut Net,
    history: &mut History,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), TrainError> {
    if let Some(t) = schedule.sync(model)? {
        history.transitions.push(t);
        on_event(&Event::Transition(t));
    }
    Ok(())
}

/// The mean over the ranks of `loss` and the sum of `correct` (one all-reduce of two numbers).
fn global_stats(
    c: &dyn collective::Collective,
    loss: &Tensor,
    correct: &Tensor,
) -> Result<(Tensor, Tensor), TrainError> {
    let both = Tensor::f_stack(
        &[
            loss.detach().f_to_kind(Kind::Double)?,
            correct.f_to_kind(Kind::Double)?,
        ],
        0,
    )?;
    c.all_reduce(&both, collective::ReduceOp::Sum)
        .map_err(collective::SyncError::from)?;
    let mean_loss = both
        .f_get(0)?
        .f_div_scalar(c.world_size() as f64)?
        .f_to_kind(loss.kind())?;
    let correct = both.f_get(1)?.f_round()?.f_to_kind(Kind::Int64)?;
    Ok((mean_loss, correct))
}

/// Converts a trained model to qat-export's IR, if the run ended in an export-ready state (observers frozen,
/// every range calibrated); otherwise [`ScheduleError::NotExportReady`] says why.
pub fn export_graph(
    model: &Net,
    cfg: &TrainConfig,
    history: &History,
) -> Result<qat_export::FloatGraph, TrainError> {
    let schedule = Schedule::with_state(cfg.schedule, history.schedule)?;
    let token = schedule.export_ready(model)?;
    crate::convert::to_float_graph(model, &token).map_err(|e| TrainError::Convert(Box::new(e)))
}

/// Runs the calibration batches (forward only, eval mode, observers collecting) from a dedicated,
/// deterministic pass over the training data.
fn calibrate(
    model: &mut Net,
    loader: &Loader,
    schedule: &mut Schedule,
    device: Device,
) -> Result<u64, TrainError> {
    const CALIBRATION_EPOCH: u64 = u64::MAX;
    let _g = tch::no_grad_guard();
    let mut n = 0;
    let mut it = loader.epoch(CALIBRATION_EPOCH, 0);
    while schedule.phase() == Phase::Calibrate {
        let batch = match it.next() {
            Some(b) => b?,
            None => {
                it = loader.epoch(CALIBRATION_EPOCH - 1 - n, 0);
                continue;
            }
        };
        let x = batch.images.f_to_device(device)?;
        let _ = model.forward_t(&x, false)?;
        schedule.record_calibration_batch();
        n += 1;
    }
    Ok(n)
}

/// Mean cross-entropy of `logits` `[B, K]` against class indices `y` `[B]`.
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)
}

/// Runs `model` on `x` in eval mode without gradients (convenience for inference and tests).
pub fn predict(model: &mut Net, x: &Tensor) -> Result<Tensor, TrainError> {
    let _g = tch::no_grad_guard();
    Ok(model.forward_t(&x.f_to_device(model.device())?, false)?)
}
