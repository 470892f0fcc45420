//! The pipeline smoke run of `cargo xtask test`: `qat-pipeline --quick` in the dev profile, then
//! checks of the report's structure and of the int8-vs-simulation agreement. It checks no accuracy
//! threshold (a few training steps on a tiny subset would make such a check flaky).

use std::{fs, path::Path};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cargo;

/// Rows the report's main table must have.
pub const REQUIRED_ROWS: [&str; 5] = [
    "float",
    "ptq_per_tensor",
    "ptq_per_channel",
    "qat_fake_quant",
    "qat_int8",
];

/// Smallest share of each layer's integer outputs within 1 LSB of the fake-quant simulation when the
/// layer is fed the same (simulated) input: the integer kernels must reproduce the simulation
/// up to rounding ties and the int32 rounding of the bias.
const MIN_LAYER_WITHIN_1_LSB: f64 = 0.99;

/// Smallest argmax agreement between the integer model and its simulation on the smoke run's barely
/// trained model (near-tied logits make argmax sensitive; a trained model agrees ≥ 99.5%).
const MIN_ARGMAX_AGREEMENT: f64 = 0.9;

pub fn run(libtorch: &Path) -> Result<()> {
    let root = cargo::workspace_root().context("no workspace root")?;
    let out = root.join("target").join("qat-report").join("smoke");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let out_s = out.to_string_lossy().to_string();
    cargo::run(
        Some(libtorch),
        &[
            "run",
            "-p",
            "xtask",
            "--features",
            "torch",
            "--bin",
            "qat-pipeline",
            "--",
            "--quick",
            "--no-progress",
            "--out",
            &out_s,
        ],
    )?;
    check_report(&out)
}

/// Validates a report directory written by the pipeline.
pub fn check_report(dir: &Path) -> Result<()> {
    let path = dir.join("report.json");
    let text = fs::read_to_string(&path).with_context(|| format!("missing {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let rows = v["results"]
        .as_array()
        .with_context(|| format!("{}: no `results` array", path.display()))?;
    for name in REQUIRED_ROWS {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .with_context(|| format!("report has no `{name}` row"))?;
        let acc = row["accuracy"]
            .as_f64()
            .with_context(|| format!("row `{name}` has no accuracy"))?;
        ensure!(
            (0.0..=1.0).contains(&acc),
            "row `{name}`: accuracy {acc} outside [0, 1]"
        );
    }
    let agree = v["agreement"]["int8_vs_fake_quant"]
        .as_f64()
        .context("report has no agreement.int8_vs_fake_quant")?;
    ensure!(
        (0.0..=1.0).contains(&agree),
        "agreement {agree} outside [0, 1]"
    );
    let mut n_layers = 0;
    let mut sim = 1f64;
    for key in ["fidelity", "fidelity_low_bit"] {
        let layers = v[key]["layers"]
            .as_array()
            .filter(|l| !l.is_empty())
            .with_context(|| format!("report has no per-layer `{key}` table"))?;
        n_layers += layers.len();
        for l in layers {
            let name = l["node"].as_str().unwrap_or("?");
            let within = l["isolated"]["within_1_lsb"]
                .as_f64()
                .with_context(|| format!("{key} of {name} has no isolated.within_1_lsb"))?;
            if within < MIN_LAYER_WITHIN_1_LSB {
                bail!(
                    "{key}, layer {name}: only {:.2}% of integer outputs within 1 LSB of the simulation",
                    100.0 * within
                );
            }
        }
        let a = v[key]["outputs"][0]["argmax_vs_simulation"]
            .as_f64()
            .with_context(|| format!("{key} has no argmax_vs_simulation"))?;
        if a < MIN_ARGMAX_AGREEMENT {
            bail!("{key}: int8 vs simulation argmax agreement {a:.4} < {MIN_ARGMAX_AGREEMENT}");
        }
        sim = sim.min(a);
    }
    // The trained (libtorch) model vs the export's simulation, node by node.
    let mut worst_node = 1f64;
    for key in ["main", "low_bit"] {
        let nodes = v["torch_vs_simulation"][key]
            .as_array()
            .filter(|n| !n.is_empty())
            .with_context(|| format!("report has no torch_vs_simulation.{key} table"))?;
        for n in nodes {
            let name = n["node"].as_str().unwrap_or("?");
            let within = n["within_one"].as_f64().with_context(|| {
                format!("torch_vs_simulation.{key} of {name} has no within_one")
            })?;
            if within < MIN_LAYER_WITHIN_1_LSB {
                bail!(
                    "torch_vs_simulation.{key}, node {name}: only {:.2}% of libtorch fake-quant codes within 1 of the simulation",
                    100.0 * within
                );
            }
            worst_node = worst_node.min(within);
        }
    }
    let rounding = v["rounding"]
        .as_array()
        .context("report has no `rounding` comparison")?;
    ensure!(
        rounding.len() == 4
            && rounding
                .iter()
                .all(|r| (0.0..=1.0).contains(&r["agreement"].as_f64().unwrap_or(-1.0))),
        "`rounding` must hold both modes for both bit widths with agreements in [0, 1]"
    );
    for f in [
        "report.md",
        "accuracy_vs_bits.png",
        "accuracy_vs_bits.svg",
        "training.png",
        "latency_vs_accuracy.png",
    ] {
        ensure!(dir.join(f).exists(), "report is missing {f}");
    }
    eprintln!(
        "[smoke] report OK: {} rows, {n_layers} layers within 1 LSB, int8 vs simulation argmax ≥ {sim:.4}, \
         vs libtorch fake quant {agree:.4}; libtorch vs simulation ≥ {:.2}% of codes within 1 on every node",
        rows.len(),
        100.0 * worst_node
    );
    Ok(())
}
