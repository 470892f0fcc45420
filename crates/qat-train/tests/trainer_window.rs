//! The trainer reads each step's loss and accuracy back in windows of `sync_every` steps (one
//! device→host read per window): the history is the same bit for bit as with a read every step, the
//! reads are counted, and a non-finite loss is reported at its own step whatever the window.

use std::sync::Mutex;

use qat_autograd::host_read;
use qat_train::data::{Dataset, Normalize};
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{LrConfig, LrSchedule, OptimizerConfig, ScheduleConfig};
use qat_train::trainer::{self, History, TrainConfig, TrainError};
use tch::Device;

/// `manual_seed` and `set_num_threads` are process-global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const EPOCHS: usize = 2;
/// 256 training images in batches of 32.
const STEPS_PER_EPOCH: usize = 8;

fn config(sync_every: usize) -> TrainConfig {
    TrainConfig {
        epochs: EPOCHS,
        batch_size: 32,
        seed: 3,
        normalize: Normalize::unit(1),
        schedule: ScheduleConfig {
            float_steps: u64::MAX,
            calibration_batches: 0,
            qat: None,
        },
        progress: false,
        prefetch: 0,
        sync_every: Some(sync_every),
        ..TrainConfig::default()
    }
}

fn run(cfg: &TrainConfig) -> (Result<History, TrainError>, u64, u64) {
    let all = Dataset::synthetic(352, 10, 1, 28, 28, 8).unwrap();
    let (train, test) = all.split(96, 1).unwrap();
    trainer::seed_everything(11);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let before = host_read::by_label();
    let r = trainer::train(&mut net, &train, &test, cfg, &mut |_| {});
    let after = host_read::by_label();
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    (r, delta("train loss window"), delta("eval loss window"))
}

#[test]
fn a_window_changes_no_value_and_reads_once_per_window() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tch::set_num_threads(1);
    let (every_step, reads_1, eval_1) = run(&config(1));
    let (windowed, reads_5, eval_5) = run(&config(5));
    let (a, b) = (every_step.unwrap(), windowed.unwrap());
    assert_eq!(a.steps.len(), EPOCHS * STEPS_PER_EPOCH);
    let key = |h: &History| -> Vec<(u64, u64, u64)> {
        (h.steps.iter())
            .map(|s| (s.step, s.loss.to_bits(), s.lr.to_bits()))
            .collect()
    };
    assert_eq!(key(&a), key(&b));
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(x.train_loss.to_bits(), y.train_loss.to_bits());
        assert_eq!(x.train_acc.to_bits(), y.train_acc.to_bits());
        assert_eq!(x.test_loss.to_bits(), y.test_loss.to_bits());
        assert_eq!(x.test_acc.to_bits(), y.test_acc.to_bits());
    }
    assert_eq!(reads_1, (EPOCHS * STEPS_PER_EPOCH) as u64);
    // Per epoch: a read after 5 steps and one for the remaining 3.
    assert_eq!(reads_5, (EPOCHS * STEPS_PER_EPOCH.div_ceil(5)) as u64);
    // Evaluation: one read per epoch.
    assert_eq!((eval_1, eval_5), (EPOCHS as u64, EPOCHS as u64));
}

#[test]
fn a_non_finite_loss_is_reported_at_its_own_step_whatever_the_window() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tch::set_num_threads(1);
    let blow_up = |sync_every| {
        let mut cfg = config(sync_every);
        // From step 4 on the learning rate is 1e13 times larger and the loss blows up.
        cfg.optimizer = OptimizerConfig {
            lr: LrConfig {
                base: 0.05,
                schedule: LrSchedule::Step {
                    every: 4,
                    gamma: 1e13,
                },
                warmup: 0,
            },
            weight_decay: 0.0,
            ..OptimizerConfig::default()
        };
        match run(&cfg).0 {
            Err(TrainError::NonFinite {
                step, batch, loss, ..
            }) => (step, batch, loss.is_finite()),
            other => panic!("expected NonFinite, got {other:?}"),
        }
    };
    let one = blow_up(1);
    assert!(one.0 >= 4 && !one.2, "{one:?}");
    assert_eq!(blow_up(3), one);
    assert_eq!(blow_up(16), one);
}
