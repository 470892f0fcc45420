//! Training throughput, float vs QAT, for MobileNet-v1 on MNIST (batch 64 unless `--batch`).
//!
//! ```sh
//! cargo run --release -p qat-train --example bench_train -- [steps] [threads] [whitepaper|pytorch|both] \
//!     [--device cpu|cuda] [--batch N] [--data DIR] [--phases LIST | --schedule] [--repeats N] [--width A] \
//!     [--ema-decay D] [--no-tune-allocator] [--stats-grad]
//! ```
//!
//! Measures the time of a full optimizer step (forward, cross-entropy, backward, SGD update) on the shipped
//! `data/mnist-10k` digits, in float mode (fake quant off, observers frozen) and in QAT mode (weights
//! fake-quantized per channel after BN folding with the σ_B/σ correction, activations fake-quantized per
//! tensor with EMA observers). Reports the median step time, images/s and the QAT/float ratio. Batches are
//! prepared beforehand (and moved to the device) so that only the step is timed.
//!
//! The float reference is always plain conv + BN (batch statistics, libtorch's fused `batch_norm`), which is
//! what the whitepaper fold computes with fake quant off; `[whitepaper|pytorch]` picks the fold of the QAT
//! phases. Besides the wall-clock median, each run reports the CPU time per step (mean over the timed steps,
//! from `/proc/self/task/*/schedstat`): on a machine shared with other jobs the wall time also counts the
//! time the others hold the cores, the CPU time mostly does not.
//!
//! All phases are built at once and their timed steps interleave (one step of each per round, the order
//! rotating), so load changes on the machine hit every phase alike; each figure is the median over its steps.
//!
//! Options: `--phases float,warmup,qat,bn-frozen,frozen` (default `float,qat,bn-frozen`; the QAT phases of
//! `schedule::Phase`), `--repeats N` (default 2: `steps × N` timed rounds, cycling over the `steps + 5`
//! batches), `--stats-grad` (whitepaper fold with the gradient through the batch statistics,
//! `ConvBnConfig::stats_grad`), `--no-tune-allocator` (skip `trainer::tune_allocator`, glibc's default thresholds),
//! `--width A` (MobileNet width multiplier, default 0.25), `--ema-decay D` (activation EMA decay),
//! `--schedule` (all five phases, then the per-epoch images/s of the default pipeline's QAT schedule,
//! `configs/default.toml`: 125 steps/epoch, activation quantization from step 60, BN frozen from 250,
//! observers frozen from 375; for its model add `--width 0.5 --ema-decay 0.99`).
//!
//! `--batch N` sets the batch size (default 64). The fold `both` builds every QAT phase once per fold
//! (whitepaper and PyTorch) in the same interleaved run, labelled `phase/fold`. Each run also
//! prints the device→host reads per timed step (`qat_autograd::host_read`; the loss read of the
//! timing loop itself is not counted).
//!
//! `--device` defaults to `cpu`; `cuda` needs a binary that links `libtorch_cuda` (build with
//! `QAT_LINK_CUDA=1`; without it libtorch's CUDA library is not linked and no GPU is seen) and fails when `tch::Cuda::is_available()` is false. Reading the
//! loss value every step synchronizes the device, so the CUDA times are complete steps. `--data` replaces
//! the compile-time `data/mnist-10k` path (for binaries run from another checkout).

use std::time::Instant;

use qat_autograd::host_read;
use qat_train::data::{Dataset, Loader, LoaderConfig, Normalize};
use qat_train::layers::BnFoldMode;
use qat_train::models::{self, Architecture, ModelSpec};
use qat_train::observer::ActObserverConfig;
use qat_train::schedule::{Optimizer, OptimizerConfig, Phase, PhaseControl};
use tch::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time this process has run so far, in ns (sum over its threads of the first field of
/// `/proc/self/task/*/schedstat`); `None` where that file does not exist. Unlike wall time it does not
/// count the time other processes hold the cores (the 2-core build machine is shared).
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Parses a phase name of `--phases`.
fn parse_phase(s: &str) -> Result<Phase, String> {
    Ok(match s {
        "float" => Phase::Float,
        "warmup" => Phase::QatWarmup,
        "qat" => Phase::Qat,
        "bn-frozen" => Phase::BnFrozen,
        "frozen" => Phase::ObserversFrozen,
        other => {
            return Err(format!(
                "unknown phase {other} (float|warmup|qat|bn-frozen|frozen)"
            ));
        }
    })
}

/// The default pipeline's QAT schedule (configs/default.toml): 125 steps per epoch, 4 epochs,
/// activation quantization from step 60, BN frozen from step 250, observers frozen from step 375.
fn schedule_phase(step: usize) -> Phase {
    match step {
        0..60 => Phase::QatWarmup,
        60..250 => Phase::Qat,
        250..375 => Phase::BnFrozen,
        _ => Phase::ObserversFrozen,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = Vec::new();
    let mut device = Device::Cpu;
    let mut dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").to_string();
    let mut phases = vec![Phase::Float, Phase::Qat, Phase::BnFrozen];
    let mut repeats = 2usize;
    let mut width: Option<f64> = None;
    let mut ema_decay: Option<f32> = None;
    let mut tune_alloc = true;
    let mut stats_grad = false;
    let mut batch_size = 64usize;
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
            "--phases" => {
                phases = it
                    .next()
                    .ok_or("--phases needs a list")?
                    .split(',')
                    .map(parse_phase)
                    .collect::<Result<_, _>>()?;
            }
            "--schedule" => {
                phases = vec![
                    Phase::Float,
                    Phase::QatWarmup,
                    Phase::Qat,
                    Phase::BnFrozen,
                    Phase::ObserversFrozen,
                ];
            }
            "--no-tune-allocator" => tune_alloc = false,
            "--stats-grad" => stats_grad = true,
            "--batch" => batch_size = it.next().ok_or("--batch needs a number")?.parse()?,
            "--repeats" => repeats = it.next().ok_or("--repeats needs a number")?.parse()?,
            "--width" => width = Some(it.next().ok_or("--width needs a number")?.parse()?),
            "--ema-decay" => {
                ema_decay = Some(it.next().ok_or("--ema-decay needs a number")?.parse()?)
            }
            _ => args.push(a),
        }
    }
    // As the pipeline binary does: keep freed tensor memory in the process.
    let tuned = tune_alloc && qat_train::trainer::tune_allocator();
    println!("allocator tuned (glibc mallopt): {tuned}");
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(30);
    if let Some(t) = args.get(2) {
        tch::set_num_threads(t.parse()?);
    }
    if steps == 0 || repeats == 0 || batch_size < 2 {
        return Err("steps and --repeats must be > 0, --batch > 1".into());
    }
    let data = Dataset::load_mnist_dir(&dir)?;
    let loader = Loader::new(
        data.train.into(),
        LoaderConfig {
            batch_size,
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
    let folds = match args.get(3).map(String::as_str) {
        None | Some("whitepaper") => vec![BnFoldMode::Whitepaper],
        Some("pytorch") => vec![BnFoldMode::PyTorch],
        Some("both") => vec![BnFoldMode::Whitepaper, BnFoldMode::PyTorch],
        Some(other) => {
            return Err(format!("unknown BN fold mode {other} (whitepaper|pytorch|both)").into());
        }
    };
    let fold = folds[0];
    let mut spec = ModelSpec {
        bn_fold: fold,
        bn_stats_grad: stats_grad,
        ..ModelSpec::mobilenet_v1_mnist()
    };
    if let Some(w) = width
        && let Architecture::MobileNetV1 { width, .. } = &mut spec.arch
    {
        *width = w;
    }
    if let Some(d) = ema_decay {
        spec.quant.act_observer = ActObserverConfig::Ema { decay: d };
    }
    // The float reference is always plain conv + BN (batch statistics, libtorch's fused batch_norm):
    // the whitepaper fold's float path computes exactly that, whatever fold the QAT phases use.
    let float_spec = ModelSpec {
        bn_fold: BnFoldMode::Whitepaper,
        ..spec.clone()
    };
    println!(
        "model {} | BN fold {:?}{} | batch {batch_size} | {} threads | device {:?} | {}x{} timed steps per phase after 5 warm-up, phases interleaved",
        spec.name(),
        folds,
        if stats_grad && fold == BnFoldMode::Whitepaper {
            " (gradient through batch statistics)"
        } else {
            ""
        },
        tch::get_num_threads(),
        device,
        steps,
        repeats
    );
    // One model per phase, all alive at once; the timed steps interleave the phases (round r runs one
    // step of each, starting at phase r mod P), so a change of load on the machine hits every phase
    // alike and the ratios stay meaningful even when the absolute times do not.
    // Runs: (phase, fold) pairs; float once, every QAT phase once per fold.
    let mut runs: Vec<(Phase, Option<BnFoldMode>)> = Vec::new();
    for &phase in &phases {
        if phase == Phase::Float {
            runs.push((phase, None));
        } else {
            runs.extend(folds.iter().map(|&f| (phase, Some(f))));
        }
    }
    let label = |(p, f): (Phase, Option<BnFoldMode>)| match f {
        Some(f) if folds.len() > 1 => format!("{}/{f:?}", p.name()),
        _ => p.name().to_string(),
    };
    let mut nets = Vec::with_capacity(runs.len());
    for &(phase, f) in &runs {
        tch::manual_seed(0);
        let s = match f {
            None => float_spec.clone(),
            Some(f) => ModelSpec {
                bn_fold: f,
                ..spec.clone()
            },
        };
        let mut net = models::build(&s, device)?;
        let opt = Optimizer::new(net.var_store(), OptimizerConfig::default())?;
        if phase != Phase::Float {
            // Observers need one range before activations can be fake-quantized: one warm-up
            // forward with the observers collecting and nothing quantized.
            net.apply_flags(Phase::Calibrate.flags())?;
            let _ = net.forward_t(&batches[0].0, true)?;
        }
        net.apply_flags(phase.flags())?;
        nets.push((phase, net, opt));
    }
    let rounds = steps * repeats;
    let mut wall: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); runs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); runs.len()];
    let mut reads = vec![0u64; runs.len()];
    for round in 0..rounds + 5 {
        let (x, y) = &batches[round % batches.len()];
        for k in 0..nets.len() {
            let j = (round + k) % nets.len();
            let (_, net, opt) = &mut nets[j];
            let c0 = cpu_ns();
            let t0 = Instant::now();
            let r0 = host_read::count();
            let loss = net.forward_t(x, true)?.cross_entropy_for_logits(y);
            opt.zero_grad();
            loss.backward();
            opt.step();
            let r1 = host_read::count();
            // Waits for the device (CUDA), so that the time is the whole step.
            let _ = loss.double_value(&[]);
            let t = t0.elapsed().as_secs_f64();
            if round >= 5 {
                reads[j] += r1 - r0;
                wall[j].push(t);
                let c = c0.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 * 1e-9);
                cpu[j].push(c.unwrap_or(f64::NAN));
            }
        }
    }
    let med = |j: usize| median(wall[j].clone());
    let med_cpu = |j: usize| median(cpu[j].clone());
    let float_j = runs.iter().position(|r| r.0 == Phase::Float);
    println!(
        "medians over {rounds} interleaved steps per run (wall clock | CPU time of the process | host reads per step):"
    );
    for (j, &r) in runs.iter().enumerate() {
        let (t, c) = (med(j), med_cpu(j));
        let per_step = reads[j] as f64 / rounds as f64;
        let img = batch_size as f64 / t;
        match float_j {
            Some(fj) if j != fj => println!(
                "{:>26}: {:8.2} ms/step {:8.1} images/s  {:.2}x float | CPU {:8.2} ms/step {:.2}x float | reads {per_step}",
                label(r),
                t * 1e3,
                img,
                t / med(fj),
                c * 1e3,
                c / med_cpu(fj)
            ),
            _ => println!(
                "{:>26}: {:8.2} ms/step {:8.1} images/s        | CPU {:8.2} ms/step | reads {per_step}",
                label(r),
                t * 1e3,
                img,
                c * 1e3
            ),
        }
    }
    // The schedule summary below uses the first fold.
    let index = |p: Phase| {
        runs.iter()
            .position(|&(q, f)| q == p && (f.is_none() || f == Some(fold)))
    };
    let best = |p: Phase| index(p).map_or(f64::NAN, med);
    let best_cpu = |p: Phase| index(p).map_or(f64::NAN, med_cpu);
    let float = float_j.map(med);
    let all = [
        Phase::QatWarmup,
        Phase::Qat,
        Phase::BnFrozen,
        Phase::ObserversFrozen,
    ];
    if let Some(f) = float
        && all.iter().all(|p| phases.contains(p))
    {
        println!(
            "default pipeline schedule (125 steps/epoch, act quant from 60, BN frozen from 250, \
             observers frozen from 375), optimizer steps only:"
        );
        let fc = best_cpu(Phase::Float);
        println!(
            "  float epoch: {:7.1} images/s (wall) {:7.1} images/s (CPU)",
            batch_size as f64 / f,
            batch_size as f64 / fc
        );
        for epoch in 0..4 {
            let steps = epoch * 125..(epoch + 1) * 125;
            let t: f64 = steps.clone().map(|s| best(schedule_phase(s))).sum();
            let c: f64 = steps.map(|s| best_cpu(schedule_phase(s))).sum();
            println!(
                "  QAT epoch {}: {:7.1} images/s (wall, {:.2}x float epoch time) {:7.1} images/s (CPU, {:.2}x)",
                epoch + 1,
                batch_size as f64 * 125.0 / t,
                t / (125.0 * f),
                batch_size as f64 * 125.0 / c,
                c / (125.0 * fc)
            );
        }
    }
    Ok(())
}
