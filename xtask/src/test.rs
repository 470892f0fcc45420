//! `cargo xtask test`: the one command CI runs.
//!
//! setup (libtorch and the peer runtimes) → `cargo fmt --all --check` → `cargo clippy --workspace
//! --all-targets -D warnings` (and the `torch` features of xtask and qat-fuzz) → `cargo test` over
//! the whole workspace → a one-minute fuzz pass → the quick pipeline smoke run → the quantize smoke
//! run (the PyTorch-made MNIST CNN imported, quantized, exported and run in LiteRT and onnxruntime).
//! Crates that use libtorch run their tests on one thread: `tch::manual_seed` and the thread count
//! are process-global, so seeded tests would otherwise interfere. The tests run with
//! `QAT_PEERS_PYTHON` set to the peers' venv, so the cross-check of exported models in LiteRT and
//! onnxruntime runs (and fails the build when a check fails) instead of skipping.

use anyhow::Result;

use crate::{cargo, fuzz, gloo, peers, quantize_smoke, setup, smoke};

/// Packages whose tests touch libtorch's global state.
const TORCH_PACKAGES: [&str; 4] = [
    "qat-autograd",
    "qat-train",
    "qat-dist",
    "qat-integration-tests",
];

pub fn run(no_smoke: bool) -> Result<()> {
    let started = std::time::Instant::now();
    if let Some(note) = cargo::disk_note() {
        eprintln!("[xtask] {note}");
    }
    let libtorch = setup::ensure_libtorch(false)?;
    gloo::ensure_gloo(false)?;
    let python = peers::ensure_peers(false)?;
    let env = [(peers::PYTHON_ENV, python.as_os_str())];
    cargo::run(Some(&libtorch), &["fmt", "--all", "--check"])?;
    cargo::run(
        Some(&libtorch),
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo::run(
        Some(&libtorch),
        &[
            "clippy",
            "-p",
            "xtask",
            "-p",
            "qat-fuzz",
            "--features",
            "xtask/torch,qat-fuzz/torch",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;

    let mut rest = vec!["test", "--workspace"];
    for p in TORCH_PACKAGES {
        rest.extend(["--exclude", p]);
    }
    cargo::run_env(Some(&libtorch), &env, &rest)?;
    let mut torch = vec!["test"];
    for p in TORCH_PACKAGES {
        torch.extend(["-p", p]);
    }
    // qat-fuzz again with its libtorch targets: the corpus replay covers checkpoint, IDX and
    // CIFAR inputs too.
    torch.extend(["-p", "qat-fuzz", "--features", "qat-fuzz/torch"]);
    torch.extend(["--", "--test-threads=1"]);
    cargo::run_env(Some(&libtorch), &env, &torch)?;

    // Short fuzz pass (about a minute, dev profile: already built by the tests above).
    fuzz::run(&fuzz::FuzzArgs {
        cases: None,
        seconds: Some(60.0),
        seed: 0x5EED,
        debug_build: true,
        no_torch: false,
    })?;

    if !no_smoke {
        smoke::run(&libtorch)?;
        quantize_smoke::run(&libtorch, &python)?;
    }
    if let Some(note) = cargo::disk_note() {
        eprintln!("[xtask] {note}");
    }
    eprintln!("[xtask] all checks passed in {:.0?}", started.elapsed());
    Ok(())
}
