//! Random small graphs (conv, depthwise, linear, add, concat, pools; ReLU/ReLU6): the exported
//! `Int8Model`, run by the runtime, computes what the simulation computes — every code of every
//! layer, in isolation and end to end.

mod common;

use common::{GenOptions, assert_exact, batch, random_cnn, rng};
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
    }
    assert_exact(&rep, &format!("seed {seed}"));
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

/// Cross-check of the runtime on export's random graphs: every kernel path this CPU supports
/// produces the same codes as the reference path for every tensor (requantized uint8 is exact
/// against the reference, never approximately equal).
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
