//! The average-pool output stage: from the int32 sum of a window's codes to one output code, with
//! a single rounding.
//!
//! The fake-quant simulation of an average pool is `fake_quant_out(mean(S_in·(q − Z_in)))`: one
//! rounding, onto the output grid. The integer twin is
//!
//! `q_out = clamp(Z_out + round(M'·Σ(q − Z_in)), qmin_out, qmax_out)`, `M' = S_in/(S_out·count)`,
//!
//! with `M'` a qat-core [`QuantizedMultiplier`] (one per distinct window size `count`, precomputed)
//! applied by [`QuantizedMultiplier::apply_rounded_once`] (exact i64 product, one rounding, ties
//! away from zero). Averaging and rescaling merge into one multiplier, so the result is the
//! correctly rounded real value except within `2^−30` relative of a tie — within one LSB of the
//! simulation everywhere, equal to it off ties. (The runtime before this stage rounded the mean
//! first and requantized it, two roundings, up to `S_in/S_out` LSBs off.)
//!
//! When input and output params are identical the stage is TFLite's uint8 average,
//! `q = (Σq + count/2)/count`: the exactly rounded mean (ties up), already single-rounded and
//! exact, so it is kept for bit compatibility with existing models.
//!
//! The clamp is the output tensor's own grid `[qmin, qmax]` (`[0, 2^b − 1]` for b-bit
//! activations), not `[0, 255]`.
//!
//! That is the `qat` target's arithmetic. For the other targets the stage carries qat-core's
//! [`AverageStage`] ([`AvgPoolRescale::for_target`]): TFLite's int8 average (`tflite`, and
//! `xnnpack`, whose LiteRT runs TFLite's kernel), onnxruntime's global or window pool (`ort`).
//! A `tflite` model whose pool rescales (params differ, which TFLite's kernel cannot do and the
//! exporter refuses) keeps the single-rounding stage above.

use qat_core::QuantError;
use qat_core::QuantParams;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::{AverageStage, Target};

/// The geometry of a pooling window op over one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    /// Input `[H, W, C]`.
    pub in_hwc: [usize; 3],
    /// Output `[Ho, Wo, C]`.
    pub out_hwc: [usize; 3],
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`; padded cells are not part of a window.
    pub padding: [usize; 4],
}

/// The merged average-and-rescale multiplier `M' = S_in/(S_out·count)` for one window size,
/// computed in f64 (`S_out·count` is exact there) and quantized by
/// [`QuantizedMultiplier::from_f64`].
///
/// Errors only when `S_in/(S_out·count) ≥ 2^30`; a valid model has `S_in/S_out < 2^30`
/// (checked by validation), hence a valid `M'` for every `count ≥ 1`. Very small `M'` flush to 0,
/// which is exact: they mean `|M'·Σ(q − Z_in)| ≤ 255·S_in/S_out < 2^−23`, which rounds to 0.
/// Example (`tests::worked_examples`): `S_in = 0.5`, `S_out = 0.25`, `count = 4` give
/// `M' = 0.5/(0.25·4) = 0.5`.
pub fn pool_multiplier(
    qi: &QuantParams,
    qo: &QuantParams,
    count: usize,
) -> Result<QuantizedMultiplier, QuantError> {
    QuantizedMultiplier::from_f64(qi.scale() as f64 / (qo.scale() as f64 * count.max(1) as f64))
}

/// Number of in-bounds cells of a pooling window along one axis: output position `o`, stride `s`,
/// leading padding `pad`, kernel extent `k`, input extent `n`:
/// `min(o·s − pad + k, n) − max(o·s − pad, 0)` (0 if negative).
///
/// Example (`tests::worked_examples`): kernel 3, stride 1, padding 1 over 5 rows: position 0
/// covers rows −1..2 (2 cells, row −1 is padding), position 2 rows 1..4 (3), position 4 rows
/// 3..6 (2, row 5 is padding).
#[inline]
pub fn window_extent(o: usize, s: usize, pad: usize, k: usize, n: usize) -> usize {
    let start = (o * s) as isize - pad as isize;
    let end = (start + k as isize).min(n as isize);
    (end - start.max(0)).max(0) as usize
}

/// The average-pool output stage for one op (see the [module docs](self)): zero points, the
/// output grid and, for different params, `M'` for every window size the op produces.
#[derive(Debug, Clone, PartialEq)]
pub struct AvgPoolRescale {
    /// `Z_in`.
    pub zi: i32,
    /// `Z_out`.
    pub zo: i32,
    /// `qmin` of the output grid.
    pub lo: i32,
    /// `qmax` of the output grid.
    pub hi: i32,
    /// `None` for identical input/output params (TFLite's `(Σq + count/2)/count`); otherwise the
    /// input and output params, to derive `M'` for a count missing from `table`.
    params: Option<(QuantParams, QuantParams)>,
    /// `(count, M')`, sorted by count.
    table: Vec<(usize, QuantizedMultiplier)>,
    /// The target's own average (from the window's cells in row-major order), which replaces
    /// [`Self::average`] when set ([`Self::for_target`]).
    pub stage: Option<AverageStage>,
}

impl AvgPoolRescale {
    /// The stage for windows of the given sizes (duplicates allowed) between `qi` and `qo`.
    ///
    /// Example (`tests::worked_examples`): `S_in = 0.1, Z_in = 10`; `S_out = 0.3, Z_out = 2` on
    /// a 4-bit grid `[0, 15]`. Codes 12, 13, 14, 15: `Σ(q − Z_in) = 14`, mean 0.35 real = 1.1667
    /// output steps → 1, + 2 = 3. Codes 200 ×4: 19 real = 63.3 steps + 2 → clamped to
    /// `qmax = 15`, not 255.
    pub fn new(
        qi: &QuantParams,
        qo: &QuantParams,
        counts: impl IntoIterator<Item = usize>,
    ) -> Result<Self, QuantError> {
        let (params, table) = if qi == qo {
            (None, Vec::new())
        } else {
            let mut counts: Vec<usize> = counts.into_iter().map(|c| c.max(1)).collect();
            counts.sort_unstable();
            counts.dedup();
            let table = counts
                .into_iter()
                .map(|c| pool_multiplier(qi, qo, c).map(|m| (c, m)))
                .collect::<Result<_, _>>()?;
            // S_in/S_out itself must be representable (count = 1, the largest M').
            pool_multiplier(qi, qo, 1)?;
            (Some((*qi, *qo)), table)
        };
        Ok(Self {
            zi: qi.zero_point(),
            zo: qo.zero_point(),
            lo: qo.qmin(),
            hi: qo.qmax(),
            params,
            table,
            stage: None,
        })
    }

    /// The same stage for a model of `target`: unchanged for `qat`; otherwise qat-core's
    /// [`AverageStage`] between `qi` and `qo` (`global`: onnxruntime takes its global-pool
    /// kernel). Errors: a pool the target's runtime cannot compute (XNNPACK's and onnxruntime's
    /// limits), except a `tflite` pool with its own output params, which keeps the `qat` stage.
    pub fn for_target(
        mut self,
        target: Target,
        qi: &QuantParams,
        qo: &QuantParams,
        global: bool,
    ) -> Result<Self, QuantError> {
        self.stage = match (target, AverageStage::new(target, qi, qo, global)) {
            (Target::Qat, _) | (Target::Tflite, Err(_)) => None,
            (_, stage) => Some(stage?),
        };
        Ok(self)
    }

    /// The stage for an `AvgPool2d` op: one `M'` per distinct window size
    /// `window_extent(oh, …)·window_extent(ow, …)` (padded cells excluded from the count).
    pub fn avg_pool2d(
        qi: &QuantParams,
        qo: &QuantParams,
        g: &PoolGeom,
    ) -> Result<Self, QuantError> {
        let PoolGeom {
            in_hwc,
            out_hwc,
            kernel,
            stride,
            padding,
        } = *g;
        let extents = |o: usize, axis: usize, n: usize| {
            let mut v: Vec<usize> = (0..o)
                .map(|i| window_extent(i, stride[axis], padding[axis], kernel[axis], n))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let rows = extents(out_hwc[0], 0, in_hwc[0]);
        let cols = extents(out_hwc[1], 1, in_hwc[1]);
        let counts = rows
            .iter()
            .flat_map(|&r| cols.iter().map(move |&c| r * c))
            .collect::<Vec<_>>();
        Self::new(qi, qo, counts)
    }

    /// The stage for a `GlobalAvgPool` op over an `[H, W, C]` input (`count = H·W`).
    pub fn global(
        qi: &QuantParams,
        qo: &QuantParams,
        in_hwc: [usize; 3],
    ) -> Result<Self, QuantError> {
        Self::new(qi, qo, [in_hwc[0] * in_hwc[1]])
    }

    /// `M'` for windows of `count` cells (`None` for identical params).
    pub fn multiplier(&self, count: usize) -> Option<QuantizedMultiplier> {
        let (qi, qo) = self.params.as_ref()?;
        match self.table.binary_search_by_key(&count, |e| e.0) {
            Ok(i) => Some(self.table[i].1),
            // Not one of the op's window sizes: derive it (cannot fail for validated params).
            Err(_) => pool_multiplier(qi, qo, count).ok(),
        }
    }

    /// [`AvgPoolRescale::average`] of many windows of the same `count` cells (`out[i]` from
    /// `sums[i]`), the multiplier looked up once (the global pool's channels); `average` is this
    /// with one window.
    #[inline(always)]
    pub fn average_many(&self, sums: &[i32], count: usize, out: &mut [u8]) {
        let n = count as i32;
        let (lo, hi, zo) = (self.lo, self.hi, self.zo);
        match (count, self.params.is_some(), self.multiplier(count)) {
            (0, _, _) | (_, true, None) => out.fill(zo.clamp(lo, hi) as u8),
            (_, false, _) => {
                // `(s + n/2) / n` through an `f64` division, which vectorizes (no integer
                // division per channel): for `0 ≤ v < 2^31` and `n ≥ 1` the correctly rounded
                // `v / n` truncates to `⌊v / n⌋` (an integer quotient is exact; otherwise the
                // quotient is at least `1/n` from the next integer, far above half an ulp).
                let (half, nf) = (n / 2, n as f64);
                for (o, &s) in out.iter_mut().zip(sums) {
                    let q = ((s + half) as f64 / nf) as i32;
                    *o = q.clamp(lo, hi) as u8;
                }
            }
            (_, true, Some(m)) => {
                let zin = n.wrapping_mul(self.zi);
                for (o, &s) in out.iter_mut().zip(sums) {
                    let q = m.apply_rounded_once(s.wrapping_sub(zin));
                    *o = q.saturating_add(zo).clamp(lo, hi) as u8;
                }
            }
        }
    }

    /// One output code from the sum of a window's `count` input codes.
    ///
    /// Identical params: `q = (Σq + count/2)/count` (TFLite; round half up, `Σq ≥ 0`).
    /// Otherwise: `q = clamp(Z_out + round(M'·(Σq − count·Z_in)), qmin, qmax)` with
    /// [`QuantizedMultiplier::apply_rounded_once`]. `|Σq − count·Z_in| ≤ 255·2^23 < 2^31` for the
    /// validated window limit. An empty window (`count = 0`, excluded by validation) gives
    /// `Z_out` clamped (real 0).
    #[inline]
    pub fn average(&self, sum_codes: i32, count: usize) -> u8 {
        let mut out = [0u8];
        self.average_many(&[sum_codes], count, &mut out);
        out[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qat_core::QuantRange;

    #[test]
    fn counts_cover_every_window_of_a_padded_pool() {
        let q = |s, z| QuantParams::new(s, z, QuantRange::unsigned(8).unwrap()).unwrap();
        // 5×4 input, 3×3 kernel, stride 2, padding 1 all round → 3×2 output:
        // rows {0..2, 1..4, 3..5} → extents 2, 3, 2; cols {−1..2, 1..4} → 2, 3
        let g = PoolGeom {
            in_hwc: [5, 4, 1],
            out_hwc: [3, 2, 1],
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1, 1, 1],
        };
        let r = AvgPoolRescale::avg_pool2d(&q(0.1, 3), &q(0.2, 5), &g).unwrap();
        let counts: Vec<usize> = r.table.iter().map(|e| e.0).collect();
        assert_eq!(counts, vec![4, 6, 9]);
        for &c in &counts {
            assert_eq!(
                r.multiplier(c),
                Some(pool_multiplier(&q(0.1, 3), &q(0.2, 5), c).unwrap())
            );
        }
        // a count outside the table is derived, not an error
        assert_eq!(
            r.multiplier(7),
            Some(pool_multiplier(&q(0.1, 3), &q(0.2, 5), 7).unwrap())
        );
        let same = AvgPoolRescale::global(&q(0.1, 3), &q(0.1, 3), [2, 2, 1]).unwrap();
        assert!(same.params.is_none() && same.multiplier(4).is_none());
    }

    #[test]
    fn worked_examples() {
        let q = |s, z, bits| QuantParams::new(s, z, QuantRange::unsigned(bits).unwrap()).unwrap();
        assert_eq!(
            pool_multiplier(&q(0.5, 0, 8), &q(0.25, 0, 8), 4)
                .unwrap()
                .to_f64(),
            0.5
        );
        assert_eq!(window_extent(0, 1, 1, 3, 5), 2);
        assert_eq!(window_extent(2, 1, 1, 3, 5), 3);
        assert_eq!(window_extent(4, 1, 1, 3, 5), 2);
        let r = AvgPoolRescale::new(&q(0.1, 10, 8), &q(0.3, 2, 4), [4]).unwrap();
        assert_eq!(r.average(12 + 13 + 14 + 15, 4), 3);
        assert_eq!(r.average(800, 4), 15);
    }

    #[test]
    fn unrepresentable_ratio_is_an_error() {
        let qi = QuantParams::new(1.0, 0, QuantRange::unsigned(8).unwrap()).unwrap();
        let qo = QuantParams::new(1e-10, 0, QuantRange::unsigned(8).unwrap()).unwrap();
        assert!(AvgPoolRescale::global(&qi, &qo, [64, 64, 1]).is_err());
    }
}
