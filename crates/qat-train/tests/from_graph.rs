//! The imported-then-QAT path gives the zoo path's result bit for bit: a zoo model (after a few
//! float steps, so that its weights and batch-norm statistics are not the initial ones) is written
//! as float ONNX with its batch norms kept, imported, rebuilt as a QAT net from the float graph,
//! and both nets are fine-tuned the same way on the CPU. Every variable (weights, BN statistics,
//! observer ranges), every step's loss, the exported float graph, the integer model's bytes and
//! the fake-quant outputs are then equal.

use std::collections::HashSet;
use std::sync::Mutex;

use qat_export::ir::FloatOp;
use qat_export::onnx::{ImportOptions, float_to_onnx_keep_bn, import_onnx};
use qat_train::convert;
use qat_train::data::{Dataset, Normalize};
use qat_train::finetune::{QatPhases, fine_tune_net, qat_fine_tune};
use qat_train::models::{self, Architecture, GraphNetOptions, ModelSpec, Net, NodeOp};
use qat_train::schedule::{LrConfig, OptimizerConfig, OptimizerKind, Phase, ScheduleConfig};
use qat_train::trainer::{self, Event, TrainConfig};
use tch::{Device, Kind, Tensor};

/// `manual_seed` and `set_num_threads` are process-global: run the tests of this file one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tch::set_num_threads(1);
    g
}

fn config(channels: usize) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        steps_per_epoch: Some(4),
        batch_size: 8,
        seed: 5,
        normalize: Normalize::unit(channels),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.02, 8, 0.0),
            weight_decay: 5e-4,
        },
        eval_samples: Some(16),
        progress: false,
        prefetch: 0,
        device: trainer::DeviceChoice::Cpu,
        ..TrainConfig::default()
    }
}

/// Every variable of `a` is in `b` under the same name, equal bit for bit.
fn assert_same_variables(a: &Net, b: &Net, when: &str) {
    let (va, vb) = (a.var_store().variables(), b.var_store().variables());
    let names = |v: &std::collections::HashMap<String, Tensor>| {
        let mut n: Vec<String> = v.keys().cloned().collect();
        n.sort();
        n
    };
    assert_eq!(names(&va), names(&vb), "{when}: variable names");
    for (name, t) in &va {
        let u = &vb[name];
        assert!(
            t.size() == u.size() && t.kind() == u.kind() && t.equal(u),
            "{when}: variable {name} differs"
        );
    }
}

fn same_model(spec: ModelSpec) {
    let _g = lock();
    let [c, h, w] = spec.input;
    let (train, test) = Dataset::synthetic(96, 10, c, h, w, 11)
        .unwrap()
        .split(32, 2)
        .unwrap();
    let cfg = config(c);

    // The zoo model, trained in float for a few steps (weights and BN statistics move).
    trainer::seed_everything(3);
    let mut zoo = models::build(&spec, Device::Cpu).unwrap();
    let float = TrainConfig {
        epochs: 1,
        steps_per_epoch: Some(3),
        schedule: ScheduleConfig {
            float_steps: u64::MAX,
            calibration_batches: 0,
            qat: None,
        },
        ..cfg.clone()
    };
    trainer::train(&mut zoo, &train, &test, &float, &mut |_| {}).unwrap();

    // Zoo → float graph → ONNX (batch norms kept) → float graph → QAT net.
    let zoo_graph = convert::convert_unchecked(&zoo).unwrap();
    let file = float_to_onnx_keep_bn(&zoo_graph).unwrap();
    let mut graph = import_onnx(&file.bytes, &ImportOptions::default())
        .unwrap()
        .graph;
    let bn_convs = graph
        .nodes
        .iter()
        .filter(|n| matches!(&n.op, FloatOp::Conv2d(c) if c.batch_norm.is_some()))
        .count();
    let zoo_conv_bns = zoo
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, NodeOp::ConvBn(_)))
        .count();
    assert!(bn_convs > 0 && bn_convs == zoo_conv_bns, "batch norms kept");
    // The ONNX writer names nodes `<value>/<Op>`: back to the zoo's names, so that variables
    // compare by name (names do not enter the arithmetic).
    for n in &mut graph.nodes {
        if let Some((head, _)) = n.name.split_once('/') {
            n.name = head.to_string();
        }
    }
    let names: HashSet<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), graph.nodes.len(), "renamed nodes stay unique");

    let phases = QatPhases {
        calibration_batches: 2,
        quant_delay: 2,
        freeze_bn: 4,
        freeze_observers: 6,
    };
    let opts = GraphNetOptions {
        quant: spec.quant,
        fold: spec.bn_fold,
        stats_grad: spec.bn_stats_grad,
        bn_momentum: 0.1,
    };
    // Loading is exact: the imported net starts where the zoo net is.
    let fresh = models::from_float_graph(&graph, Device::Cpu, &opts).unwrap();
    assert_same_variables(&zoo, &fresh, "after loading");
    drop(fresh);

    let mut seen = Vec::new();
    let (zoo_hist, zoo_export, _) =
        fine_tune_net(&mut zoo, &train, &test, &cfg, &phases, &mut |e| {
            if let Event::Transition(t) = e {
                seen.push(t.to);
            }
        })
        .unwrap();
    assert_eq!(
        seen,
        [
            Phase::Calibrate,
            Phase::QatWarmup,
            Phase::Qat,
            Phase::BnFrozen,
            Phase::ObserversFrozen
        ]
    );
    let mut tuned =
        qat_fine_tune(&graph, &train, &test, &opts, &cfg, &phases, &mut |_| {}).unwrap();

    assert_same_variables(&zoo, &tuned.net, "after QAT");
    let losses = |h: &trainer::History| h.steps.iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses(&zoo_hist).len(), 8);
    assert_eq!(losses(&zoo_hist), losses(&tuned.history), "step losses");
    assert!(
        zoo_export.nodes.iter().all(|n| n.act.range.is_some()),
        "every range calibrated"
    );
    assert_eq!(zoo_export, tuned.graph, "exported float graphs");
    let opts = convert::export_options();
    let a = qat_export::export(&zoo_export, &opts).unwrap();
    let b = qat_export::export(&tuned.graph, &opts).unwrap();
    assert_eq!(
        a.to_bytes().unwrap(),
        b.to_bytes().unwrap(),
        "integer models"
    );
    let x = Tensor::rand(
        [4, c as i64, h as i64, w as i64],
        (Kind::Float, Device::Cpu),
    );
    let ya = zoo.forward_t(&x, false).unwrap();
    let yb = tuned.net.forward_t(&x, false).unwrap();
    assert!(ya.equal(&yb), "fake-quant outputs");
}

#[test]
fn lenet_imported_equals_zoo() {
    same_model(ModelSpec {
        input: [1, 12, 12],
        ..ModelSpec::lenet()
    });
}

#[test]
fn mobilenet_v2_imported_equals_zoo() {
    same_model(ModelSpec {
        arch: Architecture::MobileNetV2 {
            width: 0.25,
            expansion: 2,
        },
        input: [3, 8, 8],
        ..ModelSpec::mobilenet_v2_cifar()
    });
}

#[test]
fn resnet8_imported_equals_zoo() {
    same_model(ModelSpec {
        input: [3, 8, 8],
        ..ModelSpec::resnet_cifar(8)
    });
}
