//! A QAT training step reads nothing back to the host.
//!
//! On a GPU every read of a tensor value (`double_value`, `Vec::try_from`, …) synchronizes with the
//! device, and a handful per layer made the QAT step several times slower than the float step. Every
//! read in qat-train and qat-autograd goes through `qat_autograd::host_read`, which counts; so the
//! regression shows on the CPU too:
//! * [`no_host_read_in_a_training_step`]: a tiny MobileNet trained through every phase (warm-up of
//!   the quantizers, activation fake quant, BN frozen, observers frozen), with both BN folds, makes
//!   zero reads per step after the first step of each phase;
//!   — in both forms of the step on the CPU: with the host fast paths of `qat_autograd::cpu` (the
//!   default) and with them off (the device form, the same ops as on a GPU);
//! * [`every_host_read_goes_through_the_counter`]: no other read call remains in the sources, and
//!   values are read in place only through `qat_autograd::cpu`.

use qat_autograd::host_read;
use qat_train::layers::BnFoldMode;
use qat_train::models::{self, Architecture, ModelSpec};
use qat_train::schedule::{Phase, PhaseControl, QatDelays, Schedule, ScheduleConfig};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Steps of each QAT phase; reads are allowed in the first step of a phase (switches and
/// warm-up), none in the others.
const PER_PHASE: u64 = 3;

fn spec(fold: BnFoldMode) -> ModelSpec {
    ModelSpec {
        arch: Architecture::MobileNetV1 {
            width: 0.25,
            blocks: 2,
        },
        input: [1, 12, 12],
        bn_fold: fold,
        ..ModelSpec::lenet()
    }
}

#[test]
fn no_host_read_in_a_training_step() {
    // Both forms of the step on the CPU: the host fast paths (the default) and, with them off, the
    // device form a GPU runs.
    for fast in [true, false] {
        qat_autograd::cpu::with_fast_paths(fast, || training_steps_read_nothing(fast));
    }
}

fn training_steps_read_nothing(fast: bool) {
    tch::manual_seed(7);
    for fold in [BnFoldMode::Whitepaper, BnFoldMode::PyTorch] {
        let mut net = models::build(&spec(fold), Device::Cpu).unwrap();
        let mut opt = nn::Sgd {
            momentum: 0.9,
            ..Default::default()
        }
        .build(net.var_store(), 0.01)
        .unwrap();
        let mut schedule = Schedule::new(ScheduleConfig {
            float_steps: PER_PHASE,
            calibration_batches: 0,
            qat: Some(QatDelays {
                quant_delay: PER_PHASE,
                freeze_bn_delay: 2 * PER_PHASE,
                freeze_observers_delay: 3 * PER_PHASE,
            }),
        })
        .unwrap();
        let x = Tensor::randn([8, 1, 12, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
        let mut seen = Vec::new();
        let mut reads_after_first = Vec::new();
        let mut reads_in_first = 0;
        for step in 0..5 * PER_PHASE {
            let before = host_read::count();
            let labels_before = host_read::by_label();
            schedule.sync(&mut net as &mut dyn PhaseControl).unwrap();
            let phase = schedule.phase();
            let logits = net.forward_t(&x, true).unwrap();
            let loss = logits.cross_entropy_for_logits(&y);
            opt.zero_grad();
            loss.backward();
            opt.step();
            schedule.record_step();
            let reads = host_read::count() - before;
            let first = !seen.contains(&phase);
            seen.push(phase);
            if first {
                reads_in_first += reads;
            } else {
                let mut labels = host_read::by_label();
                labels.retain(|k, v| *v != labels_before.get(k).copied().unwrap_or(0));
                reads_after_first.push((phase, step, reads, labels));
            }
        }
        for p in [
            Phase::Float,
            Phase::QatWarmup,
            Phase::Qat,
            Phase::BnFrozen,
            Phase::ObserversFrozen,
        ] {
            assert!(
                seen.contains(&p),
                "{fold:?} (fast paths {fast}): phase {p:?} never ran"
            );
        }
        let bad: Vec<_> = reads_after_first
            .iter()
            .filter(|(_, _, n, _)| *n > 0)
            .collect();
        assert!(
            bad.is_empty(),
            "{fold:?} (fast paths {fast}): host reads in training steps after the first of a phase: {bad:?}"
        );
        // The counter is wired: freezing the observers reads their ranges (the input scales of the
        // bias simulation), in the first step of that phase.
        assert!(reads_in_first > 0, "{fold:?}: no host read at all");
        assert!(net.uncalibrated().unwrap().is_empty());
    }
}

/// Files of `dir` (recursively) that are not test modules or test support (`testing.rs`: the
/// helpers that tests share, which read what they compare).
fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "tests" {
                sources(&p, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && name != "testing.rs" {
            out.push(p);
        }
    }
}

#[test]
fn every_host_read_goes_through_the_counter() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    sources(&root.join("qat-train/src"), &mut files);
    sources(&root.join("qat-autograd/src"), &mut files);
    assert!(files.len() > 20, "sources not found under {root:?}");
    // The calls that copy tensor values to the host.
    let reads = [
        "double_value(",
        "int64_value(",
        "Vec::<f32>::try_from",
        "Vec::<f64>::try_from",
        "Vec::<i64>::try_from",
        "Vec::<i32>::try_from",
        "Vec::<u8>::try_from",
        "Vec::<bool>::try_from",
        "f64::try_from(",
        "f32::try_from(",
        "i64::try_from(&",
        "bool::try_from(",
        "copy_data(",
        // Values read in place from CPU memory: only through `qat_autograd::cpu`, which checks the
        // device and honours the switch to the device form.
        "from_raw_parts",
        "ArrayD::<f32>::try_from",
        "to_ndarray",
    ];
    let mut found = Vec::new();
    for f in &files {
        if f.ends_with("qat-autograd/src/host_read.rs") || f.ends_with("qat-autograd/src/cpu.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Test modules at the end of a file (`#[cfg(test)] mod tests { … }`) may read freely.
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for r in reads {
                if l.contains(r) {
                    found.push(format!("{}:{}: {}", f.display(), i + 1, l));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "host reads outside qat_autograd::host_read:\n{}",
        found.join("\n")
    );
}
