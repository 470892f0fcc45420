//! QAT for a deployment target (`QuantConfig::target`): once the observers are frozen, the trained
//! model's forward pass equals qat-export's simulation of its export for that target, code for code,
//! on every node — conv/linear outputs requantized from the accumulator in the target's arithmetic,
//! average pools tied to their input's parameters where the target cannot rescale them — and the
//! gradient still flows (STE).

use qat_core::Target;
use qat_train::convert;
use qat_train::fidelity::compare_with_simulation;
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{Phase, PhaseControl};
use tch::{Device, Kind, Tensor};

/// libtorch's generator is process-global: the tests of this file take turns, so that each draws
/// the same weights and inputs on every run (a concurrent test's draws would interleave with them).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds `spec` for `target` at `bits`, calibrates on `x`, freezes the observers and compares
/// every node with the simulation of its export for `export_target`; returns the smallest exact
/// share and the node names.
fn exact_share(
    spec: &ModelSpec,
    bits: u32,
    target: Option<Target>,
    export_target: Target,
    x: &Tensor,
) -> (f64, Vec<String>) {
    tch::manual_seed(11);
    let mut spec = spec.clone();
    spec.quant.weight_bits = bits;
    spec.quant.act_bits = bits;
    spec.quant.target = target;
    let mut net = models::build(&spec, Device::Cpu).expect("build");
    net.apply_flags(Phase::Calibrate.flags()).expect("flags");
    let _ = tch::no_grad(|| net.forward_t(x, true)).expect("calibrate");
    net.apply_flags(Phase::ObserversFrozen.flags())
        .expect("flags");
    let graph = convert::convert_unchecked(&net).expect("convert");
    let opts = qat_export::ExportOptions {
        target: export_target,
        ..convert::export_options_for(target)
    };
    let plan = qat_export::QuantPlan::new(&graph, &opts).expect("plan");
    let nodes = compare_with_simulation(&mut net, &plan, x).expect("compare");
    let min = nodes.iter().map(|n| n.exact).fold(1.0, f64::min);
    let bad = nodes
        .iter()
        .filter(|n| n.exact < 1.0)
        .map(|n| format!("{} {:.4} (max |Δ| {})", n.node, n.exact, n.max_abs))
        .collect();
    (min, bad)
}

#[test]
fn a_model_trained_for_a_target_equals_its_simulation() {
    let _g = serial();
    tch::manual_seed(5);
    let specs = [
        ("lenet", ModelSpec::lenet()),
        ("mobilenet_v1", ModelSpec::mobilenet_v1_mnist()),
    ];
    let x = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 0.5;
    for (name, spec) in &specs {
        for bits in [8, 4] {
            for t in Target::ALL {
                let (min, bad) = exact_share(spec, bits, Some(t), t, &x);
                assert_eq!(min, 1.0, "{name} W{bits}A{bits} for {t}: {bad:?}");
            }
        }
        // Without a target, the float fake-quant forward is the simulation of none of them
        // exactly (informational: how far it is from TFLite's double rounding).
        if *name == "lenet" {
            let (min, bad) = exact_share(spec, 4, None, Target::Tflite, &x);
            eprintln!(
                "{name} W4A4 float fake quant vs the tflite simulation: min exact {min:.4} {bad:?}"
            );
        }
    }
}

#[test]
fn training_for_a_target_keeps_the_ste_gradient() {
    let _g = serial();
    tch::manual_seed(6);
    let mut spec = ModelSpec::mobilenet_v1_mnist();
    spec.quant.target = Some(Target::Tflite);
    let mut net = models::build(&spec, Device::Cpu).expect("build");
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    net.apply_flags(Phase::Calibrate.flags()).expect("flags");
    let _ = tch::no_grad(|| net.forward_t(&x, true)).expect("calibrate");
    net.apply_flags(Phase::ObserversFrozen.flags())
        .expect("flags");
    let y = net.forward_t(&x, true).expect("forward");
    y.sum(Kind::Float).backward();
    let grads: f64 = net
        .var_store()
        .trainable_variables()
        .iter()
        .map(|v| v.grad().abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(grads.is_finite() && grads > 0.0, "{grads}");
}
