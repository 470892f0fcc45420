//! Float pre-training then QAT on the shipped MNIST digits, ending export-ready.
//!
//! ```sh
//! cargo run --release -p qat-train --example train_mnist -- [lenet|mobilenet_v1] [epochs] [history.json]
//! ```
//!
//! Epoch 0 trains in float; then 4 calibration batches, QAT with a quantization delay, BN freeze and observer
//! freeze spread over the remaining epochs, so that the run ends in `ObserversFrozen`; the trained model is
//! converted to qat-export's `FloatGraph` and exported to an `Int8Model`. Progress bars show on a terminal;
//! set `RUST_LOG=info` for the `tracing` log.

mod common;

use qat_train::convert;
use qat_train::data::Dataset;
use qat_train::models::{self, ModelSpec};
use qat_train::trainer::{self, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    trainer::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let spec = match args.get(1).map(String::as_str) {
        None | Some("lenet") => ModelSpec::lenet(),
        Some("mobilenet_v1") => ModelSpec::mobilenet_v1_mnist(),
        Some(other) => return Err(format!("unknown model {other} (lenet|mobilenet_v1)").into()),
    };
    let epochs: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(2);
    let data =
        Dataset::load_mnist_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k"))?;
    let per_epoch = (data.train.len() / 64) as u64;
    let cfg = common::mnist_float_then_qat(epochs, per_epoch);
    trainer::seed_everything(0);
    let mut net = models::build(&spec, cfg.device.device())?;
    println!(
        "{}: {} parameters, device {:?}",
        net.name(),
        net.num_parameters(),
        net.device()
    );
    let history = trainer::train(&mut net, &data.train, &data.test, &cfg, &mut |e| match e {
        Event::Transition(t) => println!("step {:>5}: phase {}", t.step, t.to),
        Event::Epoch(s) => println!(
            "epoch {} [{}] train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s",
            s.epoch,
            s.phase,
            s.train_loss,
            100.0 * s.train_acc,
            s.test_loss,
            100.0 * s.test_acc,
            s.images_per_sec
        ),
        _ => {}
    })?;
    let graph = trainer::export_graph(&net, &cfg, &history)?;
    let int8 = qat_export::export(&graph, &convert::export_options())?;
    println!(
        "exported {} ({} graph nodes) to an Int8Model with {} ops",
        graph.name,
        graph.nodes.len(),
        int8.ops.len()
    );
    if let Some(path) = args.get(3) {
        std::fs::write(path, serde_json::to_string_pretty(&history)?)?;
        println!("history written to {path}");
    }
    Ok(())
}
