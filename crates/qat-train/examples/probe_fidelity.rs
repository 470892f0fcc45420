//! Where does a low-bit QAT model's libtorch simulation part from its export simulation?
//!
//! ```sh
//! cargo run --release -p qat-train --example probe_fidelity -- [weight_bits] [act_bits] [epochs]
//! ```
//!
//! Trains MobileNet-v1 on the shipped MNIST digits (1 float epoch, then QAT), exports it and compares, node by
//! node on 256 test images, the libtorch fake-quant values (`Net::forward_all_t`, eval mode) with the export
//! plan's simulation (`qat_export::simulate`), in codes of each node's output parameters; then prints the
//! export's fidelity report (simulation vs the integer runtime).

mod common;

use ndarray::{ArrayD, IxDyn};
use qat_train::data::{Dataset, Normalize};
use qat_train::layers::{QuantConfig, WeightGranularity};
use qat_train::models::{self, ModelSpec};
use qat_train::trainer::{self, TrainConfig};
use tch::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    trainer::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
    };
    let (wb, ab, epochs) = (arg(1, 4)? as u32, arg(2, 4)? as u32, arg(3, 2)?.max(2));
    let mut spec = ModelSpec::mobilenet_v1_mnist();
    spec.quant = QuantConfig {
        weight_bits: wb,
        act_bits: ab,
        weight_granularity: WeightGranularity::PerChannel,
        ..QuantConfig::default()
    };
    let data =
        Dataset::load_mnist_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k"))?;
    let per_epoch = (data.train.len() / 64) as u64;
    let norm = Normalize::mnist();
    let cfg = TrainConfig {
        progress: false,
        ..common::mnist_float_then_qat(epochs, per_epoch)
    };
    trainer::seed_everything(0);
    let mut net = models::build(&spec, cfg.device.device())?;
    let history = trainer::train(&mut net, &data.train, &data.test, &cfg, &mut |_| {})?;
    let graph = trainer::export_graph(&net, &cfg, &history)?;
    let plan = qat_export::QuantPlan::new(&graph, &qat_train::convert::export_options())?;

    // 256 test images, NHWC for the export side, NCHW for libtorch.
    let n = 256.min(data.test.len());
    let [c, h, w] = data.test.image_shape();
    let mut nhwc = vec![0f32; n * h * w * c];
    for i in 0..n {
        let img = data.test.image(i);
        for ch in 0..c {
            for p in 0..h * w {
                nhwc[(i * h * w + p) * c + ch] =
                    (img[ch * h * w + p] as f32 / 255.0 - norm.mean[ch]) / norm.std[ch];
            }
        }
    }
    let x_nhwc = ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), nhwc.clone())?;
    let x_nchw = Tensor::from_slice(&nhwc)
        .view([n as i64, h as i64, w as i64, c as i64])
        .permute([0, 3, 1, 2])
        .contiguous();
    let nodes = qat_train::fidelity::compare_with_simulation(&mut net, &plan, &x_nchw)?;
    println!("W{wb}A{ab}: libtorch fake quant vs export simulation, per node (codes)");
    println!(
        "{:<12} {:>9} {:>6} {:>9} {:>9} {:>9}",
        "node", "S", "Z", "exact %", "≤1 %", "max|Δ|"
    );
    for n in &nodes {
        println!(
            "{:<12} {:>9.5} {:>6} {:>9.2} {:>9.2} {:>9}",
            n.node,
            n.scale,
            n.zero_point,
            100.0 * n.exact,
            100.0 * n.within_one,
            n.max_abs
        );
    }
    let report = qat_export::fidelity_report(&plan, [x_nhwc.view()])?;
    println!("{}", report.to_table());
    Ok(())
}
