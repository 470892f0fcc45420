//! The pipeline smoke run of `cargo xtask test`: `qat-pipeline --quick` in the dev profile, then
//! checks of the report's structure and of the int8-vs-simulation agreement. It checks no accuracy
//! threshold (a few training steps on a tiny subset would make such a check flaky).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use xtask::report::Report;

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
    let config = studies_config()?;
    let config = config.to_string_lossy();
    let out = cargo::run_smoke_bin(
        libtorch,
        &[],
        "qat-pipeline",
        "qat-report",
        &[
            "--quick",
            "--no-progress",
            "--config",
            &config,
            "--study",
            "sensitivity,mixed-precision",
        ],
    )?;
    check_report(&out)?;
    check_studies(&out)
}

/// `configs/default.toml` with a validation split (the studies need one), written under
/// `target/qat-report/`: the smoke run then covers the sensitivity and mixed-precision studies too.
fn studies_config() -> Result<std::path::PathBuf> {
    let root = cargo::workspace_root().context("no workspace root")?;
    let base = root.join("configs/default.toml");
    let text = std::fs::read_to_string(&base)
        .with_context(|| format!("cannot read {}", base.display()))?;
    ensure!(
        text.contains("\n[data]\n"),
        "{} has no [data] table",
        base.display()
    );
    let text = text.replacen("\n[data]\n", "\n[data]\nvalidation = 256\n", 1);
    let dir = root.join("target/qat-report");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("smoke-studies.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The studies' part of the report: a sensitivity table, a mixed-precision search whose choice and
/// uniform widths were QAT-trained, exported (`model_mixed.qat8`) and timed.
fn check_studies(dir: &Path) -> Result<()> {
    let r = Report::read(dir)?;
    ensure!(r.sensitivity.is_some(), "report has no sensitivity table");
    let m = r
        .mixed_precision
        .as_ref()
        .context("report has no mixed-precision result")?;
    let points = (m
        .uniform
        .iter()
        .map(|u| (format!("uniform W{}A{}", u.weight_bits, u.act_bits), u.qat)))
    .chain(
        m.search
            .chosen
            .as_ref()
            .map(|_| ("mixed".to_string(), m.chosen_qat)),
    );
    let mut n = 0;
    for (what, q) in points {
        let q = q.with_context(|| format!("{what}: not QAT-trained"))?;
        ensure!(
            (0.0..=100.0).contains(&q.int8) && (0.0..=100.0).contains(&q.fake_quant),
            "{what}: QAT top-1 {} / {} outside [0, 100]",
            q.fake_quant,
            q.int8
        );
        ensure!(
            q.int8_us.is_some_and(|us| us > 0.0),
            "{what}: no measured int8 latency"
        );
        n += 1;
    }
    ensure!(
        m.search.chosen.is_none() || dir.join("model_mixed.qat8").exists(),
        "the chosen assignment's model_mixed.qat8 is missing"
    );
    eprintln!("[smoke] studies OK: sensitivity table, {n} QAT-trained mixed-precision points");
    Ok(())
}

/// Validates a report directory written by the pipeline: `report.json` read as the typed
/// [`Report`], its tables and per-layer agreements, and the plots it lists as written.
pub fn check_report(dir: &Path) -> Result<()> {
    let r = Report::read(dir)?;
    for name in REQUIRED_ROWS {
        let row = r
            .result(name)
            .with_context(|| format!("report has no `{name}` row"))?;
        ensure!(
            (0.0..=1.0).contains(&row.accuracy),
            "row `{name}`: accuracy {} outside [0, 1]",
            row.accuracy
        );
    }
    let agree = r.agreement.int8_vs_fake_quant;
    ensure!(
        (0.0..=1.0).contains(&agree),
        "agreement {agree} outside [0, 1]"
    );
    ensure!(
        r.dataset.train > 0 && r.dataset.test > 0,
        "report names no dataset size"
    );
    let mut n_layers = 0;
    let mut sim = 1f64;
    for (key, fid) in [
        ("fidelity", &r.fidelity),
        ("fidelity_low_bit", &r.fidelity_low_bit),
    ] {
        ensure!(
            !fid.layers.is_empty(),
            "report has no per-layer `{key}` table"
        );
        n_layers += fid.layers.len();
        for l in &fid.layers {
            if l.isolated.within_1_lsb < MIN_LAYER_WITHIN_1_LSB {
                bail!(
                    "{key}, layer {}: only {:.2}% of integer outputs within 1 LSB of the simulation",
                    l.node,
                    100.0 * l.isolated.within_1_lsb
                );
            }
        }
        let a = fid
            .outputs
            .first()
            .with_context(|| format!("{key} has no output agreement"))?
            .argmax_vs_simulation;
        if a < MIN_ARGMAX_AGREEMENT {
            bail!("{key}: int8 vs simulation argmax agreement {a:.4} < {MIN_ARGMAX_AGREEMENT}");
        }
        sim = sim.min(a);
    }
    // The trained (libtorch) model vs the export's simulation, node by node.
    let mut worst_node = 1f64;
    let tvs = &r.torch_vs_simulation;
    for (key, nodes) in [("main", &tvs.main), ("low_bit", &tvs.low_bit)] {
        ensure!(
            !nodes.is_empty(),
            "report has no torch_vs_simulation.{key} table"
        );
        for n in nodes {
            if n.within_one < MIN_LAYER_WITHIN_1_LSB {
                bail!(
                    "torch_vs_simulation.{key}, node {}: only {:.2}% of libtorch fake-quant codes within 1 of the simulation",
                    n.node,
                    100.0 * n.within_one
                );
            }
            worst_node = worst_node.min(n.within_one);
        }
    }
    ensure!(
        r.rounding.len() == 4,
        "`rounding` must hold both modes for both bit widths"
    );
    for x in &r.rounding {
        let ok = match (x.agreement, &x.refused) {
            (Some(a), None) => (0.0..=1.0).contains(&a),
            (None, Some(_)) => !x.exported,
            _ => false,
        };
        ensure!(
            ok,
            "rounding {} at W{}A{}: need an agreement in [0, 1] or, for a mode not exported, a refusal",
            x.rounding,
            x.weight_bits,
            x.act_bits
        );
    }
    let deployed = check_deployed(&r)?;
    let causes = r
        .causes
        .as_ref()
        .context("report has no per-layer causes")?;
    ensure!(
        !causes.layers.is_empty() && !r.fixes.is_empty(),
        "report has an empty causes or fixes table"
    );
    // Plots are optional (they need a system font); the ones the report lists must exist.
    ensure!(
        dir.join("report.md").exists(),
        "report is missing report.md"
    );
    for f in &r.plots.written {
        ensure!(
            dir.join(f).exists(),
            "report lists plot {f}, which is missing"
        );
    }
    let plots = match &r.plots.skipped {
        None => format!("{} plot files", r.plots.written.len()),
        Some(why) => format!("plots skipped ({why})"),
    };
    eprintln!(
        "[smoke] report OK: {} rows, {n_layers} layers within 1 LSB, int8 vs simulation argmax ≥ {sim:.4}, \
         vs libtorch fake quant {agree:.4}; libtorch vs simulation ≥ {:.2}% of codes within 1 on every node; \
         {deployed}; {plots}",
        r.results.len(),
        100.0 * worst_node
    );
    Ok(())
}

/// The deployed table: skipped with a reason and empty, or one row per model and runtime, each
/// refused with a reason or measured; a runtime computes its own target's simulation code for code
/// (every output code equal, argmax agreement 100%).
fn check_deployed(r: &Report) -> Result<String> {
    let d = &r.deployed;
    if let Some(why) = &d.skipped {
        ensure!(
            d.rows.is_empty(),
            "deployed table skipped ({why}) but has rows"
        );
        return Ok(format!("deployed table skipped ({why})"));
    }
    ensure!(
        d.rows.len() == 6,
        "deployed table: {} rows, expected 3 runtimes × 2 models",
        d.rows.len()
    );
    let mut measured = 0;
    for row in &d.rows {
        let what = format!(
            "deployed W{}A{} {} in {}",
            row.weight_bits, row.act_bits, row.format, row.runtime
        );
        match (
            &row.refused,
            row.top1,
            row.argmax_agreement,
            row.equal_codes,
        ) {
            (Some(why), None, None, None) => ensure!(!why.is_empty(), "{what}: empty refusal"),
            (None, Some(top1), Some(agree), Some(equal)) => {
                ensure!((0.0..=1.0).contains(&top1), "{what}: top-1 {top1}");
                let all = row.tensors_equal.unwrap_or(equal);
                ensure!(
                    equal == 1.0 && agree == 1.0 && all == 1.0,
                    "{what}: {:.4}% of output codes and {:.4}% of argmaxes equal the {} simulation",
                    100.0 * equal,
                    100.0 * agree,
                    row.target
                );
                measured += 1;
            }
            _ => bail!("{what}: need a refusal or top-1, agreement and equal codes"),
        }
    }
    Ok(format!(
        "{measured} deployed runs bit-exact with their target's simulation"
    ))
}
