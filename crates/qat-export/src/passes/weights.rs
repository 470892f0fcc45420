//! Weight quantization, int32 bias and requantization multipliers (paper §2.1–2.4).

use ndarray::ArrayView2;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::{PerChannelParams, QuantError, QuantParams, QuantRange, Target, array};
use qat_int8_runtime::Weights;
use serde::{Deserialize, Serialize};

use crate::ir::{WeightQuant, WeightScheme};

/// Quantized weights of one layer: integer codes in the layer's layout (OHWI or `[out, in]`) and
/// their parameters, one per tensor or one per output channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedWeights {
    /// Codes, `[−(2^(b−1)−1), 2^(b−1)−1]` (symmetric) or `[0, 2^b − 1]` (asymmetric).
    pub codes: Vec<i32>,
    /// Parameters: length 1 (per tensor) or `out_channels` (per channel).
    pub params: Vec<QuantParams>,
    /// Scheme used.
    pub scheme: WeightScheme,
    /// Number of output channels (rows).
    pub out_channels: usize,
}

impl QuantizedWeights {
    /// Parameters of output channel `c` (the single entry when per tensor).
    pub fn channel(&self, c: usize) -> QuantParams {
        if self.params.len() == 1 {
            self.params[0]
        } else {
            self.params[c]
        }
    }

    /// `S_w[c]` for every output channel (expanded when per tensor).
    pub fn scales_per_channel(&self) -> Vec<f32> {
        (0..self.out_channels)
            .map(|c| self.channel(c).scale())
            .collect()
    }

    /// The fake-quantized weights `S_w[c]·(q − Z_w[c])` the simulation uses — equal to
    /// `fake_quant(W)` with the same parameters (paper §3: weights are fake-quantized after folding).
    pub fn dequantized(&self) -> Vec<f32> {
        let per = self.codes.len() / self.out_channels.max(1);
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| self.channel(i / per.max(1)).dequantize(q))
            .collect()
    }

    /// The runtime representation: `Weights::Int8` for symmetric schemes, `Weights::Uint8` with
    /// zero points for the paper's asymmetric scheme.
    pub fn to_runtime(&self) -> Weights {
        let scales = self.params.iter().map(|p| p.scale()).collect();
        match self.scheme {
            WeightScheme::SymmetricPerChannel | WeightScheme::SymmetricPerTensor => Weights::Int8 {
                data: self
                    .codes
                    .iter()
                    .map(|&q| q.clamp(-128, 127) as i8)
                    .collect(),
                scales,
            },
            WeightScheme::AsymmetricPerTensor => Weights::Uint8 {
                data: self.codes.iter().map(|&q| q.clamp(0, 255) as u8).collect(),
                scales,
                zero_points: self.params.iter().map(|p| p.zero_point()).collect(),
            },
        }
    }
}

/// Quantizes (already folded) weights laid out as `out_channels` rows.
///
/// * [`WeightScheme::SymmetricPerChannel`]: `S_w[c] = max_i |W[c,i]| / (2^(b−1) − 1)`, `Z = 0`,
///   `q = clamp(round_half_even(W·(1/S_w[c])), −(2^(b−1)−1), 2^(b−1)−1)` — qat-core's
///   `PerChannelParams::symmetric` on `QuantRange::signed_narrow(b)` and `quantize_per_channel`
///   (paper §2.1 with the narrow-range tweak; whitepaper §2.2 per channel).
/// * [`WeightScheme::SymmetricPerTensor`]: the same with one `max |W|`.
/// * [`WeightScheme::AsymmetricPerTensor`]: the paper's uint8 weights, `QuantParams::from_min_max
///   (min W, max W, 0, 2^b − 1)` (nudged so 0.0 is exact).
///
/// Degenerate case: an all-zero channel would get `S = MIN_SCALE` and make the int32 bias
/// `b/(S_in·S_w)` overflow; such a channel (its codes are 0 whatever the scale) takes the
/// tensor-wide `max |W|` instead, and an all-zero tensor takes `max |W| = 1`.
///
/// ```
/// use qat_export::ir::{WeightQuant, WeightScheme};
/// use qat_export::passes::weights::quantize_weights;
/// let w = [0.5, -1.0, 0.25, 0.1];                                 // 2 rows of 2
/// let q = quantize_weights(&w, 2, WeightQuant::default())?;
/// assert_eq!(q.codes, vec![64, -127, 127, 51]);                 // 0.5·127 = 63.5 → 64 (tie to even)
/// assert_eq!(q.scales_per_channel(), vec![1.0 / 127.0, 0.25 / 127.0]);
/// let t = quantize_weights(&w, 2, WeightQuant { scheme: WeightScheme::SymmetricPerTensor, bits: 4 })?;
/// // S = 1/7; 0.5·(1/S) = 3.4999998 in f32 → 3 (rounding happens on the f32 product)
/// assert_eq!(t.codes, vec![3, -7, 2, 1]);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn quantize_weights(
    w: &[f32],
    out_channels: usize,
    wq: WeightQuant,
) -> Result<QuantizedWeights, QuantError> {
    if out_channels == 0 || w.is_empty() || !w.len().is_multiple_of(out_channels) {
        return Err(QuantError::Empty { what: "weights" });
    }
    let per = w.len() / out_channels;
    let view = ArrayView2::from_shape((out_channels, per), w).map_err(|_| QuantError::Empty {
        what: "weights (shape)",
    })?;
    let max_abs_all = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let fallback = if max_abs_all > 0.0 { max_abs_all } else { 1.0 };
    let (codes, params) = match wq.scheme {
        WeightScheme::SymmetricPerChannel => {
            let range = QuantRange::signed_narrow(wq.bits)?;
            let max_abs: Vec<f32> = view
                .rows()
                .into_iter()
                .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())))
                .map(|m| if m > 0.0 { m } else { fallback })
                .collect();
            let pc = PerChannelParams::symmetric(&max_abs, range, 0)?;
            let q = array::quantize_per_channel(view, &pc)?;
            let params = (0..pc.len())
                .map(|c| pc.channel(c))
                .collect::<Result<_, _>>()?;
            (q.iter().copied().collect(), params)
        }
        WeightScheme::SymmetricPerTensor => {
            let p = QuantParams::symmetric(fallback, QuantRange::signed_narrow(wq.bits)?)?;
            (array::quantize(view, &p).iter().copied().collect(), vec![p])
        }
        WeightScheme::AsymmetricPerTensor => {
            let r = QuantRange::unsigned(wq.bits)?;
            let (lo, hi) = array::min_max(view).ok_or(QuantError::Empty {
                what: "weights (no finite value)",
            })?;
            let (lo, hi) = if lo == 0.0 && hi == 0.0 {
                (-1.0, 1.0)
            } else {
                (lo, hi)
            };
            let p = QuantParams::from_min_max(lo, hi, r.qmin, r.qmax)?;
            (array::quantize(view, &p).iter().copied().collect(), vec![p])
        }
    };
    Ok(QuantizedWeights {
        codes,
        params,
        scheme: wq.scheme,
        out_channels,
    })
}

/// int32 bias (paper §2.4: `S_bias = S_in·S_w`, `Z_bias = 0`):
/// `b_q[c] = saturate_i32(round_half_away(b[c] / (S_in·S_w[c])))`, computed in f64.
/// Returns the codes and how many saturated (a sign of a degenerate scale).
///
/// ```
/// use qat_export::passes::weights::quantize_bias;
/// let (b, sat) = quantize_bias(&[0.5, -0.25, 1e9], 0.5, &[0.01, 0.01, 1e-9]);
/// assert_eq!(b, vec![100, -50, i32::MAX]);
/// assert_eq!(sat, 1);
/// ```
pub fn quantize_bias(bias: &[f32], s_in: f32, w_scales: &[f32]) -> (Vec<i32>, usize) {
    let mut saturated = 0;
    let q = bias
        .iter()
        .zip(w_scales)
        .map(|(&b, &sw)| {
            let v = (b as f64 / (s_in as f64 * sw as f64)).round();
            if v > i32::MAX as f64 || v < i32::MIN as f64 {
                saturated += 1;
            }
            v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    (q, saturated)
}

/// Requantization multipliers (paper eq. 5–6): `M[c] = S_in·S_w[c]/S_out` as `M0·2^(shift − 31)`,
/// derived from the `f32` scales exactly as `target`'s runtime derives them for a conv
/// ([`Target::conv_multiplier`]: `QuantizeMultiplier` of the f64 product for `qat` and `tflite`,
/// the runtime's `f32` quotient held exactly for `ort` and `xnnpack`) or, with `fully_connected`,
/// for a fully-connected layer ([`Target::fc_multiplier`]: TFLite's per-tensor fully connected
/// multiplies the two scales in `f32`).
///
/// ```
/// use qat_core::Target;
/// use qat_export::passes::weights::requant_multipliers;
/// let m = requant_multipliers(Target::Qat, 0.5, &[0.25, 0.1], 0.25, false)?;
/// assert_eq!((m[0].multiplier(), m[0].shift()), (1 << 30, 0));   // 0.5
/// assert!((m[1].to_f64() - 0.2).abs() < 1e-8); // 0.1f32 is 0.10000000149
/// let f = requant_multipliers(Target::Ort, 0.5, &[0.1], 0.25, true)?;
/// assert_eq!(f[0].to_f32(), 0.5f32 * 0.1 / 0.25);
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn requant_multipliers(
    target: Target,
    s_in: f32,
    w_scales: &[f32],
    s_out: f32,
    fully_connected: bool,
) -> Result<Vec<QuantizedMultiplier>, QuantError> {
    let per_channel = w_scales.len() > 1;
    w_scales
        .iter()
        .map(|&sw| match fully_connected {
            true => target.fc_multiplier(s_in, sw, s_out, per_channel),
            false => target.conv_multiplier(s_in, sw, s_out),
        })
        .collect()
}
