//! Data-parallel QAT of LeNet on the shipped MNIST digits: one process per rank, gradients
//! averaged over PyTorch's Gloo backend, rank 0 exporting the integer model.
//!
//! ```sh
//! # W processes on this machine (this program launches them, as torchrun --nproc-per-node does):
//! cargo run --release -p qat-dist --example dp_qat_mnist -- --nproc 2 [--epochs 3] [--out DIR]
//! # one rank of a group started by torchrun or a cluster scheduler (RANK, WORLD_SIZE,
//! # MASTER_ADDR, MASTER_PORT set; GLOO_SOCKET_IFNAME to pick the network interface):
//! dp_qat_mnist [--epochs 3] [--out DIR]
//! ```
//!
//! The recipe is the single-process one (a float epoch, then calibration, QAT, BN freeze and
//! observer freeze) at the same global batch of 64: each of the W ranks takes 64/W images per
//! step. Rank 0 writes `DIR/history.json` and `DIR/model.qat8`; every rank prints its final test
//! accuracy, which is the same on every rank because the replicas are.

use std::{path::PathBuf, process::Command};

use qat_dist::{GroupConfig, ProcessGroup, free_local_port, local_launch_env};
use qat_train::data::{Dataset, Normalize};
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{LrConfig, OptimizerConfig, OptimizerKind, QatDelays, ScheduleConfig};
use qat_train::trainer::collective::Collective;
use qat_train::trainer::{self, Event, TrainConfig};

const GLOBAL_BATCH: usize = 64;

struct Args {
    nproc: Option<usize>,
    epochs: usize,
    out: PathBuf,
    rest: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        nproc: None,
        epochs: 3,
        out: PathBuf::from("target/qat-dist"),
        rest: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--nproc" => {
                let n: usize = value("--nproc")?
                    .parse()
                    .map_err(|e| format!("--nproc: {e}"))?;
                if !(1..=64).contains(&n) {
                    return Err("--nproc must be in 1..=64".into());
                }
                args.nproc = Some(n);
                continue;
            }
            "--epochs" => {
                let v = value("--epochs")?;
                args.epochs = v.parse().map_err(|e| format!("--epochs: {e}"))?;
                args.epochs = args.epochs.max(2);
                args.rest.extend(["--epochs".to_string(), v]);
            }
            "--out" => {
                let v = value("--out")?;
                args.out = PathBuf::from(&v);
                args.rest.extend(["--out".to_string(), v]);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Starts `n` ranks of this program on this machine and waits for them.
fn launch(n: usize, rest: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let port = free_local_port()?;
    let exe = std::env::current_exe()?;
    let children = (0..n)
        .map(|r| {
            Command::new(&exe)
                .args(rest)
                .envs(local_launch_env(r, n, port))
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut failed = Vec::new();
    for (r, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            failed.push(format!("rank {r}: {status}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join(", ").into())
    }
}

fn config(epochs: usize, per_epoch: u64, world: usize) -> TrainConfig {
    let qat_steps = per_epoch * (epochs as u64 - 1);
    TrainConfig {
        epochs,
        batch_size: (GLOBAL_BATCH / world).max(1),
        normalize: Normalize::mnist(),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.05, per_epoch * epochs as u64, 5e-4).with_warmup(20),
            weight_decay: 5e-4,
        },
        schedule: ScheduleConfig {
            float_steps: per_epoch,
            calibration_batches: 4,
            qat: Some(QatDelays {
                quant_delay: qat_steps / 8,
                freeze_bn_delay: qat_steps / 2,
                freeze_observers_delay: 3 * qat_steps / 4,
            }),
        },
        ..TrainConfig::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    if std::env::var_os("RANK").is_none() {
        return launch(args.nproc.unwrap_or(1), &args.rest);
    }
    trainer::tune_allocator();
    tch::set_num_threads(1);
    let group = ProcessGroup::new(&GroupConfig::from_env()?)?;
    let (rank, world) = (group.rank(), group.world_size());
    let data =
        Dataset::load_mnist_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k"))?;
    let per_epoch = (data.train.len() / GLOBAL_BATCH) as u64;
    let cfg = config(args.epochs, per_epoch, world);
    trainer::seed_everything(0);
    let mut net = models::build(&ModelSpec::lenet(), cfg.device.device())?;
    let t0 = std::time::Instant::now();
    let history = trainer::train_distributed(
        &mut net,
        &data.train,
        &data.test,
        &cfg,
        &group,
        &mut |e| {
            if let (0, Event::Epoch(s)) = (rank, e) {
                println!(
                    "epoch {} [{}] train loss {:.4} acc {:.2}% | test acc {:.2}% | {:.0} img/s per rank",
                    s.epoch,
                    s.phase,
                    s.train_loss,
                    100.0 * s.train_acc,
                    100.0 * s.test_acc,
                    s.images_per_sec / world as f64
                );
            }
        },
    )?;
    let last = history.epochs.last().ok_or("no epoch ran")?;
    println!(
        "rank {rank} of {world}: test accuracy {:.2}% after {} steps in {:.1?}",
        100.0 * last.test_acc,
        history.schedule.step,
        t0.elapsed()
    );
    if rank == 0 {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(
            args.out.join("history.json"),
            serde_json::to_string_pretty(&history)?,
        )?;
        let graph = trainer::export_graph(&net, &cfg, &history)?;
        let int8 = qat_export::export(&graph, &qat_train::convert::export_options())?;
        int8.save(args.out.join("model.qat8"))?;
        println!("wrote {}/model.qat8 and history.json", args.out.display());
    }
    group.barrier()?;
    Ok(())
}
