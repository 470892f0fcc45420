//! The zoo: every architecture builds, runs in float and QAT mode, and converts to a FloatGraph whose float
//! interpretation (qat-export's reference interpreter, NHWC) equals the tch eval forward (NCHW).

use std::sync::{Mutex, MutexGuard};

use ndarray::ArrayD;
use qat_export::ir::FloatOp;
use qat_train::convert;
use qat_train::data::{Dataset, Loader, LoaderConfig, Normalize};
use qat_train::layers::Activation;
use qat_train::layers::{LayerExport, QatLayer};
use qat_train::models::{self, Architecture, ModelSpec, Net, NodeOp};
use qat_train::observer::Observer;
use qat_train::schedule::{Phase, PhaseControl};
use tch::{Device, Kind, Tensor};

/// libtorch's seed and thread count are process-global: the tests of this file take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn specs() -> Vec<ModelSpec> {
    vec![
        ModelSpec::lenet(),
        ModelSpec {
            input: [1, 16, 16],
            ..ModelSpec::mobilenet_v1_mnist()
        },
        ModelSpec {
            input: [3, 16, 16],
            ..ModelSpec::mobilenet_v2_cifar()
        },
        ModelSpec {
            input: [3, 16, 16],
            ..ModelSpec::resnet_cifar(8)
        },
    ]
}

/// A few train-mode forward passes so that BN moving statistics and observer ranges are non-trivial.
fn warm(net: &mut Net, phase: Phase) -> Tensor {
    let [c, h, w] = net.input_chw();
    let ds = Dataset::synthetic(16, 4, c, h, w, 5).unwrap();
    let loader = Loader::new(
        ds.into(),
        LoaderConfig {
            batch_size: 8,
            normalize: Normalize::unit(c),
            ..Default::default()
        },
    )
    .unwrap();
    net.apply_flags(Phase::Calibrate.flags()).unwrap();
    let mut last = None;
    for _ in 0..3 {
        for b in loader.epoch(0, 0) {
            let b = b.unwrap();
            let _ = tch::no_grad(|| net.forward_t(&b.images, true)).unwrap();
            last = Some(b.images);
        }
    }
    net.apply_flags(phase.flags()).unwrap();
    last.unwrap()
}

/// `spec`'s model built after `manual_seed(seed)` and [`warm`]ed in float mode: the net, its last
/// warm-up batch and the eval-mode output on it.
fn warmed_float(spec: &ModelSpec, seed: i64) -> (Net, Tensor, Tensor) {
    tch::manual_seed(seed);
    let mut net = models::build(spec, Device::Cpu).unwrap();
    let x = warm(&mut net, Phase::Float);
    let y = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
    (net, x, y)
}

/// Asserts that the message `e` contains every one of `parts`.
fn assert_mentions(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{p:?} not in: {e}");
    }
}

fn nhwc(x: &Tensor) -> ArrayD<f32> {
    let s = x.size();
    let t = x.permute([0, 2, 3, 1]).contiguous();
    let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    ArrayD::from_shape_vec(
        vec![s[0] as usize, s[2] as usize, s[3] as usize, s[1] as usize],
        v,
    )
    .unwrap()
}

#[test]
fn every_model_converts_and_matches_the_float_interpreter() {
    let _g = serial();
    tch::set_num_threads(1);
    for spec in specs() {
        let (net, x, y) = warmed_float(&spec, 11);
        assert_eq!(
            y.size(),
            vec![8, spec.num_classes as i64],
            "{}",
            spec.name()
        );

        let g = convert::convert_unchecked(&net).unwrap();
        g.validate().unwrap();
        assert!(
            g.nodes.iter().all(|n| n.act.range.is_some()),
            "{}: ranges observed",
            spec.name()
        );
        let vals = qat_export::interp::run(&g, nhwc(&x).view(), None).unwrap();
        let out = vals.last().unwrap();
        let want = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{}: interpreter vs tch max |Δ| = {worst} (scale {scale})",
            spec.name()
        );

        let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind()).collect();
        match spec.arch {
            Architecture::LeNet => {
                assert!(kinds.contains(&"Flatten") && kinds.contains(&"MaxPool"))
            }
            Architecture::MobileNetV1 { .. } => assert!(kinds.contains(&"DepthwiseConv2d")),
            Architecture::MobileNetV2 { .. } | Architecture::ResNet { .. } => {
                assert!(kinds.contains(&"Add"))
            }
        }
        // Conv+BN layers carry their BN statistics; ReLU6 models keep ReLU6.
        assert!(
            g.nodes
                .iter()
                .any(|n| matches!(&n.op, FloatOp::Conv2d(c) if c.batch_norm.is_some()))
        );
        if spec.activation == Activation::Relu6 {
            assert!(g.nodes.iter().any(|n| matches!(&n.op, FloatOp::Conv2d(c) if c.activation == qat_export::ir::Activation::Relu6)));
        }
    }
}

#[test]
fn qat_mode_runs_and_differs_from_float_by_quantization_noise() {
    let _g = serial();
    tch::set_num_threads(1);
    for spec in specs() {
        let (mut net, x, yf) = warmed_float(&spec, 12);
        net.apply_flags(Phase::ObserversFrozen.flags()).unwrap();
        let yq = tch::no_grad(|| net.forward_t(&x, false)).unwrap();
        let diff = (&yf - &yq).abs().max().double_value(&[]);
        let scale = yf.abs().max().double_value(&[]);
        assert!(diff > 0.0, "{}: fake quant changes the output", spec.name());
        assert!(
            diff < 0.25 * scale.max(1e-3),
            "{}: 8-bit noise {diff} vs output scale {scale}",
            spec.name()
        );
        // Training step in QAT mode has gradients for every weight.
        net.apply_flags(Phase::Qat.flags()).unwrap();
        let loss = net
            .forward_t(&x, true)
            .unwrap()
            .pow_tensor_scalar(2)
            .mean(Kind::Float);
        loss.backward();
        for (name, t) in net.var_store().variables() {
            if t.requires_grad() && name.ends_with("weight") {
                assert!(
                    t.grad().defined(),
                    "{}: {name} has no gradient",
                    spec.name()
                );
            }
        }
    }
}

#[test]
fn zoo_shapes_and_sizes() {
    let _g = serial();
    tch::manual_seed(0);
    // ResNet-20 for CIFAR has ≈ 0.27 M parameters (He et al. 2016, table 6).
    let r20 = models::build(&ModelSpec::resnet_cifar(20), Device::Cpu).unwrap();
    let p = r20.num_parameters();
    assert!(
        (260_000..285_000).contains(&p),
        "ResNet-20 has {p} parameters"
    );
    let adds = r20
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, qat_train::models::NodeOp::Add(_)))
        .count();
    assert_eq!(adds, 9);
    // MobileNet-v1 α = 1, 224×224, all 13 blocks: ≈ 4.2 M parameters with a 1000-class head.
    let spec = ModelSpec {
        arch: Architecture::MobileNetV1 {
            width: 1.0,
            blocks: 13,
        },
        input: [3, 224, 224],
        num_classes: 1000,
        ..ModelSpec::mobilenet_v1_mnist()
    };
    let m = models::build(&spec, Device::Cpu).unwrap();
    let p = m.num_parameters();
    assert!(
        (4_150_000..4_300_000).contains(&p),
        "MobileNet-v1 has {p} parameters"
    );
    assert_eq!(m.nodes()[m.nodes().len() - 2].shape, vec![1024]);
    // Bad specs are errors naming the model.
    let e = models::build(&ModelSpec::resnet_cifar(9), Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("resnet9") && e.contains("6n + 2"), "{e}");
}

#[test]
fn lsq_weight_scales_are_refused_at_conversion_not_silently_replaced() {
    let _g = serial();
    let mut spec = ModelSpec::lenet();
    spec.quant.weight_range = qat_train::layers::WeightRange::Lsq;
    let mut net = models::build(&spec, Device::Cpu).unwrap();
    let _ = net
        .forward_t(
            &Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)),
            true,
        )
        .unwrap(); // initialises the learned scales
    let e = convert::convert_unchecked(&net).unwrap_err().to_string();
    assert!(e.contains("LSQ") && e.contains("conv1"), "{e}");
}

#[test]
fn a_range_that_cannot_be_read_is_an_error_naming_model_and_layer() {
    // Freezing the observers hands every layer its input scale for the bias simulation; an output
    // range that cannot be read is an error, not a silently skipped simulation.
    let _g = serial();
    let mut spec = ModelSpec::lenet();
    spec.quant.act_range = qat_train::layers::ActRange::Pact { init_alpha: 4.0 };
    let mut net = models::build(&spec, Device::Cpu).unwrap();
    net.apply_flags(Phase::Qat.flags()).unwrap();
    let k = net.nodes().iter().position(|n| n.name == "fc1").unwrap();
    let alpha = net.nodes()[k]
        .op
        .layer()
        .unwrap()
        .output_quantizer()
        .unwrap()
        .pact_alpha()
        .unwrap()
        .shallow_clone();
    tch::no_grad(|| {
        let _ = alpha.shallow_clone().fill_(-1.0);
    });
    let e = net
        .apply_flags(Phase::ObserversFrozen.flags())
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["lenet_28x28x1", "fc1", "alpha"]);
}

#[test]
fn a_forward_failure_names_the_model_and_the_layer() {
    let _g = serial();
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let x = Tensor::zeros([2, 3, 28, 28], (Kind::Float, Device::Cpu));
    let e = net.forward_t(&x, false).unwrap_err().to_string();
    assert_mentions(&e, &["model lenet_28x28x1", "conv1", "[N, 1, H, W]"]);
}

#[test]
fn every_phase_reaches_every_layer_as_its_flags_say() {
    let _g = serial();
    let mut net = models::build(&ModelSpec::resnet_cifar(8), Device::Cpu).unwrap();
    let phases = [
        Phase::Float,
        Phase::Calibrate,
        Phase::QatWarmup,
        Phase::Qat,
        Phase::BnFrozen,
        Phase::ObserversFrozen,
    ];
    for phase in phases {
        let f = phase.flags();
        net.apply_flags(f).unwrap();
        for node in net.nodes() {
            let Some(l) = node.op.layer() else { continue };
            let s = l.harness().state();
            assert_eq!(
                (s.fake_quant_weights, s.fake_quant_activations, s.calibrate),
                (f.fake_quant_weights, f.fake_quant_activations, f.calibrate),
                "{phase}: {}",
                node.name
            );
            if let Some(o) = l.output_quantizer() {
                assert_eq!(
                    o.observer().is_frozen(),
                    !f.observe,
                    "{phase}: {}",
                    node.name
                );
            }
            if let NodeOp::ConvBn(cb) = &node.op {
                assert_eq!(cb.bn_frozen(), f.bn_frozen, "{phase}: {}", node.name);
            }
        }
    }
}

#[test]
fn warm_up_fake_quantizes_weights_but_not_activations() {
    // The paper's schedule: weights are fake-quantized from the first QAT step; activation
    // quantization is delayed by `quant_delay` (their observers collect meanwhile).
    let _g = serial();
    tch::set_num_threads(1);
    tch::manual_seed(13);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    net.apply_flags(Phase::QatWarmup.flags()).unwrap();
    for node in net.nodes() {
        if let Some(l) = node.op.layer() {
            let s = l.harness().state();
            assert!(
                s.fake_quant_weights && !s.fake_quant_activations,
                "{}: {s:?}",
                node.name
            );
        }
    }
    // fc2 (no activation) computes x·FQ(W)ᵀ + b with its weights on their grid, its output not.
    let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let all = tch::no_grad(|| net.forward_all_t(&x, true)).unwrap();
    let k = net.nodes().iter().position(|n| n.name == "fc2").unwrap();
    let NodeOp::Linear(fc) = &net.nodes()[k].op else {
        panic!("fc2 is linear")
    };
    let LayerExport::Linear(e) = fc.export().unwrap() else {
        panic!("linear export")
    };
    let p = e.weight_quant.qparams.per_channel().unwrap();
    let [out, inp] = [e.weight.shape[0], e.weight.shape[1]];
    let fq: Vec<f32> = e
        .weight
        .data
        .iter()
        .enumerate()
        .map(|(i, &w)| p.channel(i / inp).unwrap().fake_quant(w))
        .collect();
    assert_ne!(
        fq, e.weight.data,
        "the weights are not all on the grid already"
    );
    let w = Tensor::from_slice(&fq).view([out as i64, inp as i64]);
    let want = all[net.nodes()[k].inputs[0].0].linear(&w, Some(fc.bias()));
    let got = &all[k];
    let diff = (got - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "fc2 differs from x·FQ(W)ᵀ + b by {diff}");
}
