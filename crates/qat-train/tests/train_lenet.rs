//! Training end to end on generated data: LeNet learns, QAT phases apply, export is gated, resume is exact,
//! non-finite losses stop the run without touching the last checkpoint.

use std::sync::Mutex;

use qat_train::data::{Dataset, Normalize};
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{
    LrConfig, LrSchedule, OptimizerConfig, OptimizerKind, Phase, QatDelays, Schedule,
    ScheduleConfig,
};
use qat_train::trainer::{self, Event, TrainConfig, TrainError};
use tch::Device;

/// `manual_seed` and `set_num_threads` are process-global: run the tests of this file one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tch::set_num_threads(1);
    g
}

fn data() -> (Dataset, Dataset) {
    let all = Dataset::synthetic(768, 10, 1, 28, 28, 42).unwrap();
    all.split(256, 1).unwrap()
}

fn config(epochs: usize, schedule: ScheduleConfig) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        seed: 9,
        normalize: Normalize::unit(1),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.05, 64, 0.005).with_warmup(2),
            weight_decay: 1e-4,
        },
        schedule,
        progress: false,
        ..TrainConfig::default()
    }
}

fn qat_schedule() -> ScheduleConfig {
    ScheduleConfig {
        float_steps: 8,
        calibration_batches: 2,
        qat: Some(QatDelays {
            quant_delay: 4,
            freeze_bn_delay: 10,
            freeze_observers_delay: 14,
        }),
    }
}

#[test]
fn lenet_learns_with_qat_and_exports() {
    let _g = lock();
    let (train, test) = data();
    trainer::seed_everything(1);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let cfg = config(2, qat_schedule());
    let mut phases = Vec::new();
    let mut calibrated = 0;
    let history = trainer::train(&mut net, &train, &test, &cfg, &mut |e| match e {
        Event::Transition(t) => phases.push(t.to),
        Event::Calibrated { batches } => calibrated += batches,
        _ => {}
    })
    .unwrap();
    assert_eq!(
        phases,
        vec![
            Phase::Float,
            Phase::Calibrate,
            Phase::QatWarmup,
            Phase::Qat,
            Phase::BnFrozen,
            Phase::ObserversFrozen
        ]
    );
    assert_eq!(calibrated, 2);
    let last = history.epochs.last().unwrap();
    assert_eq!(history.epochs.len(), 2);
    assert_eq!(history.steps.len(), 32, "16 steps per epoch (512 / 32)");
    assert!(
        last.test_acc > 0.9,
        "test accuracy {} after QAT",
        last.test_acc
    );
    assert!(last.observers_frozen && last.bn_frozen);
    assert!(history.steps.first().unwrap().loss > history.steps.last().unwrap().loss);

    // Export: allowed now (observers frozen, ranges calibrated), and the graph carries every range.
    assert_eq!(history.schedule.step, last.step);
    let g = trainer::export_graph(&net, &cfg, &history).unwrap();
    let shapes = g.validate().unwrap();
    assert_eq!(shapes[0], vec![28, 28, 1]);
    assert_eq!(shapes.last().unwrap(), &vec![10]);
    assert!(
        g.nodes.iter().all(|n| n.act.range.is_some()),
        "every node has a range"
    );
    // The same run stopped before the observers froze may not export.
    let early = trainer::History {
        schedule: history
            .transitions
            .iter()
            .find(|t| t.to == Phase::BnFrozen)
            .map(|t| qat_train::schedule::ScheduleState {
                step: t.step,
                calibration_batches: 2,
                applied: Some(Phase::BnFrozen),
            })
            .unwrap(),
        ..history.clone()
    };
    assert!(
        trainer::export_graph(&net, &cfg, &early)
            .unwrap_err()
            .to_string()
            .contains("export refused")
    );
    // qat-export accepts it: BN folded, weights quantized, multipliers computed.
    let int8 = qat_export::export(&g, &qat_train::convert::export_options()).unwrap();
    assert_eq!(int8.name, g.name);
}

#[test]
fn export_is_refused_while_observers_are_live() {
    let _g = lock();
    trainer::seed_everything(2);
    let net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let s = Schedule::new(qat_schedule()).unwrap();
    let e = s.export_ready(&net).unwrap_err();
    assert!(e.to_string().contains("export refused"), "{e}");
    // Even with the phase forced to ObserversFrozen, uncalibrated ranges are named.
    let frozen = Schedule::with_state(
        ScheduleConfig {
            float_steps: 0,
            calibration_batches: 0,
            qat: Some(QatDelays {
                quant_delay: 0,
                freeze_bn_delay: 0,
                freeze_observers_delay: 0,
            }),
        },
        qat_train::schedule::ScheduleState {
            step: 0,
            calibration_batches: 0,
            applied: Some(Phase::ObserversFrozen),
        },
    )
    .unwrap();
    let e = frozen.export_ready(&net).unwrap_err().to_string();
    assert!(e.contains("uncalibrated") && e.contains("conv1"), "{e}");
}

fn all_vars(net: &qat_train::models::Net) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = net
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn one_epoch_plus_resume_equals_two_epochs() {
    let _g = lock();
    let (train, test) = data();
    let schedule = ScheduleConfig {
        float_steps: 10,
        calibration_batches: 0,
        qat: Some(QatDelays {
            quant_delay: 3,
            freeze_bn_delay: 12,
            freeze_observers_delay: 18,
        }),
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");

    trainer::seed_everything(3);
    let mut straight = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let h2 = trainer::train(
        &mut straight,
        &train,
        &test,
        &config(2, schedule),
        &mut |_| {},
    )
    .unwrap();

    trainer::seed_everything(3);
    let mut first = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let cfg1 = TrainConfig {
        checkpoint_dir: Some(ckpt.clone()),
        ..config(1, schedule)
    };
    trainer::train(&mut first, &train, &test, &cfg1, &mut |_| {}).unwrap();
    drop(first);

    // A fresh model with different initial weights: everything must come from the checkpoint.
    trainer::seed_everything(77);
    let mut resumed = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let cfg2 = TrainConfig {
        checkpoint_dir: Some(ckpt),
        resume: true,
        ..config(2, schedule)
    };
    let mut start = None;
    let h = trainer::train(&mut resumed, &train, &test, &cfg2, &mut |e| {
        if let Event::Start { epoch, step, .. } = e {
            start = Some((*epoch, *step));
        }
    })
    .unwrap();
    assert_eq!(start, Some((1, 16)));
    assert_eq!(h.epochs.len(), 2);
    assert_eq!(h.steps.len(), h2.steps.len());

    let (a, b) = (all_vars(&straight), all_vars(&resumed));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-6, "max |Δ| = {worst}");
    assert!((h.epochs[1].test_acc - h2.epochs[1].test_acc).abs() < 1e-9);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let _g = lock();
    let (train, test) = data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    trainer::seed_everything(4);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let mut cfg = config(
        3,
        ScheduleConfig {
            float_steps: u64::MAX,
            calibration_batches: 0,
            qat: None,
        },
    );
    // Epoch 0 trains normally; from step 16 on the learning rate is 1e12 and the loss blows up.
    cfg.optimizer.lr = LrConfig {
        base: 0.05,
        schedule: LrSchedule::Step {
            every: 16,
            gamma: 1e13,
        },
        warmup: 0,
    };
    cfg.optimizer.weight_decay = 0.0;
    cfg.checkpoint_dir = Some(ckpt.clone());
    let err = trainer::train(&mut net, &train, &test, &cfg, &mut |_| {}).unwrap_err();
    match &err {
        TrainError::NonFinite {
            epoch,
            last_checkpoint,
            step,
            ..
        } => {
            assert_eq!(*epoch, 1);
            assert!(*step > 16);
            assert_eq!(last_checkpoint.as_deref(), Some(ckpt.as_path()));
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("non-finite loss"));
    // The checkpoint is the one of epoch 0 and still loads into a fresh model with finite weights.
    trainer::seed_everything(5);
    let fresh = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    qat_train::checkpoint::load_model(&ckpt, fresh.var_store()).unwrap();
    for (_, v) in all_vars(&fresh) {
        assert!(v.iter().all(|x| x.is_finite()));
    }
    let st: serde_json::Value = qat_train::checkpoint::load_state(&ckpt).unwrap();
    assert_eq!(st["epoch"], 1);
}
