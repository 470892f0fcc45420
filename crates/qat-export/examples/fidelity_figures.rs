//! Fidelity figures over many random graphs (for docs/export.md): for each export configuration,
//! 200 random CNNs (conv, depthwise, linear, add, concat, pools; ReLU/ReLU6) are calibrated, exported
//! and run by the integer runtime against the export's simulation; the tables give the share of
//! outputs within 1 LSB and exact, per configuration and per op, isolated and end to end.
//!
//! ```sh
//! cargo run --release -p qat-export --example fidelity_figures
//! ```
//!
//! `QAT_EXPORT_SHOW_WORST=1` also prints the report of every layer more than 20 LSB off end to end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use common::{GenOptions, batch, random_cnn, rng};
use qat_export::CalibrationMethod::{Ema, MinMax, Percentile};
use qat_export::ir::WeightQuant;
use qat_export::ir::WeightScheme::{AsymmetricPerTensor, SymmetricPerChannel, SymmetricPerTensor};
use qat_export::{PtqConfig, fidelity_report, ptq};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    type Stats = (usize, usize, usize, u32, f64);
    fn add(s: &mut Stats, n: usize, a: &qat_export::fidelity::Agreement) {
        s.0 += n;
        s.1 += (a.within_1_lsb * n as f64).round() as usize;
        s.2 += (a.exact * n as f64).round() as usize;
        s.3 = s.3.max(a.max_abs_lsb);
        s.4 = s.4.min(a.within_1_lsb);
    }
    fn cells(s: &Stats) -> String {
        format!(
            "{:.3} | {:.3} | {} | {:.2}",
            100.0 * s.1 as f64 / s.0 as f64,
            100.0 * s.2 as f64 / s.0 as f64,
            s.3,
            100.0 * s.4
        )
    }
    // Weight scheme and bits, calibration method.
    let cfg = |scheme, bits, method| PtqConfig {
        weight_quant: Some(WeightQuant { scheme, bits }),
        method,
        ..PtqConfig::default()
    };
    let own_pool_params = PtqConfig {
        export: qat_export::ExportOptions {
            avg_pool_own_params: true,
            ..qat_export::ExportOptions::default()
        },
        ..PtqConfig::default()
    };
    let four_bit = PtqConfig {
        activation_bits: Some(4),
        ..cfg(SymmetricPerChannel, 4, MinMax)
    };
    // Every config runs on the default random CNNs.
    let configs: Vec<(&str, PtqConfig)> = vec![
        ("8-bit, per-channel weights, min/max", PtqConfig::default()),
        (
            "8-bit, per-tensor weights, EMA 0.5",
            cfg(SymmetricPerTensor, 8, Ema { decay: 0.5 }),
        ),
        (
            "8-bit, asymmetric uint8 weights, percentile 99.9",
            cfg(AsymmetricPerTensor, 8, Percentile { percentile: 99.9 }),
        ),
        (
            "8-bit, per-channel, avg pools with their own params",
            own_pool_params,
        ),
        ("4-bit weights and activations, per-channel", four_bit),
    ];
    let opts = &GenOptions::default();
    println!(
        "| config | graphs | values | isolated ≤1 LSB % | exact % | max |Δ| | worst layer % | end-to-end ≤1 LSB % | exact % | max |Δ| | worst layer % | argmax int8=sim % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut by_op: BTreeMap<String, (Stats, Stats)> = BTreeMap::new();
    for (ci, (name, cfg)) in configs.iter().enumerate() {
        let mut iso: Stats = (0, 0, 0, 0, 1.0);
        let mut e2e: Stats = (0, 0, 0, 0, 1.0);
        let (mut agree, mut samples) = (0.0, 0usize);
        let graphs = 200u64;
        for seed in 0..graphs {
            let g = random_cnn(seed, opts);
            let shape = g.validate()?[0].clone();
            let r = &mut rng(seed ^ 0xfeed);
            let cal = [batch(r, 8, &shape), batch(r, 8, &shape)];
            let plan = ptq(&g, cal.iter().map(|b| b.view()), cfg)?;
            let test = batch(r, 16, &shape);
            let rep = fidelity_report(&plan, [test.view()])?;
            for l in &rep.layers {
                if std::env::var("QAT_EXPORT_SHOW_WORST").is_ok() && l.end_to_end.max_abs_lsb > 20 {
                    println!(
                        "config {ci} seed {seed} layer {} scale {}\n{}",
                        l.node,
                        l.scale,
                        rep.to_table()
                    );
                }
                add(&mut iso, l.elements, &l.isolated);
                add(&mut e2e, l.elements, &l.end_to_end);
                if ci == 0 || (ci == 3 && l.op.contains("AvgPool")) {
                    let e = by_op
                        .entry(format!(
                            "{}{}",
                            l.op,
                            if ci == 3 { " (own params)" } else { "" }
                        ))
                        .or_insert(((0, 0, 0, 0, 1.0), (0, 0, 0, 0, 1.0)));
                    add(&mut e.0, l.elements, &l.isolated);
                    add(&mut e.1, l.elements, &l.end_to_end);
                }
            }
            for o in &rep.outputs {
                agree += o.argmax_vs_simulation * o.samples as f64;
                samples += o.samples;
            }
        }
        println!(
            "| {name} | {graphs} | {} | {} | {} | {:.2} |",
            iso.0,
            cells(&iso),
            cells(&e2e),
            100.0 * agree / samples as f64
        );
    }
    println!();
    println!("per op, first config (and pools of the own-params config):");
    println!(
        "| op | values | isolated ≤1 LSB % | exact % | max |Δ| | worst layer % | end-to-end ≤1 LSB % | exact % | max |Δ| | worst layer % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (op, (i, e)) in &by_op {
        println!("| {op} | {} | {} | {} |", i.0, cells(i), cells(e));
    }
    Ok(())
}
