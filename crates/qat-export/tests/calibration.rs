//! PTQ calibration: observers give the documented ranges; errors are typed; PTQ exports a model
//! whose report renders as JSON, a table and Markdown.

mod common;

use common::{batch, rng, uniform};
use ndarray::{ArrayD, Axis};
use qat_core::{PerChannelParams, QuantRange, array::fake_quant_per_channel};
use qat_export::calibrate::RangeObserver;
use qat_export::ir::{Activation, FloatOp, Linear};
use qat_export::{
    CalibrationError, CalibrationMethod, FidelityReport, FloatGraph, GraphError, PtqConfig,
    calibrate, fidelity_report, ptq,
};

/// x[4] → output (the input node is observed directly).
fn passthrough() -> FloatGraph {
    let mut g = FloatGraph::new("pass");
    let x = g.input("x", &[4]);
    g.output("y", x);
    g
}

fn arr(v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(vec![1, v.len()], v.to_vec()).unwrap()
}

#[test]
fn min_max_ema_and_percentile_ranges() {
    let g = passthrough();
    let b1 = arr(&[-1.0, 0.0, 2.0, 1.0]);
    let b2 = arr(&[-3.0, 0.5, 1.0, 0.0]);
    let range = |m| {
        let c = calibrate(&g, [b1.view(), b2.view()], m).unwrap();
        let r = c.nodes[0].act.range.unwrap();
        (r.min, r.max)
    };
    assert_eq!(range(CalibrationMethod::MinMax), (-3.0, 2.0));
    // EMA: first batch initializes, then 0.75·r + 0.25·batch
    assert_eq!(range(CalibrationMethod::Ema { decay: 0.75 }), (-1.5, 1.75));
    // percentile 100 = per-batch min/max, averaged over the batches
    assert_eq!(
        range(CalibrationMethod::Percentile { percentile: 100.0 }),
        (-2.0, 1.5)
    );
}

#[test]
fn percentile_clips_outliers() {
    let mut o = RangeObserver::new(CalibrationMethod::Percentile { percentile: 99.0 });
    let mut v: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
    v[100] = 1000.0; // one outlier
    o.observe(arr(&v).view());
    let r = o.range().unwrap();
    // 99th percentile of 101 values: position 99 → 0.99
    assert!((r.max - 0.99).abs() < 1e-6, "{r:?}");
    assert!((r.min - 0.01).abs() < 1e-6, "{r:?}");
}

#[test]
fn calibration_errors_are_typed() {
    let g = passthrough();
    let b = arr(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        calibrate(&g, std::iter::empty(), CalibrationMethod::MinMax),
        Err(CalibrationError::NoBatches)
    );
    assert!(matches!(
        calibrate(&g, [b.view()], CalibrationMethod::Ema { decay: 1.0 }),
        Err(CalibrationError::Method { .. })
    ));
    assert!(matches!(
        calibrate(
            &g,
            [b.view()],
            CalibrationMethod::Percentile { percentile: 40.0 }
        ),
        Err(CalibrationError::Method { .. })
    ));
    let wrong = ArrayD::<f32>::zeros(vec![1, 3]);
    assert!(matches!(
        calibrate(&g, [wrong.view()], CalibrationMethod::MinMax),
        Err(CalibrationError::Graph(GraphError::InputShape { .. }))
    ));
    let nan = arr(&[f32::NAN; 4]);
    assert!(matches!(
        calibrate(&g, [nan.view()], CalibrationMethod::MinMax),
        Err(CalibrationError::NoFiniteValues { node }) if node == "x"
    ));
}

/// x[6] → fc (ReLU6) → fc → output, random weights.
fn mlp(seed: u64) -> FloatGraph {
    let r = &mut rng(seed);
    let mut g = FloatGraph::new("mlp");
    let x = g.input("x", &[6]);
    let h = g.linear(
        "hidden",
        x,
        Linear::new(uniform(r, 8 * 6, -1.0, 1.0), [8, 6])
            .with_bias(uniform(r, 8, -0.5, 0.5))
            .with_activation(Activation::Relu6),
    );
    let y = g.linear("out", h, Linear::new(uniform(r, 3 * 8, -0.5, 0.5), [3, 8]));
    g.output("logits", y);
    g
}

#[test]
fn ptq_exports_and_reports() {
    let g = mlp(7);
    let r = &mut rng(8);
    let cal: Vec<_> = (0..3).map(|_| batch(r, 16, &[6])).collect();
    let plan = ptq(&g, cal.iter().map(|b| b.view()), &PtqConfig::default()).unwrap();
    // every node calibrated, ReLU6 output range within [0, 6]
    assert!(plan.graph.nodes.iter().all(|n| n.act.range.is_some()));
    let h = plan.graph.nodes[1].act.range.unwrap();
    assert!(h.min >= 0.0 && h.max <= 6.0);

    // the simulation graph's weights are qat-core's per-channel fake quant of the weights
    if let (FloatOp::Linear(orig), FloatOp::Linear(sim)) = (
        &plan.graph.nodes[1].op,
        &plan.simulation_graph().nodes[1].op,
    ) {
        let w = ndarray::ArrayView2::from_shape((8, 6), &orig.weight).unwrap();
        let max_abs: Vec<f32> = w
            .axis_iter(Axis(0))
            .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let pc = PerChannelParams::symmetric(&max_abs, QuantRange::signed_narrow(8).unwrap(), 0)
            .unwrap();
        let fq = fake_quant_per_channel(w, &pc).unwrap();
        assert_eq!(fq.iter().copied().collect::<Vec<_>>(), sim.weight);
    } else {
        panic!("node 1 is not linear");
    }

    let test = batch(r, 32, &[6]);
    let rep = fidelity_report(&plan, [test.view()]).unwrap();
    assert_eq!(rep.samples, 32);
    assert_eq!(rep.layers.len(), 3);
    assert!(rep.min_within_1_lsb() >= 0.99, "{}", rep.to_table());
    assert!(
        rep.outputs[0].argmax_vs_simulation >= 0.9,
        "{}",
        rep.to_table()
    );
    let json = rep.to_json();
    // serde_json may change the last digit of an f64; compare everything else exactly
    let back = serde_json::from_str::<FidelityReport>(&json).unwrap();
    assert_eq!(back.outputs, rep.outputs);
    for (a, b) in back.layers.iter().zip(&rep.layers) {
        assert_eq!((&a.node, &a.op, a.elements), (&b.node, &b.op, b.elements));
        assert_eq!(a.isolated.max_abs_lsb, b.isolated.max_abs_lsb);
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
            (x, y) => x == y,
        };
        assert!(close(a.sqnr_vs_float_db, b.sqnr_vs_float_db));
        assert!(close(a.end_to_end.sqnr_db, b.end_to_end.sqnr_db));
    }
    let table = rep.to_table();
    let md = rep.to_markdown();
    for name in ["x", "hidden", "out", "logits"] {
        assert!(table.contains(name) && md.contains(name), "{table}\n{md}");
    }
    assert!(md.contains("|---|"));
}

#[test]
fn random_mlps_agree_with_the_simulation() {
    for seed in 0..20 {
        let g = mlp(seed);
        let r = &mut rng(seed + 50);
        let cal = batch(r, 32, &[6]);
        for cfg in [
            PtqConfig::default(),
            PtqConfig {
                activation_bits: Some(5),
                weight_quant: Some(qat_export::ir::WeightQuant {
                    scheme: qat_export::ir::WeightScheme::AsymmetricPerTensor,
                    bits: 5,
                }),
                ..PtqConfig::default()
            },
        ] {
            let plan = ptq(&g, [cal.view()], &cfg).unwrap();
            let rep = fidelity_report(&plan, [batch(r, 32, &[6]).view()]).unwrap();
            assert!(
                rep.min_within_1_lsb() >= 0.99,
                "seed {seed}\n{}",
                rep.to_table()
            );
        }
    }
}

#[test]
fn two_outputs_are_emitted_and_reported() {
    use qat_export::ir::{Conv2d, Pool2d};
    let r = &mut rng(3);
    let mut g = FloatGraph::new("two-heads");
    let x = g.input("x", &[4, 4, 2]);
    let c = g.conv2d(
        "conv",
        x,
        Conv2d::new(uniform(r, 3 * 9 * 2, -0.5, 0.5), [3, 3, 3, 2])
            .with_padding([1, 1, 1, 1])
            .with_activation(Activation::Relu),
    );
    let p = g.max_pool("pool", c, Pool2d::square(2, 2));
    g.output("features", p);
    let gp = g.global_avg_pool("gap", c);
    let y = g.linear("fc", gp, Linear::new(uniform(r, 4 * 3, -1.0, 1.0), [4, 3]));
    g.output("logits", y);
    let cal = batch(r, 16, &[4, 4, 2]);
    let model = qat_export::ptq_export(&g, [cal.view()], &PtqConfig::default()).unwrap();
    assert_eq!(model.outputs.len(), 2);
    let names: Vec<&str> = model
        .outputs
        .iter()
        .map(|&t| model.tensors[t].name.as_str())
        .collect();
    assert_eq!(names, vec!["features", "logits"]);
    let plan = ptq(&g, [cal.view()], &PtqConfig::default()).unwrap();
    let rep = fidelity_report(&plan, [batch(r, 8, &[4, 4, 2]).view()]).unwrap();
    assert_eq!(rep.outputs.len(), 2);
    assert!(rep.min_within_1_lsb() >= 0.99, "{}", rep.to_table());
    // max pool and global average pool share the conv's params
    assert_eq!(plan.act_params[p.0], plan.act_params[c.0]);
    assert_eq!(plan.act_params[gp.0], plan.act_params[c.0]);
}
