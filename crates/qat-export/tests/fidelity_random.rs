//! Random small graphs (conv, depthwise, linear, add, concat, pools; ReLU/ReLU6): the exported
//! `Int8Model`, run by the runtime, computes what the simulation computes — every code of every
//! layer, in isolation and end to end.

mod common;

use common::{GenOptions, batch, random_cnn, rng};
use qat_export::ir::{WeightQuant, WeightScheme};
use qat_export::{
    CalibrationMethod, ExportOptions, FidelityReport, PtqConfig, fidelity_report, ptq,
};

fn check(seed: u64, opts: &GenOptions, cfg: &PtqConfig) -> FidelityReport {
    let g = random_cnn(seed, opts);
    let shape = g.validate().expect("valid")[0].clone();
    let r = &mut rng(seed ^ 0xfeed);
    let cal = [batch(r, 8, &shape), batch(r, 8, &shape)];
    let plan = ptq(&g, cal.iter().map(|b| b.view()), cfg).expect("ptq");
    let test = batch(r, 8, &shape);
    let rep = fidelity_report(&plan, [test.view()]).expect("report");
    for l in &rep.layers {
        assert_eq!(l.bias_saturated, 0, "seed {seed}: layer {}", l.node);
        assert!(
            l.isolated.exact == 1.0 && l.end_to_end.exact == 1.0,
            "seed {seed}: layer {} ({}) differs from the simulation\n{}",
            l.node,
            l.op,
            rep.to_table()
        );
    }
    for o in &rep.outputs {
        assert_eq!(o.argmax_vs_simulation, 1.0, "seed {seed}: {}", o.output);
    }
    rep
}

#[test]
fn random_cnns_8bit_per_channel() {
    let mut values = 0;
    for seed in 0..24 {
        let rep = check(seed, &GenOptions::default(), &PtqConfig::default());
        values += rep.layers.iter().map(|l| l.elements).sum::<usize>();
    }
    assert!(values > 10_000, "{values} values compared");
}

#[test]
fn random_cnns_other_weight_schemes() {
    for (i, scheme) in [
        WeightScheme::SymmetricPerTensor,
        WeightScheme::AsymmetricPerTensor,
    ]
    .into_iter()
    .enumerate()
    {
        for seed in 100..110 {
            let cfg = PtqConfig {
                weight_quant: Some(WeightQuant { scheme, bits: 8 }),
                method: if i == 0 {
                    CalibrationMethod::Ema { decay: 0.5 }
                } else {
                    CalibrationMethod::Percentile { percentile: 99.9 }
                },
                ..PtqConfig::default()
            };
            check(seed, &GenOptions::default(), &cfg);
        }
    }
}

#[test]
fn random_cnns_low_bits() {
    // Concat and average pools included: the runtime rescales into the b-bit output grid.
    let opts = GenOptions::default();
    for seed in 200..216 {
        let bits = 4 + (seed % 4) as u32;
        let cfg = PtqConfig {
            weight_quant: Some(WeightQuant {
                scheme: WeightScheme::SymmetricPerChannel,
                bits,
            }),
            activation_bits: Some(bits),
            export: ExportOptions::default(),
            ..PtqConfig::default()
        };
        let rep = check(seed, &opts, &cfg);
        assert!(rep.layers.iter().all(|l| l.bits == bits));
    }
}

/// Fidelity figures over many random graphs (for docs/export.md and the closing note):
/// `cargo test -p qat-export --release --test fidelity_random -- --ignored --nocapture`.
#[test]
#[ignore]
fn fidelity_figures() {
    use std::collections::BTreeMap;
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
    let wq = |scheme, bits| Some(WeightQuant { scheme, bits });
    let configs: Vec<(&str, GenOptions, PtqConfig)> = vec![
        (
            "8-bit, per-channel weights, min/max",
            GenOptions::default(),
            PtqConfig::default(),
        ),
        (
            "8-bit, per-tensor weights, EMA 0.5",
            GenOptions::default(),
            PtqConfig {
                weight_quant: wq(WeightScheme::SymmetricPerTensor, 8),
                method: CalibrationMethod::Ema { decay: 0.5 },
                ..PtqConfig::default()
            },
        ),
        (
            "8-bit, asymmetric uint8 weights, percentile 99.9",
            GenOptions::default(),
            PtqConfig {
                weight_quant: wq(WeightScheme::AsymmetricPerTensor, 8),
                method: CalibrationMethod::Percentile { percentile: 99.9 },
                ..PtqConfig::default()
            },
        ),
        (
            "8-bit, per-channel, avg pools with their own params",
            GenOptions::default(),
            PtqConfig {
                export: qat_export::ExportOptions {
                    avg_pool_own_params: true,
                    ..qat_export::ExportOptions::default()
                },
                ..PtqConfig::default()
            },
        ),
        (
            "4-bit weights and activations, per-channel",
            GenOptions::default(),
            PtqConfig {
                weight_quant: wq(WeightScheme::SymmetricPerChannel, 4),
                activation_bits: Some(4),
                ..PtqConfig::default()
            },
        ),
    ];
    println!(
        "| config | graphs | values | isolated ≤1 LSB % | exact % | max |Δ| | worst layer % | end-to-end ≤1 LSB % | exact % | max |Δ| | worst layer % | argmax int8=sim % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut by_op: BTreeMap<String, (Stats, Stats)> = BTreeMap::new();
    for (ci, (name, opts, cfg)) in configs.iter().enumerate() {
        let mut iso: Stats = (0, 0, 0, 0, 1.0);
        let mut e2e: Stats = (0, 0, 0, 0, 1.0);
        let (mut agree, mut samples) = (0.0, 0usize);
        let graphs = 200u64;
        for seed in 0..graphs {
            let g = random_cnn(seed, opts);
            let shape = g.validate().expect("valid")[0].clone();
            let r = &mut rng(seed ^ 0xfeed);
            let cal = [batch(r, 8, &shape), batch(r, 8, &shape)];
            let plan = ptq(&g, cal.iter().map(|b| b.view()), cfg).expect("ptq");
            let test = batch(r, 16, &shape);
            let rep = fidelity_report(&plan, [test.view()]).expect("report");
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
}

/// Cross-check of the runtime on export's random graphs: every kernel path this CPU supports
/// produces the same codes as the reference path for every tensor (tolerance policy, docs/design.md:
/// requantized uint8 is exact versus the reference).
#[test]
fn every_kernel_path_matches_the_reference_on_exported_graphs() {
    use qat_int8_runtime::{Executor, KernelPath};
    for seed in 300..312 {
        let g = random_cnn(seed, &GenOptions::default());
        let shape = g.validate().expect("valid")[0].clone();
        let r = &mut rng(seed);
        let cal = batch(r, 8, &shape);
        let model = qat_export::ptq_export(&g, [cal.view()], &PtqConfig::default()).expect("ptq");
        let x = batch(r, 4, &shape);
        let reference = Executor::with_path(&model, KernelPath::Reference)
            .and_then(|mut e| e.run_all(x.view()))
            .expect("reference run");
        for path in KernelPath::ALL
            .into_iter()
            .filter(|p| p.is_supported_here())
        {
            let got = Executor::with_path(&model, path)
                .and_then(|mut e| e.run_all(x.view()))
                .expect("run");
            for (t, (a, b)) in got.iter().zip(&reference).enumerate() {
                assert_eq!(
                    a, b,
                    "seed {seed}, {path:?}, tensor {}",
                    model.tensors[t].name
                );
            }
        }
    }
}
