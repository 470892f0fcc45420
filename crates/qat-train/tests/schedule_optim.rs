//! Schedule state machine, LR schedules and optimizers (weight decay off BN and quantization parameters).

use qat_train::models::{self, ModelError, ModelSpec};
use qat_train::schedule::{
    LrConfig, LrSchedule, Optimizer, OptimizerConfig, OptimizerKind, Phase, PhaseControl,
    QatDelays, QuantFlags, Schedule, ScheduleConfig,
};
use tch::{Device, Kind, Tensor, nn};

#[derive(Default)]
struct Recorder {
    applied: Vec<QuantFlags>,
    missing: Vec<String>,
}

impl PhaseControl for Recorder {
    fn apply_flags(&mut self, flags: QuantFlags) -> Result<(), ModelError> {
        self.applied.push(flags);
        Ok(())
    }
    fn uncalibrated(&self) -> Result<Vec<String>, ModelError> {
        Ok(self.missing.clone())
    }
}

#[test]
fn phases_follow_the_step_counts_and_apply_once() {
    let cfg = ScheduleConfig {
        float_steps: 2,
        calibration_batches: 3,
        qat: Some(QatDelays {
            quant_delay: 1,
            freeze_bn_delay: 2,
            freeze_observers_delay: 4,
        }),
    };
    let mut s = Schedule::new(cfg).unwrap();
    let mut m = Recorder::default();
    let mut seen = Vec::new();
    for _ in 0..8 {
        if let Some(t) = s.sync(&mut m).unwrap() {
            seen.push(t.to);
        }
        while s.phase() == Phase::Calibrate {
            s.record_calibration_batch();
        }
        if let Some(t) = s.sync(&mut m).unwrap() {
            seen.push(t.to);
        }
        s.record_step();
    }
    {
        use Phase::*;
        assert_eq!(
            seen,
            [Float, Calibrate, QatWarmup, Qat, BnFrozen, ObserversFrozen]
        );
    }
    assert_eq!(m.applied.len(), 6);
    assert_eq!(m.applied[0], Phase::Float.flags());
    assert!(m.applied[1].calibrate && m.applied[1].observe && !m.applied[1].fake_quant_weights);
    assert!(!m.applied[5].observe && m.applied[5].bn_frozen && m.applied[5].fake_quant_activations);
    assert!(s.export_ready(&m).is_ok());
    m.missing = vec!["fc.act_q".into()];
    assert!(
        s.export_ready(&m)
            .unwrap_err()
            .to_string()
            .contains("fc.act_q")
    );
    // Serde round trip keeps the counters.
    let json = serde_json::to_string(&s).unwrap();
    let back: Schedule = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn bad_configs_are_rejected() {
    let bad = ScheduleConfig {
        float_steps: 0,
        calibration_batches: 0,
        qat: Some(QatDelays {
            quant_delay: 5,
            freeze_bn_delay: 3,
            freeze_observers_delay: 9,
        }),
    };
    assert!(Schedule::new(bad).is_err());
    let vs = nn::VarStore::new(Device::Cpu);
    for lr in [
        LrConfig::constant(0.0),
        LrConfig {
            base: 0.1,
            schedule: LrSchedule::Step {
                every: 0,
                gamma: 0.1,
            },
            warmup: 0,
        },
        LrConfig {
            base: 0.1,
            schedule: LrSchedule::Cosine {
                total: 10,
                min_lr: 0.2,
            },
            warmup: 0,
        },
    ] {
        assert!(
            Optimizer::new(
                &vs,
                OptimizerConfig {
                    lr,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
    // PTQ only: float, calibrate, frozen.
    let ptq = Schedule::new(ScheduleConfig {
        float_steps: 4,
        calibration_batches: 2,
        qat: None,
    })
    .unwrap();
    assert_eq!(ptq.phase_at(3, 0), Phase::Float);
    assert_eq!(ptq.phase_at(4, 1), Phase::Calibrate);
    assert_eq!(ptq.phase_at(4, 2), Phase::ObserversFrozen);
}

#[test]
fn weight_decay_only_on_conv_and_linear_weights() {
    tch::manual_seed(0);
    let net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let opt = Optimizer::new(net.var_store(), OptimizerConfig::default()).unwrap();
    let decayed = opt.decayed();
    assert_eq!(
        decayed,
        vec!["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    );
    assert!(
        opt.optimized()
            .iter()
            .any(|n| n.contains("gamma") || n.contains("beta"))
    );
}

fn one_param(value: f32) -> (nn::VarStore, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs
        .root()
        .var("w", &[1, 1], nn::Init::Const(f64::from(value)));
    (vs, w)
}

/// Loss 0.5·w² has gradient w: check each optimizer's update against its formula by hand.
#[test]
fn optimizer_updates_match_their_formulas() {
    let run = |kind: OptimizerKind, wd: f64, steps: usize| -> f32 {
        let (vs, w) = one_param(1.0);
        let mut opt = Optimizer::new(
            &vs,
            OptimizerConfig {
                kind,
                lr: LrConfig::constant(0.1),
                weight_decay: wd,
            },
        )
        .unwrap();
        for _ in 0..steps {
            opt.zero_grad();
            (&w * &w * 0.5).sum(Kind::Float).backward();
            opt.step();
        }
        w.double_value(&[0, 0]) as f32
    };
    // SGD momentum 0.9: b1 = 1, w1 = 0.9; g = 0.9, b2 = 0.9·1 + 0.9 = 1.8, w2 = 0.9 − 0.18 = 0.72.
    assert!(
        (run(
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false
            },
            0.0,
            2
        ) - 0.72)
            .abs()
            < 1e-6
    );
    // Nesterov: step 1 d = g + μ·b = 1 + 0.9 = 1.9, w1 = 0.81.
    assert!(
        (run(
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: true
            },
            0.0,
            1
        ) - 0.81)
            .abs()
            < 1e-6
    );
    // The 2-D parameter gets weight decay 0.5: d = 1 + 0.5 = 1.5, w1 = 0.85 (plain SGD).
    assert!(
        (run(
            OptimizerKind::Sgd {
                momentum: 0.0,
                nesterov: false
            },
            0.5,
            1
        ) - 0.85)
            .abs()
            < 1e-6
    );
    // Adam's first step moves by lr (m̂/√v̂ = 1): 0.9.
    assert!((run(OptimizerKind::adam(), 0.0, 1) - 0.9).abs() < 1e-5);
    // AdamW: w·(1 − 0.1·0.5) then −0.1 → 0.95 − 0.1 = 0.85.
    assert!((run(OptimizerKind::adamw(), 0.5, 1) - 0.85).abs() < 1e-5);
}

#[test]
fn optimizer_state_round_trips() {
    let (vs, w) = one_param(1.0);
    let cfg = OptimizerConfig {
        kind: OptimizerKind::adam(),
        lr: LrConfig::constant(0.1),
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(&vs, cfg).unwrap();
    let step = |opt: &mut Optimizer| {
        opt.zero_grad();
        (&w * &w * 0.5).sum(Kind::Float).backward();
        opt.step();
    };
    step(&mut opt);
    let saved = opt.state_tensors();
    let w_saved = w.copy();
    step(&mut opt);
    let want = w.double_value(&[0, 0]);
    tch::no_grad(|| w.shallow_clone().copy_(&w_saved));
    let mut fresh = Optimizer::new(&vs, cfg).unwrap();
    fresh.load_state(saved).unwrap();
    assert_eq!(fresh.steps(), 1);
    step(&mut fresh);
    assert_eq!(w.double_value(&[0, 0]), want);
    assert!(
        fresh
            .load_state(vec![(
                "nope#1".into(),
                Tensor::zeros([1], (Kind::Float, Device::Cpu))
            )])
            .is_err()
    );
}
