//! A refused checkpoint changes nothing, and resuming after it is exact: every damaged file gives a
//! typed error naming it while the model and optimizer keep their values bit for bit; once the
//! file is repaired, loading restores the saved state exactly and the next step equals the step
//! the uninterrupted run took.

use qat_train::checkpoint::{self, CheckpointError};
use qat_train::schedule::{Optimizer, OptimizerConfig, OptimizerKind};
use tch::{Device, Kind, Tensor, nn};

fn store(cfg: OptimizerConfig) -> (nn::VarStore, Optimizer) {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _w = vs.root().var(
        "w",
        &[4, 3],
        nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    );
    let _b = vs.root().var("b", &[4], nn::Init::Const(0.25));
    let opt = Optimizer::new(&vs, cfg).unwrap();
    (vs, opt)
}

/// One optimizer step on a fixed quadratic loss.
fn step(vs: &nn::VarStore, opt: &mut Optimizer) {
    opt.zero_grad();
    let loss = vs
        .variables()
        .values()
        .map(|v| (v * v).sum(Kind::Float))
        .fold(Tensor::from(0.0f32), |a, b| a + b);
    loss.backward();
    opt.step();
}

/// Every variable and optimizer buffer as raw f32 bits, by name.
fn snapshot(vs: &nn::VarStore, opt: &Optimizer) -> Vec<(String, Vec<u32>)> {
    let bits = |t: &Tensor| {
        let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
        v.into_iter().map(f32::to_bits).collect::<Vec<_>>()
    };
    let mut out: Vec<(String, Vec<u32>)> = vs
        .variables()
        .iter()
        .map(|(n, t)| (n.clone(), bits(t)))
        .collect();
    out.extend(
        opt.state_tensors()
            .iter()
            .map(|(n, t)| (format!("opt:{n}"), bits(t))),
    );
    out.sort();
    out
}

fn damaged(good: &[u8]) -> Vec<Vec<u8>> {
    let mut flipped = good.to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let mut header_lie = good.to_vec();
    // A safetensors header length (or JSON text) that no longer matches the file.
    header_lie[0] = header_lie[0].wrapping_add(8);
    vec![
        good[..good.len() / 2].to_vec(),
        good[..good.len() - 1].to_vec(),
        Vec::new(),
        flipped,
        header_lie,
        good.iter().map(|b| b ^ 0x5A).collect(),
    ]
}

#[test]
fn refused_checkpoint_changes_nothing_and_resume_after_it_is_exact() {
    for cfg in [
        OptimizerConfig::default(),
        OptimizerConfig {
            kind: OptimizerKind::adam(),
            ..OptimizerConfig::default()
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("last");
        let (vs, mut opt) = store(cfg);
        for _ in 0..3 {
            step(&vs, &mut opt);
        }
        checkpoint::save(&ck, &vs, &opt, &serde_json::json!({"epoch": 3})).unwrap();
        let saved = snapshot(&vs, &opt);
        // The uninterrupted run's next step.
        step(&vs, &mut opt);
        let after_one = snapshot(&vs, &opt);

        // A second run that has moved on (other values, another step count) meets the damage.
        let moved_on = || {
            let (vs2, mut opt2) = store(cfg);
            for _ in 0..5 {
                step(&vs2, &mut opt2);
            }
            (vs2, opt2)
        };
        let (vs2, mut opt2) = moved_on();
        let before = snapshot(&vs2, &opt2);
        assert_ne!(before, saved);
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            let path = ck.join(file);
            let good = std::fs::read(&path).unwrap();
            for (k, bad) in damaged(&good).into_iter().enumerate() {
                std::fs::write(&path, &bad).unwrap();
                let (vs2, mut opt2) = moved_on();
                let r: Result<serde_json::Value, _> = checkpoint::load(&ck, &vs2, &mut opt2);
                match r {
                    Err(
                        CheckpointError::Io { path: p, .. }
                        | CheckpointError::Tensor { path: p, .. }
                        | CheckpointError::Json { path: p, .. }
                        | CheckpointError::Version { path: p, .. }
                        | CheckpointError::Optimizer { path: p, .. },
                    ) => assert_eq!(p, path, "{file} damage {k}"),
                    // One flipped bit inside a tensor's data is still a well-formed checkpoint;
                    // every other damage must be refused.
                    Ok(_) => {
                        assert!(
                            k == 3 && file != "state.json",
                            "{file} damage {k} was accepted"
                        );
                        continue;
                    }
                }
                assert_eq!(
                    snapshot(&vs2, &opt2),
                    before,
                    "{file} damage {k}: a refused load changed the model or optimizer"
                );
            }
            std::fs::write(&path, &good).unwrap();
        }

        // Repaired: the load restores the saved state bit for bit, and the next step is the
        // uninterrupted run's.
        let state: serde_json::Value = checkpoint::load(&ck, &vs2, &mut opt2).unwrap();
        assert_eq!(state["epoch"], 3);
        assert_eq!(snapshot(&vs2, &opt2), saved, "{cfg:?}");
        step(&vs2, &mut opt2);
        assert_eq!(snapshot(&vs2, &opt2), after_one, "{cfg:?}");
    }
}

#[cfg(unix)]
#[test]
fn a_device_in_place_of_a_checkpoint_file_is_refused_without_reading_it() {
    let dev = std::path::Path::new("/dev/zero");
    if !dev.exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("last");
    let (vs, mut opt) = store(OptimizerConfig::default());
    checkpoint::save(&ck, &vs, &opt, &serde_json::json!({"epoch": 1})).unwrap();
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        let path = ck.join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dev, &path).unwrap();
        match checkpoint::load::<serde_json::Value>(&ck, &vs, &mut opt) {
            Err(CheckpointError::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{file} -> /dev/zero: expected an I/O error naming it, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, good).unwrap();
    }
    let state: serde_json::Value = checkpoint::load(&ck, &vs, &mut opt).unwrap();
    assert_eq!(state["epoch"], 1);
}
