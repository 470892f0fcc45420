//! The two PTQ failure causes on hand-made layers whose answers are known: channel range spread,
//! outlier ratio (with the histogram marking the planted outlier), and weight SQNR computed by hand.

use qat_export::analysis::{AnalysisError, WeightAnalysisOptions, analyze_layer, analyze_weights};
use qat_export::ir::{BatchNorm, Conv2d, FloatGraph, Linear};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn range_spread_of_the_three_channels() {
    // Three output rows of a linear layer with the ranges [−2.3, 2.1], [−0.7, 0.5], [−4.7, 3.8].
    let w = vec![
        -2.3, 2.1, 0.4, -1.0, //
        -0.7, 0.5, 0.1, 0.0, //
        -4.7, 3.8, 1.2, -3.3,
    ];
    let mut g = FloatGraph::new("spread");
    let x = g.input("x", &[4]);
    let fc = g.linear("fc", x, Linear::new(w, [3, 4]));
    g.output("y", fc);
    let a = analyze_weights(&g, &WeightAnalysisOptions::default()).unwrap();
    assert_eq!(a.layers.len(), 1);
    let l = &a.layers[0];
    assert_eq!((l.node.as_str(), l.op.as_str()), ("fc", "Linear"));
    assert_eq!(l.weight_shape, vec![3, 4]);
    let ranges: Vec<(f32, f32)> = l.channels.iter().map(|c| (c.min, c.max)).collect();
    assert_eq!(ranges, vec![(-2.3, 2.1), (-0.7, 0.5), (-4.7, 3.8)]);
    // widest range 8.5 over the narrowest 1.2; symmetric: 4.7 / 0.7
    assert!(close(l.range_spread.unwrap(), 8.5 / 1.2, 1e-5), "{l:?}");
    assert!(close(l.max_abs_spread.unwrap(), 4.7 / 0.7, 1e-5), "{l:?}");
    assert_eq!(l.dead_channels, 0);
    // the narrow channel is what per-tensor scales lose: per channel is better at both widths
    for s in &l.sqnr {
        assert!(
            s.per_channel_db.unwrap() > s.per_tensor_db.unwrap() + 1.0,
            "{s:?}"
        );
    }
    let md = a.to_markdown();
    assert!(md.contains("| fc | Linear | 3 | 7.08 | 6.71 |"), "{md}");
}

#[test]
fn a_planted_outlier_sets_the_ratio_and_is_marked() {
    // 4 channels × 500 weights; magnitudes cycle 0.025, 0.05, 0.075, 0.1 with alternating signs, so
    // the top ranks of |w| below the outlier are all 0.1; one weight is 2.5.
    let mut w: Vec<f32> = (0..2000)
        .map(|i| {
            let m = 0.025 * (1 + i % 4) as f32;
            if i % 2 == 0 { m } else { -m }
        })
        .collect();
    w[1234] = 2.5;
    let opts = WeightAnalysisOptions {
        histogram_bins: 50,
        ..WeightAnalysisOptions::default()
    };
    let l = analyze_layer("planted", &w, 4, &opts).unwrap();
    // P99.9 sits between ranks 1997 and 1998 of 2000: both 0.1
    assert_eq!(l.percentile_abs, 0.1);
    assert_eq!(l.max_abs, 2.5);
    assert!(close(l.outlier_ratio.unwrap(), 25.0, 1e-5), "{l:?}");
    assert_eq!(l.outlier_count, 1);
    assert_eq!(l.outliers.len(), 1);
    let o = l.outliers[0];
    assert_eq!((o.channel, o.index, o.value), (2, 1234, 2.5));
    // histogram over [−2.5, 2.5], 0.1 wide bins: the outlier alone in the last bin, marked
    let h = &l.histogram;
    assert_eq!((h.lo, h.hi, h.outlier_threshold), (-2.5, 2.5, 0.1));
    assert_eq!(h.counts.iter().sum::<u64>(), 2000);
    assert_eq!(h.counts[49], 1);
    assert_eq!(h.outlier_counts[49], 1);
    assert_eq!(h.outlier_counts.iter().sum::<u64>(), 1);
    // every inlier is within ±0.1, i.e. in the two bins around 0 (and their neighbours' edges)
    assert_eq!(h.counts[23..27].iter().sum::<u64>(), 1999);
    // channel 2 holds the outlier: its range dwarfs the others
    assert_eq!(l.channels[2].max, 2.5);
    assert!(close(l.max_abs_spread.unwrap(), 25.0, 1e-5));
}

#[test]
fn weight_sqnr_computed_by_hand() {
    // Two channels A = [7, −3.2], B = [0.7, −0.23] at 4 bits (narrow grid [−7, 7]).
    // Per tensor S = 7/7 = 1: ŵ = [7, −3, 1, 0]; noise 0 + 0.04 + 0.09 + 0.0529 = 0.1829.
    // Per channel S_A = 1, S_B = 0.1: ŵ_B = [0.7, −0.2]; noise 0.04 + 0 + 0.0009 = 0.0409.
    // Signal 49 + 10.24 + 0.49 + 0.0529 = 59.7829.
    let w = [7.0, -3.2, 0.7, -0.23];
    let opts = WeightAnalysisOptions {
        sqnr_bits: vec![4],
        ..WeightAnalysisOptions::default()
    };
    let l = analyze_layer("hand", &w, 2, &opts).unwrap();
    let s = l.sqnr[0];
    assert_eq!(s.bits, 4);
    let pt = 10.0 * (59.7829f64 / 0.1829).log10();
    let pc = 10.0 * (59.7829f64 / 0.0409).log10();
    assert!(close(s.per_tensor_db.unwrap(), pt, 1e-4), "{s:?} vs {pt}");
    assert!(close(s.per_channel_db.unwrap(), pc, 1e-4), "{s:?} vs {pc}");
}

#[test]
fn weights_are_analyzed_after_the_export_bn_fold() {
    // W = [1, 2] (two 1×1×1 channels), γ = [2, 1], σ = [2, 0.5] → folded [1, 4]
    let conv = Conv2d::new(vec![1.0, 2.0], [2, 1, 1, 1]).with_batch_norm(BatchNorm {
        gamma: vec![2.0, 1.0],
        beta: vec![1.0, 0.0],
        mean: vec![0.5, 1.0],
        var: vec![4.0, 0.25],
        eps: 0.0,
    });
    let mut g = FloatGraph::new("bn");
    let x = g.input("x", &[1, 1, 1]);
    let c = g.conv2d("conv", x, conv);
    g.output("y", c);
    let l = &analyze_weights(&g, &WeightAnalysisOptions::default())
        .unwrap()
        .layers[0];
    assert!(l.bn_folded);
    let ranges: Vec<(f32, f32)> = l.channels.iter().map(|c| (c.min, c.max)).collect();
    assert_eq!(ranges, vec![(1.0, 1.0), (4.0, 4.0)]);
    // single-weight channels have range 0: excluded from the range spread, not from max |W|
    assert_eq!((l.dead_channels, l.range_spread), (2, None));
    assert_eq!(l.max_abs_spread, Some(4.0));
    // one weight per channel: per channel is exact at any width
    assert_eq!(l.sqnr[0].per_channel_db, None);
}

#[test]
fn bad_input_is_a_typed_error_naming_the_layer() {
    let nan = analyze_layer("l1", &[1.0, f32::NAN], 1, &WeightAnalysisOptions::default());
    assert!(
        matches!(&nan, Err(AnalysisError::NonFinite { layer, .. }) if layer == "l1"),
        "{nan:?}"
    );
    let shape = analyze_layer("l2", &[1.0, 2.0, 3.0], 2, &WeightAnalysisOptions::default());
    assert!(
        matches!(&shape, Err(AnalysisError::BadWeights { layer, len: 3, out_channels: 2 }) if layer == "l2"),
        "{shape:?}"
    );
    for opts in [
        WeightAnalysisOptions {
            histogram_bins: 0,
            ..Default::default()
        },
        WeightAnalysisOptions {
            outlier_percentile: 100.0,
            ..Default::default()
        },
        WeightAnalysisOptions {
            sqnr_bits: vec![9],
            ..Default::default()
        },
    ] {
        let e = analyze_layer("l3", &[1.0], 1, &opts);
        assert!(
            matches!(e, Err(AnalysisError::InvalidOption { .. })),
            "{e:?}"
        );
    }
}
