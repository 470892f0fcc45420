//! The sensitivity table (probes, cells, Markdown heat-map data) and writing bit widths into a graph.

use qat_export::analysis::{
    AnalysisError, Baseline, BitAssignment, LayerBits, Operand, SENSITIVITY_BITS, SensitivityTable,
    quantizable_layers,
};
use qat_export::ir::{Conv2d, FloatGraph, FloatOp, Linear};

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

#[test]
fn probes_cover_every_cell_once_and_quantize_one_operand() {
    let mut t = SensitivityTable::new(
        "m",
        Baseline::Int8,
        91.5,
        &SENSITIVITY_BITS,
        &names(&["a", "b", "c"]),
    )
    .unwrap();
    let probes = t.probes();
    assert_eq!(probes.len(), 3 * 2 * 5);
    let mut seen = std::collections::HashSet::new();
    for p in &probes {
        assert!(seen.insert((p.layer.clone(), p.operand, p.bits)));
        let [lb] = &p.assignment.layers[..] else {
            panic!("one layer per probe")
        };
        assert_eq!(lb.layer, p.layer);
        match p.operand {
            Operand::Weights => assert_eq!((lb.weight_bits, lb.act_bits), (Some(p.bits), None)),
            Operand::Activations => {
                assert_eq!((lb.weight_bits, lb.act_bits), (None, Some(p.bits)))
            }
        }
    }
    assert!(!t.is_complete());
    assert_eq!(
        t.drop("b", Operand::Activations, 3),
        Err(AnalysisError::MissingCell {
            layer: "b".into(),
            operand: "activations",
            bits: 3
        })
    );
    for p in &probes {
        // drop = bits below 8 × (layer index + 1) × (2 for activations)
        let k = 1 + ["a", "b", "c"].iter().position(|l| *l == p.layer).unwrap();
        let f = if p.operand == Operand::Activations {
            2.0
        } else {
            1.0
        };
        t.record(
            &p.layer,
            p.operand,
            p.bits,
            91.5 - f * (k as f64) * (8 - p.bits) as f64,
        )
        .unwrap();
    }
    assert!(t.is_complete());
    assert_eq!(t.drop("c", Operand::Activations, 2).unwrap(), 36.0);
    assert_eq!(t.drop("a", Operand::Weights, 8).unwrap(), 0.0);
    let md = t.to_markdown();
    assert!(md.contains("the rest at 8 bits (baseline 91.50%)"), "{md}");
    assert!(
        md.contains("| b | weights | 0.00 | 4.00 | 8.00 | 10.00 | 12.00 |"),
        "{md}"
    );
    // JSON round trip
    let back: SensitivityTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

#[test]
fn table_errors_are_typed() {
    let l = names(&["a"]);
    let e = |r: Result<SensitivityTable, AnalysisError>| r.unwrap_err();
    assert!(matches!(
        e(SensitivityTable::new(
            "m",
            Baseline::Float,
            90.0,
            &[8, 8],
            &l
        )),
        AnalysisError::InvalidOption { what: "bits", .. }
    ));
    assert!(matches!(
        e(SensitivityTable::new("m", Baseline::Float, 90.0, &[9], &l)),
        AnalysisError::InvalidOption { .. }
    ));
    assert!(matches!(
        e(SensitivityTable::new(
            "m",
            Baseline::Float,
            90.0,
            &[8],
            &names(&["a", "a"])
        )),
        AnalysisError::Layer { .. }
    ));
    let mut t = SensitivityTable::new("m", Baseline::Float, 90.0, &[8, 4], &l).unwrap();
    assert!(matches!(
        t.record("zz", Operand::Weights, 8, 90.0),
        Err(AnalysisError::Layer { .. })
    ));
    assert!(matches!(
        t.record("a", Operand::Weights, 6, 90.0),
        Err(AnalysisError::MissingCell { bits: 6, .. })
    ));
    assert!(matches!(
        t.record("a", Operand::Weights, 8, f64::NAN),
        Err(AnalysisError::BadNumber { .. })
    ));
}

#[test]
fn bit_assignments_are_written_into_the_graph_or_refused_whole() {
    let mut g = FloatGraph::new("t");
    let x = g.input("x", &[4, 4, 1]);
    let c = g.conv2d("conv", x, Conv2d::new(vec![0.1; 2 * 3 * 3], [2, 3, 3, 1]));
    let f = g.flatten("flat", c);
    let fc = g.linear("fc", f, Linear::new(vec![0.1; 3 * 8], [3, 8]));
    g.output("y", fc);
    let layers = quantizable_layers(&g).unwrap();
    assert_eq!(
        layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["conv", "fc"]
    );
    let mut a = BitAssignment::uniform(&layers, 4, 6);
    a.layers[1].act_bits = None; // keep fc's activation bits
    a.apply(&mut g).unwrap();
    let FloatOp::Conv2d(cv) = &g.nodes[c.0].op else {
        unreachable!()
    };
    assert_eq!((cv.weight_quant.bits, g.nodes[c.0].act.bits), (4, 6));
    let FloatOp::Linear(l) = &g.nodes[fc.0].op else {
        unreachable!()
    };
    assert_eq!((l.weight_quant.bits, g.nodes[fc.0].act.bits), (4, 8));

    let before = g.clone();
    let lb = |layer: &str, w| LayerBits {
        layer: layer.into(),
        weight_bits: Some(w),
        act_bits: None,
    };
    for (bad, what) in [
        (vec![lb("conv", 2), lb("nope", 2)], "unknown layer"),
        (vec![lb("conv", 2), lb("flat", 2)], "not a conv/linear"),
        (vec![lb("conv", 2), lb("conv", 3)], "listed twice"),
        (vec![lb("conv", 2), lb("fc", 9)], "9 bits"),
    ] {
        let r = BitAssignment { layers: bad }.apply(&mut g);
        assert!(r.is_err(), "{what}");
        assert_eq!(g, before, "{what}: nothing may be written");
    }
}
