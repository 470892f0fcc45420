//! Real process groups on loopback: each test starts its ranks as child processes of this test
//! binary (the same test, with the rank in the environment), and the parent checks that every
//! rank exited cleanly and what they reported.
//!
//! - the collectives (sum, min, max, broadcast, barrier) give every rank the same, right answer,
//!   with 3 ranks; a bad tensor or root is a typed error, not a crash;
//! - averaging gradients over the ranks equals the gradient of the whole batch computed in one
//!   process, and syncing buffers averages what differs while leaving equal values bit for bit;
//! - data-parallel QAT of LeNet (float, calibration, QAT, BN freeze, observer freeze) leaves the
//!   two replicas bit-identical, with the same global losses, and it learns;
//! - a group whose ranks never come fails with a timeout error instead of hanging.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use qat_dist::{DistError, GroupConfig, ProcessGroup, free_local_port, local_launch_env};
use qat_train::data::{Dataset, Normalize};
use qat_train::models::{self, ModelSpec};
use qat_train::schedule::{LrConfig, OptimizerConfig, OptimizerKind, QatDelays, ScheduleConfig};
use qat_train::trainer::collective::{Collective, ReduceOp, all_reduce_mean_grads, sync_buffers};
use qat_train::trainer::{self, TrainConfig};
use tch::{Device, Kind, Tensor, nn};

const CHILD: &str = "QAT_DIST_TEST_CHILD";
const OUT: &str = "QAT_DIST_TEST_OUT";

/// `Some(group)` in a child (the rank from torchrun's variables), `None` in the parent.
fn as_child() -> Option<ProcessGroup> {
    std::env::var_os(CHILD)?;
    tch::set_num_threads(1);
    let mut cfg = GroupConfig::from_env().expect("child environment");
    cfg.timeout = Duration::from_secs(60);
    Some(ProcessGroup::new(&cfg).expect("join"))
}

/// Runs test `name` of this binary as `world` ranks; returns each rank's output directory.
fn launch(name: &str, world: usize, dir: &Path) -> Vec<PathBuf> {
    let port = free_local_port().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..world)
        .map(|r| {
            let out = dir.join(format!("rank{r}"));
            std::fs::create_dir_all(&out).unwrap();
            let child = Command::new(&exe)
                .args(["--exact", name, "--nocapture", "--test-threads=1"])
                .envs(local_launch_env(r, world, port))
                .env(CHILD, "1")
                .env(OUT, &out)
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(r, (mut child, out))| {
            let status = child.wait().unwrap();
            assert!(status.success(), "rank {r} of {name} failed: {status}");
            out
        })
        .collect()
}

fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var_os(OUT).unwrap())
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

#[test]
fn collectives_give_every_rank_the_same_right_answer() {
    let Some(g) = as_child() else {
        let dir = tempfile::tempdir().unwrap();
        let outs = launch(
            "collectives_give_every_rank_the_same_right_answer",
            3,
            dir.path(),
        );
        for (r, out) in outs.iter().enumerate() {
            let text = std::fs::read_to_string(out.join("done")).unwrap();
            assert_eq!(text, format!("rank {r} of 3 ok"));
        }
        return;
    };
    let (r, w) = (g.rank() as f32, g.world_size());
    assert_eq!(w, 3);
    let t = Tensor::from_slice(&[r + 1.0, -(r + 1.0), r * 10.0]);
    g.all_reduce(&t, ReduceOp::Sum).unwrap();
    assert_eq!(f32s(&t), [6.0, -6.0, 30.0]);
    let t = Tensor::from_slice(&[r, -r]);
    g.all_reduce(&t, ReduceOp::Min).unwrap();
    assert_eq!(f32s(&t), [0.0, -2.0]);
    let t = Tensor::from_slice(&[r, -r]);
    g.all_reduce(&t, ReduceOp::Max).unwrap();
    assert_eq!(f32s(&t), [2.0, 0.0]);
    let ints = Tensor::from_slice(&[g.rank() as i64 * 7, 1i64 << 40]);
    g.broadcast(&ints, 1).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ints).unwrap(), [7, 1 << 40]);
    g.barrier().unwrap();
    // Typed refusals, raised before anything is sent (so the ranks stay in step).
    let strided = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).transpose(0, 1);
    let e = g.all_reduce(&strided, ReduceOp::Sum).unwrap_err();
    assert!(e.message.contains("contiguous"), "{e}");
    let e = g.broadcast(&ints, 3).unwrap_err();
    assert!(e.to_string().contains("root 3"), "{e}");
    g.barrier().unwrap();
    std::fs::write(
        out_dir().join("done"),
        format!("rank {} of {w} ok", g.rank()),
    )
    .unwrap();
}

/// A linear classifier's parameters and the mean cross-entropy of `x` (rows) against `y`.
fn linear_loss(vs: &nn::VarStore, x: &Tensor, y: &Tensor) -> Tensor {
    let root = vs.root();
    let w = root.get("w").unwrap();
    let b = root.get("b").unwrap();
    (x.matmul(&w.tr()) + b).cross_entropy_for_logits(y)
}

#[test]
fn mean_gradients_equal_the_whole_batch_and_buffers_merge_exactly() {
    let Some(g) = as_child() else {
        let dir = tempfile::tempdir().unwrap();
        let outs = launch(
            "mean_gradients_equal_the_whole_batch_and_buffers_merge_exactly",
            3,
            dir.path(),
        );
        for out in &outs {
            assert!(out.join("done").exists());
        }
        return;
    };
    let (rank, world) = (g.rank() as i64, g.world_size() as i64);
    // The same data and initial weights on every rank; each rank's shard is rows r·4..r·4+4.
    tch::manual_seed(11);
    let x = Tensor::randn([4 * world, 5], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(3, [4 * world], (Kind::Int64, Device::Cpu));
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var(
        "w",
        &[3, 5],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    );
    let _b = vs.root().var("b", &[3], nn::Init::Const(0.1));
    // Buffers: one that differs by rank, one equal everywhere at a value 3·v/3 would not keep.
    let differ = vs.root().zeros_no_train("differ", &[2]);
    let same = vs.root().zeros_no_train("same", &[1]);
    tch::no_grad(|| {
        differ
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[rank as f32, 10.0 * rank as f32]));
        let _ = same.shallow_clone().fill_(0.1f64);
    });
    // Reference: the whole batch's gradient in this process.
    let full = linear_loss(&vs, &x, &y);
    let reference = tch::Tensor::run_backward(&[full], &[&w], false, false);
    let ref_w = f32s(&reference[0]);
    // Data parallel: this rank's shard, then the mean over the ranks.
    let loss = linear_loss(&vs, &x.narrow(0, 4 * rank, 4), &y.narrow(0, 4 * rank, 4));
    loss.backward();
    all_reduce_mean_grads(&g, &vs).unwrap();
    let got = f32s(&w.grad());
    for (a, b) in got.iter().zip(&ref_w) {
        assert!(
            (a - b).abs() <= 1e-6,
            "mean gradient {a} vs whole batch {b}"
        );
    }
    sync_buffers(&g, &vs).unwrap();
    let mean_rank = (0..world).sum::<i64>() as f32 / world as f32;
    assert_eq!(f32s(&differ), [mean_rank, 10.0 * mean_rank]);
    assert_eq!(
        f32s(&same)[0].to_bits(),
        0.1f32.to_bits(),
        "an equal buffer must keep its bits"
    );
    std::fs::write(out_dir().join("done"), "ok").unwrap();
}

fn lenet_run() -> (Dataset, Dataset, TrainConfig) {
    let all = Dataset::synthetic(640, 10, 1, 28, 28, 42).unwrap();
    let (train, test) = all.split(128, 1).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        seed: 9,
        normalize: Normalize::unit(1),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.05, 32, 0.005).with_warmup(2),
            weight_decay: 1e-4,
        },
        schedule: ScheduleConfig {
            float_steps: 6,
            calibration_batches: 2,
            qat: Some(QatDelays {
                quant_delay: 3,
                freeze_bn_delay: 10,
                freeze_observers_delay: 14,
            }),
        },
        progress: false,
        ..TrainConfig::default()
    };
    (train, test, cfg)
}

#[test]
fn data_parallel_qat_keeps_the_replicas_identical_and_learns() {
    let Some(g) = as_child() else {
        let dir = tempfile::tempdir().unwrap();
        let outs = launch(
            "data_parallel_qat_keeps_the_replicas_identical_and_learns",
            2,
            dir.path(),
        );
        let load = |out: &Path| {
            let t = Tensor::read_safetensors(out.join("model.safetensors")).unwrap();
            let mut named: Vec<(String, Vec<u32>)> = t
                .into_iter()
                .map(|(n, t)| (n, f32s(&t).into_iter().map(f32::to_bits).collect()))
                .collect();
            named.sort();
            named
        };
        let (a, b) = (load(&outs[0]), load(&outs[1]));
        assert!(!a.is_empty());
        assert_eq!(a, b, "the two replicas differ after data-parallel training");
        let h0 = std::fs::read_to_string(outs[0].join("history.json")).unwrap();
        let h1 = std::fs::read_to_string(outs[1].join("history.json")).unwrap();
        assert_eq!(h0, h1, "the ranks saw different global losses");
        return;
    };
    let (train, test, cfg) = lenet_run();
    // Different seeds on purpose: the replicas must start from rank 0's weights anyway.
    trainer::seed_everything(100 + g.rank() as u64);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    let history =
        trainer::train_distributed(&mut net, &train, &test, &cfg, &g, &mut |_| {}).unwrap();
    let last = history.epochs.last().unwrap();
    assert!(last.observers_frozen && last.bn_frozen, "{last:?}");
    assert!(
        last.test_acc > 0.5,
        "data-parallel QAT did not learn: {last:?}"
    );
    // 512 training images, global batch 32: 16 steps per epoch.
    assert_eq!(history.schedule.step, 32);
    let out = out_dir();
    let named: Vec<(String, Tensor)> = net.var_store().variables().into_iter().collect();
    Tensor::write_safetensors(&named, out.join("model.safetensors")).unwrap();
    let epochs: Vec<(f64, f64, f64)> = history
        .epochs
        .iter()
        .map(|e| (e.train_loss, e.train_acc, e.test_acc))
        .collect();
    std::fs::write(out.join("history.json"), format!("{epochs:?}")).unwrap();
}

#[test]
fn ranks_that_never_come_are_a_timeout_error() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let port = free_local_port().unwrap();
    let cfg = GroupConfig {
        timeout: Duration::from_secs(2),
        ..GroupConfig::local(0, 2, port)
    };
    let t0 = Instant::now();
    let err = match ProcessGroup::new(&cfg) {
        Ok(_) => panic!("a group of 2 formed with one rank"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            DistError::Init {
                rank: 0,
                world: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn the_environment_is_checked_before_joining() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let bad = GroupConfig {
        port: 0,
        ..GroupConfig::local(0, 1, 1)
    };
    assert!(matches!(ProcessGroup::new(&bad), Err(DistError::Config(_))));
    let bad = GroupConfig {
        world_size: 0,
        ..GroupConfig::local(0, 1, 1)
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("world size 0")
    );
}

#[test]
fn a_diverging_run_stops_on_every_rank_at_the_same_step() {
    let Some(g) = as_child() else {
        let dir = tempfile::tempdir().unwrap();
        let outs = launch(
            "a_diverging_run_stops_on_every_rank_at_the_same_step",
            2,
            dir.path(),
        );
        let steps: Vec<String> = outs
            .iter()
            .map(|o| std::fs::read_to_string(o.join("stopped")).unwrap())
            .collect();
        assert_eq!(steps[0], steps[1], "the ranks stopped at different steps");
        return;
    };
    let (train, test, mut cfg) = lenet_run();
    cfg.optimizer.lr = LrConfig::cosine(1e9, 32, 1e9);
    cfg.schedule.qat = None;
    cfg.schedule.float_steps = 1_000;
    trainer::seed_everything(5);
    let mut net = models::build(&ModelSpec::lenet(), Device::Cpu).unwrap();
    match trainer::train_distributed(&mut net, &train, &test, &cfg, &g, &mut |_| {}) {
        Err(trainer::TrainError::NonFinite { step, .. }) => {
            std::fs::write(out_dir().join("stopped"), step.to_string()).unwrap();
        }
        other => panic!("expected a non-finite stop, got {other:?}"),
    }
}

#[test]
fn a_rank_that_leaves_is_an_error_on_the_others_not_a_hang() {
    if std::env::var_os(CHILD).is_none() {
        let dir = tempfile::tempdir().unwrap();
        let outs = launch(
            "a_rank_that_leaves_is_an_error_on_the_others_not_a_hang",
            2,
            dir.path(),
        );
        let said = std::fs::read_to_string(outs[0].join("error")).unwrap();
        eprintln!("rank 0: {said}");
        assert!(said.contains("all_reduce"), "{said}");
        return;
    }
    let mut cfg = GroupConfig::from_env().unwrap();
    cfg.timeout = Duration::from_secs(20);
    let g = ProcessGroup::new(&cfg).unwrap();
    g.barrier().unwrap();
    if g.rank() == 1 {
        // Leave without a word: the process ends, its sockets close.
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let t = Tensor::ones([8], (Kind::Float, Device::Cpu));
    let err = g.all_reduce(&t, ReduceOp::Sum).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    std::fs::write(
        out_dir().join("error"),
        format!("{err} after {:?}", t0.elapsed()),
    )
    .unwrap();
}
