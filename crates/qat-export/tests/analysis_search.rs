//! Mixed-precision search on toy sensitivity tables whose optimum is computed by hand, and the Pareto
//! front against brute-force enumeration.

use qat_export::analysis::Baseline;
use qat_export::analysis::{
    AnalysisError, BitAssignment, CostModel, LayerCostTable, LayerInfo, Operand, ParetoPoint,
    SearchMethod, SearchOptions, SensitivityTable, evaluate, pareto_front, search,
};

const BASE: f64 = 90.0;

fn layer(name: &str, weights: u64, macs: u64) -> LayerInfo {
    LayerInfo {
        name: name.into(),
        op: "Conv2d".into(),
        weights,
        macs,
    }
}

/// A table over `bits` with the given weight drops per layer (same order as `bits`) and zero
/// activation drops.
fn weight_table(bits: &[u32], rows: &[(&str, &[f64])]) -> SensitivityTable {
    let names: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
    let mut t = SensitivityTable::new("toy", Baseline::Float, BASE, bits, &names).unwrap();
    for (name, drops) in rows {
        for (&b, &d) in bits.iter().zip(drops.iter()) {
            t.record(name, Operand::Weights, b, BASE - d).unwrap();
            t.record(name, Operand::Activations, b, BASE).unwrap();
        }
    }
    t
}

fn weights_only(method: Option<SearchMethod>) -> SearchOptions {
    SearchOptions {
        act_bits: Some(vec![8]),
        method,
        ..SearchOptions::default()
    }
}

fn bits_of(p: &ParetoPoint) -> Vec<u32> {
    p.assignment
        .layers
        .iter()
        .map(|l| l.weight_bits.unwrap())
        .collect()
}

fn assert_front_shape(front: &[ParetoPoint]) {
    assert!(!front.is_empty());
    for w in front.windows(2) {
        assert!(
            w[0].cost < w[1].cost && w[0].predicted_drop > w[1].predicted_drop,
            "not sorted / dominated: {:?} then {:?}",
            (w[0].cost, w[0].predicted_drop),
            (w[1].cost, w[1].predicted_drop)
        );
    }
}

/// Three layers; packed weight bytes at 8/4/2 bits: A 100/50/25, B 200/100/50, C 40/20/10.
/// Weight drops: A 0/1/5, B 0/0.2/0.6, C 0/2/8.
fn three_layers() -> (SensitivityTable, Vec<LayerInfo>) {
    let t = weight_table(
        &[8, 4, 2],
        &[
            ("A", &[0.0, 1.0, 5.0]),
            ("B", &[0.0, 0.2, 0.6]),
            ("C", &[0.0, 2.0, 8.0]),
        ],
    );
    (
        t,
        vec![layer("A", 100, 0), layer("B", 200, 0), layer("C", 40, 0)],
    )
}

#[test]
fn exact_search_finds_the_hand_computed_optimum() {
    let (t, layers) = three_layers();
    let opts = weights_only(None);
    // Budget 200 B: B at 2 bits (50 B) leaves 150 for A + C at 8 bits (140): cost 190, drop 0.6.
    // B at 4 bits (100) leaves 100: A4 + C8 = 90 → drop 1.2; B at 8 cannot fit with A and C.
    let r = search(&t, &layers, &CostModel::WeightBytes, 200.0, &opts).unwrap();
    assert_eq!(r.method, SearchMethod::Exact);
    let best = r.chosen.unwrap();
    assert_eq!(bits_of(&best), vec![8, 2, 8]);
    assert_eq!(best.cost, 190.0);
    // (drops are stored as baseline − accuracy: 90 − (90 − 0.6) is 0.6 within an ulp of 90)
    assert!((best.predicted_drop - 0.6).abs() < 1e-12);
    // Budget 150: B2 + A4 + C8 = 140, drop 1.6 (B4 leaves 50 for A + C: A2 + C4, drop 7.2).
    let r = search(&t, &layers, &CostModel::WeightBytes, 150.0, &opts).unwrap();
    let best = r.chosen.unwrap();
    assert_eq!(bits_of(&best), vec![4, 2, 8]);
    assert!((best.predicted_drop - 1.6).abs() < 1e-12, "{best:?}");
    assert_eq!(best.cost, 140.0);
    // activation bits stay at 8 (the only width offered)
    assert!(best.assignment.layers.iter().all(|l| l.act_bits == Some(8)));
}

#[test]
fn greedy_front_on_the_toy_table_by_hand() {
    // From all-8 (340 B): ΔD/ΔC is smallest for B 8→4 (0.2/100), then B 4→2 (0.4/50), A 8→4
    // (1/50), C 8→4 (2/20), A 4→2 (4/25), C 4→2 (6/10).
    let (t, layers) = three_layers();
    let (m, front) = pareto_front(
        &t,
        &layers,
        &CostModel::WeightBytes,
        &weights_only(Some(SearchMethod::Greedy)),
    )
    .unwrap();
    assert_eq!(m, SearchMethod::Greedy);
    let got: Vec<(f64, f64)> = front
        .iter()
        .map(|p| (p.cost, (p.predicted_drop * 10.0).round() / 10.0))
        .collect();
    assert_eq!(
        got,
        vec![
            (85.0, 13.6),
            (95.0, 7.6),
            (120.0, 3.6),
            (140.0, 1.6),
            (190.0, 0.6),
            (240.0, 0.2),
            (340.0, 0.0)
        ]
    );
    assert_front_shape(&front);
}

#[test]
fn greedy_can_miss_a_point_the_exact_search_finds() {
    // X: 8 bits 60 B, 2 bits 10 B, drop 3 at 2 bits (ΔD/ΔC = 0.06);
    // Y: 8 bits 50 B, 2 bits 30 B, drop 1 (0.05). Greedy moves Y first and never visits X2 Y8.
    let t = weight_table(&[8, 2], &[("X", &[0.0, 3.0]), ("Y", &[0.0, 1.0])]);
    let layers = vec![layer("X", 60, 0), layer("Y", 50, 0)];
    let cost = CostModel::Table(vec![
        LayerCostTable {
            layer: "X".into(),
            entries: vec![(8, 8, 60.0), (2, 8, 10.0)],
        },
        LayerCostTable {
            layer: "Y".into(),
            entries: vec![(8, 8, 50.0), (2, 8, 30.0)],
        },
    ]);
    let pts = |m| {
        let (_, f) = pareto_front(&t, &layers, &cost, &weights_only(Some(m))).unwrap();
        assert_front_shape(&f);
        f.iter()
            .map(|p| (p.cost, p.predicted_drop))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pts(SearchMethod::Exact),
        vec![(40.0, 4.0), (60.0, 3.0), (90.0, 1.0), (110.0, 0.0)]
    );
    assert_eq!(
        pts(SearchMethod::Greedy),
        vec![(40.0, 4.0), (90.0, 1.0), (110.0, 0.0)]
    );
    // at a budget of 60 the exact answer is X at 2 bits, Y at 8
    let r = search(&t, &layers, &cost, 60.0, &weights_only(None)).unwrap();
    assert_eq!(bits_of(r.chosen.as_ref().unwrap()), vec![2, 8]);
}

/// SplitMix64 for test data.
fn next(s: &mut u64) -> f64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// Every configuration's (cost, drop), by enumeration.
fn brute_force(t: &SensitivityTable, layers: &[LayerInfo], cost: &CostModel) -> Vec<(f64, f64)> {
    let bits = &t.bits;
    let k = bits.len() * bits.len();
    let total = k.pow(layers.len() as u32);
    (0..total)
        .map(|mut code| {
            let mut a = BitAssignment::uniform(layers, 8, 8);
            for lb in &mut a.layers {
                let c = code % k;
                code /= k;
                lb.weight_bits = Some(bits[c / bits.len()]);
                lb.act_bits = Some(bits[c % bits.len()]);
            }
            let p = evaluate(t, layers, cost, &a).unwrap();
            (p.cost, p.predicted_drop)
        })
        .collect()
}

#[test]
fn exact_front_equals_brute_force_and_greedy_is_never_better() {
    let bits = [8, 4, 2];
    for seed in 0..6u64 {
        let s = &mut seed.clone();
        let layers: Vec<LayerInfo> = (0..4)
            .map(|i| {
                layer(
                    &format!("l{i}"),
                    1 + (next(s) * 500.0) as u64,
                    1 + (next(s) * 5000.0) as u64,
                )
            })
            .collect();
        let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
        let mut t = SensitivityTable::new("rand", Baseline::Int8, BASE, &bits, &names).unwrap();
        for l in &names {
            for op in [Operand::Weights, Operand::Activations] {
                // drops grow as bits shrink, with noise
                let mut d = 0.0;
                for &b in &bits {
                    d += next(s) * (9 - b) as f64;
                    t.record(l, op, b, BASE - d).unwrap();
                }
            }
        }
        let cost = CostModel::BitOps;
        let all = brute_force(&t, &layers, &cost);
        let dominated = |c: f64, d: f64| {
            all.iter()
                .any(|&(c2, d2)| c2 <= c && d2 <= d - 1e-9 || c2 < c && d2 <= d + 1e-9)
        };
        let opts = SearchOptions::default();
        let (m, exact) = pareto_front(&t, &layers, &cost, &opts).unwrap();
        assert_eq!(m, SearchMethod::Exact);
        assert_front_shape(&exact);
        // every exact point is a real configuration that nothing beats…
        for p in &exact {
            let e = evaluate(&t, &layers, &cost, &p.assignment).unwrap();
            assert!(
                (e.cost - p.cost).abs() < 1e-9
                    && (e.predicted_drop - p.predicted_drop).abs() < 1e-9
            );
            assert!(!dominated(p.cost, p.predicted_drop), "seed {seed}: {p:?}");
        }
        // …and every non-dominated configuration is on it
        let on_front = all.iter().filter(|&&(c, d)| !dominated(c, d));
        for &(c, d) in on_front {
            assert!(
                exact
                    .iter()
                    .any(|p| (p.cost - c).abs() < 1e-9 && (p.predicted_drop - d).abs() < 1e-9),
                "seed {seed}: ({c}, {d}) missing"
            );
        }
        let (_, greedy) = pareto_front(
            &t,
            &layers,
            &cost,
            &SearchOptions {
                method: Some(SearchMethod::Greedy),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_front_shape(&greedy);
        assert_eq!(greedy.first().unwrap().cost, exact.first().unwrap().cost);
        assert_eq!(greedy.last().unwrap().cost, exact.last().unwrap().cost);
        for g in &greedy {
            // some exact point is at least as good
            assert!(exact.iter().any(|p| p.cost <= g.cost + 1e-9
                && p.predicted_drop <= g.predicted_drop + 1e-9));
        }
    }
}

#[test]
fn uniform_points_and_errors() {
    let (t, layers) = three_layers();
    let w4 = evaluate(
        &t,
        &layers,
        &CostModel::WeightBytes,
        &BitAssignment::uniform(&layers, 4, 8),
    )
    .unwrap();
    assert_eq!(w4.cost, 170.0);
    assert!((w4.predicted_drop - 3.2).abs() < 1e-12);
    // below the cheapest configuration (all at 2 bits: 85 B)
    let e = search(
        &t,
        &layers,
        &CostModel::WeightBytes,
        80.0,
        &weights_only(None),
    );
    assert_eq!(
        e.unwrap_err(),
        AnalysisError::Infeasible {
            budget: 80.0,
            cheapest: 85.0
        }
    );
    // a forced exact search with a tiny front bound fails; the automatic one falls back to greedy
    let tiny = SearchOptions {
        max_front: 2,
        ..weights_only(Some(SearchMethod::Exact))
    };
    let e = pareto_front(&t, &layers, &CostModel::WeightBytes, &tiny);
    assert!(
        matches!(e, Err(AnalysisError::FrontTooLarge { bound: 2, .. })),
        "{e:?}"
    );
    let auto = SearchOptions {
        method: None,
        ..tiny
    };
    let (m, _) = pareto_front(&t, &layers, &CostModel::WeightBytes, &auto).unwrap();
    assert_eq!(m, SearchMethod::Greedy);
    // a cell never measured
    let mut partial =
        SensitivityTable::new("p", Baseline::Float, BASE, &[8, 4], &["A".into()]).unwrap();
    partial.record("A", Operand::Weights, 8, BASE).unwrap();
    let e = pareto_front(
        &partial,
        &layers[..1],
        &CostModel::WeightBytes,
        &SearchOptions::default(),
    );
    assert!(matches!(e, Err(AnalysisError::MissingCell { .. })), "{e:?}");
}
