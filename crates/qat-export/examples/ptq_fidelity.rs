//! PTQ of a small synthetic MNIST-shaped CNN, then the per-layer fidelity report.
//!
//! `cargo run --release -p qat-export --example ptq_fidelity [--markdown|--json]`
//!
//! The weights are deterministic pseudo-random numbers (no training): the point is the export
//! path — calibration, BN folding, integer model, and how closely it tracks the simulation.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{StdRng, random_bn, rng, uniform};
use ndarray::ArrayD;
use qat_export::ir::{Activation, Conv2d, Linear, Pool2d};
use qat_export::{FloatGraph, PtqConfig, fidelity_report, ptq};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let r = &mut rng(0x9e37_79b9_7f4a_7c15);
    let mut g = FloatGraph::new("synthetic-mnist-cnn");
    let x = g.input("x", &[28, 28, 1]);
    let c1 = Conv2d::new(uniform(r, 16 * 9, -0.5, 0.5), [16, 3, 3, 1])
        .with_padding([1; 4])
        .with_batch_norm(random_bn(r, 16))
        .with_activation(Activation::Relu6);
    let c1 = g.conv2d("conv1", x, c1);
    let p1 = g.max_pool("pool1", c1, Pool2d::square(2, 2));
    let dw = Conv2d::new(uniform(r, 16 * 9, -0.5, 0.5), [16, 3, 3, 1])
        .with_groups(16)
        .with_padding([1; 4])
        .with_batch_norm(random_bn(r, 16))
        .with_activation(Activation::Relu6);
    let dw = g.conv2d("dw2", p1, dw);
    let pw = Conv2d::new(uniform(r, 32 * 16, -0.35, 0.35), [32, 1, 1, 16])
        .with_batch_norm(random_bn(r, 32))
        .with_activation(Activation::Relu6);
    let pw = g.conv2d("pw2", dw, pw);
    let gap = g.global_avg_pool("gap", pw);
    let fc = g.linear(
        "fc",
        gap,
        Linear::new(uniform(r, 10 * 32, -0.4, 0.4), [10, 32]).with_bias(uniform(r, 10, -0.1, 0.1)),
    );
    g.output("logits", fc);

    let batch = |r: &mut StdRng, n: usize| {
        ArrayD::from_shape_vec(vec![n, 28, 28, 1], uniform(r, n * 784, 0.0, 1.0))
    };
    let cal: Vec<ArrayD<f32>> = (0..4).map(|_| batch(r, 64)).collect::<Result<_, _>>()?;
    let t = Instant::now();
    let plan = ptq(&g, cal.iter().map(|b| b.view()), &PtqConfig::default())?;
    let t_cal = t.elapsed();
    let test = batch(r, 128)?;
    let t = Instant::now();
    let report = fidelity_report(&plan, [test.view()])?;
    let t_rep = t.elapsed();
    match std::env::args().nth(1).as_deref() {
        Some("--json") => println!("{}", report.to_json()),
        Some("--markdown") => println!("{}", report.to_markdown()),
        _ => println!("{}", report.to_table()),
    }
    eprintln!(
        "calibration on 256 samples: {t_cal:.2?}; fidelity report on 128 samples: {t_rep:.2?}"
    );
    Ok(())
}
