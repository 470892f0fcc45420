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
use tch::{Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let torch_vals = {
        let _g = tch::no_grad_guard();
        net.forward_all_t(&x_nchw, false)?
    };
    let sim = qat_export::simulate::simulate(&plan, x_nhwc.view())?;
    println!("W{wb}A{ab}: libtorch fake quant vs export simulation, per node (codes)");
    println!(
        "{:<12} {:>9} {:>6} {:>9} {:>9} {:>9}",
        "node", "S", "Z", "exact %", "≤1 %", "max|Δ|"
    );
    for (k, node) in net.nodes().iter().enumerate() {
        let Some(gi) = plan.graph.nodes.iter().position(|g| g.name == node.name) else {
            continue;
        };
        let p = plan.act_params[gi];
        let t = &torch_vals[k];
        let t = if t.dim() == 4 {
            t.permute([0, 2, 3, 1]).contiguous()
        } else {
            t.shallow_clone()
        };
        let tv: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
        let sv: Vec<f32> = sim[gi].iter().copied().collect();
        if tv.len() != sv.len() {
            println!("{:<12} size {} vs {}", node.name, tv.len(), sv.len());
            continue;
        }
        let (mut exact, mut one, mut maxd) = (0usize, 0usize, 0i32);
        for (a, b) in tv.iter().zip(&sv) {
            let d = (p.quantize(*a) - p.quantize(*b)).abs();
            exact += usize::from(d == 0);
            one += usize::from(d <= 1);
            maxd = maxd.max(d);
        }
        println!(
            "{:<12} {:>9.5} {:>6} {:>9.2} {:>9.2} {:>9}",
            node.name,
            p.scale(),
            p.zero_point(),
            100.0 * exact as f64 / tv.len() as f64,
            100.0 * one as f64 / tv.len() as f64,
            maxd
        );
    }
    let report = qat_export::fidelity_report(&plan, [x_nhwc.view()])?;
    println!("{}", report.to_table());
    Ok(())
}
