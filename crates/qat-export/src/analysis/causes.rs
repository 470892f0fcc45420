//! The two reasons post-training quantization fails on light models (whitepaper §3.1, Krishnamoorthi
//! 2018; Nagel et al. 2019, fig. 2), measured per layer on the weights that export quantizes — BN
//! already folded by [`fold_batch_norm`]:
//!
//! 1. **Output channels with very different ranges.** Under one per-tensor scale a narrow channel
//!    gets only a few of the grid's levels: with channel ranges `[−2.3, 2.1]`, `[−0.7, 0.5]` and
//!    `[−4.7, 3.8]`, the 8-bit per-tensor step is `4.7/127 ≈ 0.037`, so the middle channel spans
//!    about 32 codes instead of 254. Measured by the **range spread**
//!    `max_c (max W[c] − min W[c]) / min_c (max W[c] − min W[c])` (channels whose range is 0 are
//!    excluded and counted in `dead_channels`) and by the symmetric variant the narrow grid actually
//!    sees, `max_c max|W[c]| / min_c max|W[c]|`.
//! 2. **Rare outlier weights that stretch the range.** Measured by the **outlier ratio**
//!    `max|W| / P99.9(|W|)`, where `P_p` is the `p`-th percentile with linear interpolation between
//!    closest ranks (NumPy's default: sorted `x`, position `h = p/100·(n − 1)`,
//!    `P = x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋+1] − x[⌊h⌋])`).
//!
//! What both cost is the **weight SQNR** `10·log10(Σ w² / Σ (w − ŵ)²)` of the fake-quantized weights
//! `ŵ`, per tensor against per channel, at each requested bit width, with exactly the export's
//! quantizer ([`quantize_weights`]: symmetric narrow range `[−(2^(b−1)−1), 2^(b−1)−1]`, `Z = 0`).
//!
//! For plots, every layer also carries its per-channel `[min, max]` (the whitepaper's per-channel
//! range figure) and a histogram of its weights over `[−max|W|, max|W|]` with the part beyond the
//! percentile marked.
//!
//! ```
//! use qat_export::analysis::{analyze_weights, WeightAnalysisOptions};
//! use qat_export::ir::{FloatGraph, Linear};
//! let mut g = FloatGraph::new("fc");
//! let x = g.input("x", &[2]);
//! // two output rows: ranges [−0.5, 1.0] (1.5) and [−0.1, 0.2] (0.3)
//! let fc = g.linear("fc", x, Linear::new(vec![1.0, -0.5, 0.2, -0.1], [2, 2]));
//! g.output("y", fc);
//! let a = analyze_weights(&g, &WeightAnalysisOptions::default())?;
//! let l = &a.layers[0];
//! assert_eq!(l.node, "fc");
//! assert!((l.range_spread.unwrap() - 5.0).abs() < 1e-6);
//! assert!(l.sqnr[0].per_channel_db.unwrap() > l.sqnr[0].per_tensor_db.unwrap());
//! # Ok::<(), qat_export::analysis::AnalysisError>(())
//! ```

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use crate::fidelity::sqnr;
use crate::ir::{FloatGraph, FloatOp, WeightQuant, WeightScheme};
use crate::passes::bn_fold::fold_batch_norm;
use crate::passes::weights::quantize_weights;

/// Options of [`analyze_weights`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightAnalysisOptions {
    /// Histogram bins over `[−max|W|, max|W|]`, 1..=4096 (default 64).
    pub histogram_bins: usize,
    /// The percentile `p` of `|W|` that separates outliers, in (0, 100) (default 99.9).
    pub outlier_percentile: f64,
    /// At most this many outliers (largest `|w|` first) are listed per layer (default 16); all are
    /// counted.
    pub max_listed_outliers: usize,
    /// Bit widths of the SQNR table, each 2..=8 (default `[8, 4]`).
    pub sqnr_bits: Vec<u32>,
}

impl Default for WeightAnalysisOptions {
    fn default() -> Self {
        Self {
            histogram_bins: 64,
            outlier_percentile: 99.9,
            max_listed_outliers: 16,
            sqnr_bits: vec![8, 4],
        }
    }
}

impl WeightAnalysisOptions {
    fn validate(&self) -> Result<(), AnalysisError> {
        let bad = |what, reason: String| Err(AnalysisError::InvalidOption { what, reason });
        if !(1..=4096).contains(&self.histogram_bins) {
            return bad(
                "histogram_bins",
                format!("{} not in 1..=4096", self.histogram_bins),
            );
        }
        if !(self.outlier_percentile > 0.0 && self.outlier_percentile < 100.0) {
            return bad(
                "outlier_percentile",
                format!("{} not in (0, 100)", self.outlier_percentile),
            );
        }
        if let Some(b) = self.sqnr_bits.iter().find(|b| !(2..=8).contains(*b)) {
            return bad("sqnr_bits", format!("{b} not in 2..=8"));
        }
        Ok(())
    }
}

/// The real range of one output channel's weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelRange {
    /// Smallest weight.
    pub min: f32,
    /// Largest weight.
    pub max: f32,
}

/// A histogram of one layer's weights, with the outliers marked.
///
/// Bin `i` covers `[lo + i·δ, lo + (i+1)·δ)` with `δ = (hi − lo)/bins`; the last bin also holds `hi`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightHistogram {
    /// Left edge, `−max|W|` (−1 for an all-zero layer).
    pub lo: f32,
    /// Right edge, `max|W|` (1 for an all-zero layer).
    pub hi: f32,
    /// Weights per bin.
    pub counts: Vec<u64>,
    /// Of `counts[i]`, the weights with `|w| > outlier_threshold`.
    pub outlier_counts: Vec<u64>,
    /// The percentile `P_p(|W|)` above which a weight is an outlier.
    pub outlier_threshold: f32,
}

/// One outlier weight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightOutlier {
    /// Output channel.
    pub channel: usize,
    /// Flat index in the layer's weight array (OHWI or `[out, in]`).
    pub index: usize,
    /// The (folded) weight.
    pub value: f32,
}

/// Weight SQNR at one bit width, per tensor and per channel (`None`: no quantization noise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SqnrAtBits {
    /// Bit width.
    pub bits: u32,
    /// `10·log10(Σw²/Σ(w − ŵ)²)` with one scale for the tensor.
    pub per_tensor_db: Option<f64>,
    /// The same with one scale per output channel.
    pub per_channel_db: Option<f64>,
}

/// The analysis of one conv or linear layer (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerWeightAnalysis {
    /// Node name.
    pub node: String,
    /// Op kind (`Conv2d`, `DepthwiseConv2d`, `Linear`).
    pub op: String,
    /// Weight shape (OHWI or `[out, in]`).
    pub weight_shape: Vec<usize>,
    /// Whether batch norm was folded into these weights.
    pub bn_folded: bool,
    /// `[min, max]` of every output channel.
    pub channels: Vec<ChannelRange>,
    /// `max_c range[c] / min_c range[c]` over channels with a non-zero range (`None`: fewer than
    /// one such channel).
    pub range_spread: Option<f64>,
    /// `max_c max|W[c]| / min_c max|W[c]|` over channels that are not all zero.
    pub max_abs_spread: Option<f64>,
    /// Channels whose weights are all equal (range 0), excluded from the spreads.
    pub dead_channels: usize,
    /// `max|W|`.
    pub max_abs: f32,
    /// `P_p(|W|)` with `p` = [`WeightAnalysisOptions::outlier_percentile`].
    pub percentile_abs: f32,
    /// `max|W| / P_p(|W|)` (`None` when the percentile is 0).
    pub outlier_ratio: Option<f64>,
    /// Weights with `|w| > P_p(|W|)`.
    pub outlier_count: usize,
    /// The largest of them (at most `max_listed_outliers`), largest `|w|` first.
    pub outliers: Vec<WeightOutlier>,
    /// Histogram with the outliers marked.
    pub histogram: WeightHistogram,
    /// Weight SQNR per tensor vs per channel at each of [`WeightAnalysisOptions::sqnr_bits`].
    pub sqnr: Vec<SqnrAtBits>,
}

/// The analysis of every conv and linear layer of a graph, in graph order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightAnalysis {
    /// Model name.
    pub model: String,
    /// The options used.
    pub options: WeightAnalysisOptions,
    /// Per layer.
    pub layers: Vec<LayerWeightAnalysis>,
}

/// Analyzes every conv and linear layer of `graph`, with batch norm folded as export folds it.
///
/// Errors: [`AnalysisError::Graph`] (invalid graph), [`AnalysisError::NonFinite`] (NaN/inf
/// weights after folding), [`AnalysisError::InvalidOption`], [`AnalysisError::BadWeights`].
pub fn analyze_weights(
    graph: &FloatGraph,
    opts: &WeightAnalysisOptions,
) -> Result<WeightAnalysis, AnalysisError> {
    opts.validate()?;
    graph.validate()?;
    let mut layers = Vec::new();
    for node in &graph.nodes {
        let (weights, shape, bn_folded): (Vec<f32>, Vec<usize>, bool) = match &node.op {
            FloatOp::Conv2d(c) => (
                fold_batch_norm(c).weight,
                c.weight_shape.to_vec(),
                c.batch_norm.is_some(),
            ),
            FloatOp::Linear(l) => (l.weight.clone(), l.weight_shape.to_vec(), false),
            _ => continue,
        };
        let mut a = analyze_layer(&node.name, &weights, shape[0], opts)?;
        a.op = node.op.kind().to_string();
        a.weight_shape = shape;
        a.bn_folded = bn_folded;
        layers.push(a);
    }
    Ok(WeightAnalysis {
        model: graph.name.clone(),
        options: opts.clone(),
        layers,
    })
}

/// Analyzes one weight tensor of `out_channels` contiguous rows (OHWI and `[out, in]` both keep an
/// output channel's weights together). `op` and `weight_shape` of the result are left empty
/// (`[out_channels, len/out_channels]`) for the caller to fill.
///
/// Errors: [`AnalysisError::BadWeights`] (empty, or not divisible into `out_channels` rows),
/// [`AnalysisError::NonFinite`], [`AnalysisError::InvalidOption`].
pub fn analyze_layer(
    name: &str,
    weights: &[f32],
    out_channels: usize,
    opts: &WeightAnalysisOptions,
) -> Result<LayerWeightAnalysis, AnalysisError> {
    opts.validate()?;
    if out_channels == 0 || weights.is_empty() || !weights.len().is_multiple_of(out_channels) {
        return Err(AnalysisError::BadWeights {
            layer: name.to_string(),
            len: weights.len(),
            out_channels,
        });
    }
    if weights.iter().any(|w| !w.is_finite()) {
        return Err(AnalysisError::NonFinite {
            layer: name.to_string(),
            what: "weight (BN folded)",
        });
    }
    let per = weights.len() / out_channels;
    let channels: Vec<ChannelRange> = weights
        .chunks(per)
        .map(|row| ChannelRange {
            min: row.iter().copied().fold(f32::INFINITY, f32::min),
            max: row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        })
        .collect();
    let ranges: Vec<f64> = channels
        .iter()
        .map(|c| c.max as f64 - c.min as f64)
        .collect();
    let max_abs_c: Vec<f64> = channels
        .iter()
        .map(|c| (c.max.abs().max(c.min.abs())) as f64)
        .collect();
    let dead_channels = ranges.iter().filter(|&&r| r == 0.0).count();

    let mut abs: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    abs.sort_unstable_by(f32::total_cmp);
    let max_abs = abs[abs.len() - 1];
    let percentile_abs = percentile_sorted(&abs, opts.outlier_percentile);
    let outlier_ratio = (percentile_abs > 0.0).then(|| max_abs as f64 / percentile_abs as f64);

    let mut outliers: Vec<WeightOutlier> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| w.abs() > percentile_abs)
        .map(|(index, &value)| WeightOutlier {
            channel: index / per,
            index,
            value,
        })
        .collect();
    let outlier_count = outliers.len();
    outliers.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    outliers.truncate(opts.max_listed_outliers);

    let sqnr = opts
        .sqnr_bits
        .iter()
        .map(|&bits| {
            Ok(SqnrAtBits {
                bits,
                per_tensor_db: weight_sqnr(name, weights, out_channels, bits, false)?,
                per_channel_db: weight_sqnr(name, weights, out_channels, bits, true)?,
            })
        })
        .collect::<Result<_, AnalysisError>>()?;

    Ok(LayerWeightAnalysis {
        node: name.to_string(),
        op: String::new(),
        weight_shape: vec![out_channels, per],
        bn_folded: false,
        range_spread: spread(&ranges),
        max_abs_spread: spread(&max_abs_c),
        dead_channels,
        channels,
        max_abs,
        percentile_abs,
        outlier_ratio,
        outlier_count,
        outliers,
        histogram: histogram(weights, max_abs, percentile_abs, opts.histogram_bins),
        sqnr,
    })
}

/// `max / min` over the positive entries (`None` when there is none).
fn spread(xs: &[f64]) -> Option<f64> {
    let pos = xs.iter().copied().filter(|&x| x > 0.0);
    let (lo, hi) = pos.fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    (hi > 0.0).then(|| hi / lo)
}

/// The `p`-th percentile of ascending `sorted` (non-empty), linear interpolation between closest
/// ranks (see the module docs).
///
/// ```
/// use qat_export::analysis::causes::percentile_sorted;
/// assert_eq!(percentile_sorted(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
/// assert_eq!(percentile_sorted(&[0.0, 10.0], 25.0), 2.5);
/// assert_eq!(percentile_sorted(&[0.0, 10.0], 100.0), 10.0);
/// ```
pub fn percentile_sorted(sorted: &[f32], p: f64) -> f32 {
    let Some(&last) = sorted.last() else {
        return 0.0;
    };
    let h = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let i = h.floor() as usize;
    match sorted.get(i + 1) {
        Some(&next) => {
            let lo = sorted[i] as f64;
            (lo + (h - i as f64) * (next as f64 - lo)) as f32
        }
        None => last,
    }
}

fn histogram(weights: &[f32], max_abs: f32, threshold: f32, bins: usize) -> WeightHistogram {
    let m = if max_abs > 0.0 { max_abs } else { 1.0 };
    let (lo, hi) = (-m, m);
    let mut counts = vec![0u64; bins];
    let mut outlier_counts = vec![0u64; bins];
    let scale = bins as f64 / (hi as f64 - lo as f64);
    for &w in weights {
        let i = (((w as f64 - lo as f64) * scale).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
        if w.abs() > threshold {
            outlier_counts[i] += 1;
        }
    }
    WeightHistogram {
        lo,
        hi,
        counts,
        outlier_counts,
        outlier_threshold: threshold,
    }
}

/// Weight SQNR of the export's symmetric narrow quantizer at `bits`, per channel or per tensor.
fn weight_sqnr(
    name: &str,
    w: &[f32],
    out_channels: usize,
    bits: u32,
    per_channel: bool,
) -> Result<Option<f64>, AnalysisError> {
    let scheme = if per_channel {
        WeightScheme::SymmetricPerChannel
    } else {
        WeightScheme::SymmetricPerTensor
    };
    let q = quantize_weights(w, out_channels, WeightQuant { scheme, bits }).map_err(|source| {
        AnalysisError::Quant {
            layer: name.to_string(),
            source,
        }
    })?;
    let (sig, noise) = w
        .iter()
        .zip(q.dequantized())
        .fold((0f64, 0f64), |(s, n), (&x, y)| {
            let d = x as f64 - y as f64;
            (s + x as f64 * x as f64, n + d * d)
        });
    Ok(sqnr(sig, noise))
}
