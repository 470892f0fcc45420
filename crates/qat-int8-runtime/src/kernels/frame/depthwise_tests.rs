//! Tests of the depthwise frame: the border table and the padded-input path.

use proptest::prelude::*;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::Target;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The border table lists, row by row, the tap rows that resolving each border pixel
    /// gives (the path taken by layers too large for a table), and only border pixels.
    #[test]
    fn border_table_matches_resolving_each_pixel(
        h in 1usize..9, w in 1usize..9, c in 1usize..5,
        kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..3,
        dh in 1usize..3, dw in 1usize..3, pad in proptest::array::uniform4(0usize..3),
    ) {
        let extent = |n: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize| {
            (n + p0 + p1).checked_sub(d * (k - 1) + 1).map(|v| v / s + 1)
        };
        let (Some(ho), Some(wo)) = (
            extent(h, kh, sh, dh, pad[0], pad[2]),
            extent(w, kw, sw, dw, pad[1], pad[3]),
        ) else {
            return Ok(());
        };
        let Some(path) = KernelPath::optimized().next() else { return Ok(()) };
        let weights = vec![1i8; c * kh * kw];
        let bias = vec![0i32; c];
        let m = [QuantizedMultiplier::from_f64(0.25).unwrap()];
        let layer = LayerSpec {
            weights: &weights, bias: &bias, multipliers: &m, input_zero_point: 3,
            output_zero_point: 0, lo: 0, hi: 255, target: Target::Qat, reals: None,
        };
        let shape = DepthwiseShape {
            kernel: [kh, kw], stride: [sh, sw], dilation: [dh, dw], padding: pad,
            in_hwc: [h, w, c], out_hwc: [ho, wo, c],
        };
        let plan = DepthwisePlan::new(path, shape, &layer).unwrap();
        prop_assert!(!plan.border_start.is_empty());
        let sample = vec![0u8; h * w * c];
        for oh in 0..ho {
            let mut table = Vec::new();
            plan.push_border_taps(&sample, oh, &mut table);
            let mut each = Vec::new();
            let (lo, hi) = plan.interior(oh);
            for ow in 0..wo {
                if lo < hi && (lo..hi).contains(&ow) {
                    continue;
                }
                plan.push_taps(&sample, oh, ow, &mut each);
            }
            prop_assert_eq!(&table, &each, "row {}", oh);
        }
    }

    /// The padded-input path and the border path (tap lists, `Z1` row) give the same
    /// accumulators and codes, on every optimized path, whatever the padding and stride.
    #[test]
    fn padded_input_matches_border_path(
        h in 1usize..9, w in 1usize..9, c in 1usize..150,
        kh in 1usize..4, kw in 1usize..4, sh in 1usize..3, sw in 1usize..3,
        pad in proptest::array::uniform4(0usize..3), n in 1usize..3,
        z1 in any::<u8>(), seed in any::<u64>(),
    ) {
        let extent = |n: usize, k: usize, s: usize, p0: usize, p1: usize| {
            (n + p0 + p1).checked_sub(k).map(|v| v / s + 1)
        };
        let (Some(ho), Some(wo)) = (
            extent(h, kh, sh, pad[0], pad[2]),
            extent(w, kw, sw, pad[1], pad[3]),
        ) else {
            return Ok(());
        };
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let weights: Vec<i8> = (0..c * kh * kw).map(|_| next() as i8).collect();
        let bias: Vec<i32> = (0..c).map(|_| (next() % 20001) as i32 - 10000).collect();
        let m: Vec<QuantizedMultiplier> = (0..c)
            .map(|_| QuantizedMultiplier::from_f64(1e-4 + (next() % 1000) as f64 * 1e-3).unwrap())
            .collect();
        let input: Vec<u8> = (0..n * h * w * c).map(|_| next() as u8).collect();
        let shape = DepthwiseShape {
            kernel: [kh, kw], stride: [sh, sw], dilation: [1, 1], padding: pad,
            in_hwc: [h, w, c], out_hwc: [ho, wo, c],
        };
        for path in KernelPath::optimized().filter(|p| p.is_supported_here()) {
            for target in Target::ALL {
                let layer = LayerSpec {
                    weights: &weights, bias: &bias, multipliers: &m, input_zero_point: z1 as i32,
                    output_zero_point: 7, lo: 0, hi: 255, target, reals: None,
                };
                let padded = DepthwisePlan::new(path, shape, &layer).unwrap();
                if padded.padded.is_none() {
                    // Not a small-input layer: nothing to compare.
                    continue;
                }
                let mut border = DepthwisePlan::new(path, shape, &layer).unwrap();
                border.padded = None;
                let len = n * ho * wo * c;
                let (mut a32, mut b32) = (vec![0i32; len], vec![0i32; len]);
                let (mut a8, mut b8) = (vec![0u8; len], vec![0u8; len]);
                padded.run_i32(&input, n, &mut a32);
                border.run_i32(&input, n, &mut b32);
                padded.run(&input, n, &mut a8);
                border.run(&input, n, &mut b8);
                prop_assert_eq!(a32, b32, "{} {}", path, target);
                prop_assert_eq!(a8, b8, "{} {}", path, target);
            }
        }
    }
}
