//! The whole method across crates, on generated data: QAT training (qat-train, qat-autograd) →
//! conversion and export (qat-export) → `.qat8` file → integer-only inference (qat-int8-runtime).
//!
//! What must hold (paper §2–§3): the integer model reproduces its fake-quant simulation layer by layer
//! (every layer within 1 LSB when fed the simulated input), predicts what the libtorch fake-quant model
//! predicts, survives a save/load round trip bit for bit, and gives identical codes on every kernel path.

use std::sync::Mutex;

use ndarray::{ArrayD, IxDyn};
use qat_export::{QuantPlan, fidelity_report};
use qat_int8_runtime::{Executor, Int8Model, KernelPath};
use qat_train::{
    data::{Dataset, Normalize},
    models::{self, ModelSpec},
    schedule::{LrConfig, OptimizerConfig, OptimizerKind, QatDelays, ScheduleConfig},
    trainer::{self, TrainConfig},
};
use tch::{Device, Kind, Tensor};

/// libtorch's seed and thread count are process-global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 32,
        seed: 3,
        normalize: Normalize::unit(1),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.05, 32, 0.005).with_warmup(2),
            weight_decay: 1e-4,
        },
        schedule: ScheduleConfig {
            float_steps: 8,
            calibration_batches: 2,
            qat: Some(QatDelays {
                quant_delay: 2,
                freeze_bn_delay: 10,
                freeze_observers_delay: 14,
            }),
        },
        progress: false,
        ..TrainConfig::default()
    }
}

/// The share of the `n` positions where `a` and `b` agree.
fn share_equal(a: &[i64], b: &[i64], n: usize) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

/// Test images as NHWC f32 in [0, 1] (the `Normalize::unit` the model was trained with).
fn nhwc(ds: &Dataset) -> ArrayD<f32> {
    let [c, h, w] = ds.image_shape();
    assert_eq!(c, 1);
    let x: Vec<f32> = ds.images.iter().map(|&p| f32::from(p) / 255.0).collect();
    ArrayD::from_shape_vec(IxDyn(&[ds.len(), h, w, 1]), x).unwrap()
}

fn argmax_rows(x: &ArrayD<f32>) -> Vec<i64> {
    let n = x.shape()[0];
    let per = x.len() / n;
    let flat: Vec<f32> = x.iter().copied().collect();
    (0..n)
        .map(|i| {
            let row = &flat[i * per..(i + 1) * per];
            (0..per).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as i64
        })
        .collect()
}

#[test]
fn qat_lenet_exports_to_an_integer_model_that_matches_its_simulation() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tch::set_num_threads(1);
    let (train, test) = Dataset::synthetic(768, 10, 1, 28, 28, 11)
        .unwrap()
        .split(256, 2)
        .unwrap();
    trainer::seed_everything(5);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let cfg = config();
    let history = trainer::train(&mut net, &train, &test, &cfg, &mut |_| {}).unwrap();
    let fq_acc = history.epochs.last().unwrap().test_acc;
    assert!(fq_acc > 0.9, "fake-quant accuracy {fq_acc}");

    // Export, through a .qat8 file.
    let graph = trainer::export_graph(&net, &cfg, &history).unwrap();
    let plan = QuantPlan::new(&graph, &qat_train::convert::export_options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lenet.qat8");
    plan.to_int8_model().unwrap().save(&path).unwrap();
    let model = Int8Model::load(&path).unwrap();
    assert_eq!(model, plan.to_int8_model().unwrap(), "save/load round trip");

    // Layer by layer, the integer kernels reproduce the simulation.
    let x = nhwc(&test);
    let report = fidelity_report(&plan, [x.view()]).unwrap();
    for l in &report.layers {
        assert!(
            l.isolated.within_1_lsb >= 0.99,
            "{}: {:.4} within 1 LSB",
            l.node,
            l.isolated.within_1_lsb
        );
    }
    assert!(
        report.outputs[0].argmax_vs_simulation >= 0.98,
        "{:?}",
        report.outputs[0]
    );

    // The integer model predicts what the libtorch fake-quant model predicts.
    let mut exec = Executor::with_path(&model, KernelPath::Reference).unwrap();
    let int8_logits = exec.run(x.view()).unwrap().remove(0);
    let int8_pred = argmax_rows(&int8_logits);
    let xt = Tensor::from_slice(x.as_slice().unwrap())
        .view([test.len() as i64, 28, 28, 1])
        .permute([0, 3, 1, 2]);
    let fq_pred = Vec::<i64>::try_from(
        trainer::predict(&mut net, &xt)
            .unwrap()
            .argmax(-1, false)
            .to_kind(Kind::Int64),
    )
    .unwrap();
    let agree = share_equal(&int8_pred, &fq_pred, test.len());
    assert!(agree >= 0.98, "int8 vs fake-quant argmax agreement {agree}");
    let labels: Vec<i64> = test.labels.iter().map(|&l| i64::from(l)).collect();
    let int8_acc = share_equal(&int8_pred, &labels, test.len());
    assert!(
        (int8_acc - fq_acc).abs() <= 0.02,
        "int8 {int8_acc} vs fake quant {fq_acc}"
    );

    // Every kernel path available here gives the same codes as the reference.
    let want = exec.run_u8(x.view()).unwrap();
    for p in KernelPath::ALL
        .into_iter()
        .filter(|p| p.is_supported_here())
    {
        let got = Executor::with_path(&model, p)
            .unwrap()
            .run_u8(x.view())
            .unwrap();
        assert_eq!(got, want, "kernel path {}", p.name());
    }
}
