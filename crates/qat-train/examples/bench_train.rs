//! Training throughput, float vs QAT, for MobileNet-v1 on MNIST (batch 64).
//!
//! ```sh
//! cargo run --release -p qat-train --example bench_train -- [steps] [threads] [whitepaper|pytorch] \
//!     [--device cpu|cuda] [--data DIR]
//! ```
//!
//! Measures the time of a full optimizer step (forward, cross-entropy, backward, SGD update) on the shipped
//! `data/mnist-10k` digits, in float mode (fake quant off, observers frozen) and in QAT mode (weights
//! fake-quantized per channel after BN folding with the σ_B/σ correction, activations fake-quantized per
//! tensor with EMA observers). Reports the median step time, images/s and the QAT/float ratio. Batches are
//! prepared beforehand (and moved to the device) so that only the step is timed.
//!
//! `--device` defaults to `cpu`; `cuda` needs a binary that links `libtorch_cuda` (build with
//! `QAT_LINK_CUDA=1`, shared TCH.md §1) and fails when `tch::Cuda::is_available()` is false. Reading the
//! loss value every step synchronizes the device, so the CUDA times are complete steps. `--data` replaces
//! the compile-time `data/mnist-10k` path (for binaries run from another checkout).

use std::time::Instant;

use qat_train::data::{Dataset, Loader, LoaderConfig, Normalize};
use qat_train::layers::BnFoldMode;
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{Optimizer, OptimizerConfig, Phase, PhaseControl};
use tch::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = Vec::new();
    let mut device = Device::Cpu;
    let mut dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").to_string();
    let mut it = std::env::args();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => {
                device = match it.next().as_deref() {
                    Some("cpu") => Device::Cpu,
                    Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
                    Some("cuda") => {
                        return Err(
                            "--device cuda: tch::Cuda::is_available() is false (no GPU, or the \
                                    binary was built without QAT_LINK_CUDA=1)"
                                .into(),
                        );
                    }
                    other => return Err(format!("--device {other:?}: expected cpu or cuda").into()),
                }
            }
            "--data" => dir = it.next().ok_or("--data needs a directory")?,
            _ => args.push(a),
        }
    }
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    if let Some(t) = args.get(2) {
        tch::set_num_threads(t.parse()?);
    }
    let data = Dataset::load_mnist_dir(&dir)?;
    let loader = Loader::new(
        data.train.into(),
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            seed: 1,
            drop_last: true,
            normalize: Normalize::mnist(),
            prefetch: 0,
            ..Default::default()
        },
    )?;
    let batches: Vec<(Tensor, Tensor)> = loader
        .epoch(0, 0)
        .take(steps + 5)
        .map(|b| b.map(|b| (b.images.to_device(device), b.labels.to_device(device))))
        .collect::<Result<_, _>>()?;
    let fold = match args.get(3).map(String::as_str) {
        None | Some("whitepaper") => BnFoldMode::Whitepaper,
        Some("pytorch") => BnFoldMode::PyTorch,
        Some(other) => {
            return Err(format!("unknown BN fold mode {other} (whitepaper|pytorch)").into());
        }
    };
    let spec = ModelSpec {
        bn_fold: fold,
        ..ModelSpec::mobilenet_v1_mnist()
    };
    println!(
        "model {} | BN fold {:?} | batch 64 | {} threads | device {:?} | {} timed steps after 5 warm-up",
        spec.name(),
        fold,
        tch::get_num_threads(),
        device,
        steps
    );
    let mut results = Vec::new();
    for phase in [Phase::Float, Phase::Qat, Phase::Float, Phase::Qat] {
        tch::manual_seed(0);
        let mut net = models::build(&spec, device)?;
        let mut opt = Optimizer::new(net.var_store(), OptimizerConfig::default())?;
        if phase == Phase::Qat {
            // Observers need one range before activations can be fake-quantized: one warm-up step in QatWarmup.
            net.apply_flags(Phase::QatWarmup.flags());
            let _ = net.forward_t(&batches[0].0, true)?;
        }
        net.apply_flags(phase.flags());
        let mut times = Vec::with_capacity(steps);
        for (i, (x, y)) in batches.iter().enumerate() {
            let t0 = Instant::now();
            let loss = net.forward_t(x, true)?.cross_entropy_for_logits(y);
            opt.zero_grad();
            loss.backward();
            opt.step();
            let _ = loss.double_value(&[]);
            if i >= 5 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        let m = median(times);
        println!(
            "{:>6}: median step {:7.2} ms  {:7.1} images/s",
            phase.name(),
            m * 1e3,
            64.0 / m
        );
        results.push((phase, m));
    }
    // Best of the two alternating runs of each mode (less sensitive to other load on the machine).
    let best = |p: Phase| {
        results
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| r.1)
            .fold(f64::INFINITY, f64::min)
    };
    let (float, qat) = (best(Phase::Float), best(Phase::Qat));
    println!(
        "float {:.1} img/s, QAT {:.1} img/s, QAT/float step time = {:.2}x",
        64.0 / float,
        64.0 / qat,
        qat / float
    );
    Ok(())
}
