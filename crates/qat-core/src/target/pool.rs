//! The average-pool output stage (window pools and global average pool), per target.

use crate::fixed_point::QuantizedMultiplier;
use crate::{QuantError, QuantParams};

use super::{Io, Target, clamp_total};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    /// `qat`, identical params: TFLite's uint8 `(Σq + n/2)/n`.
    QatSame,
    /// `qat`, different params: `M' = S_in/(S_out·n)` in fixed point, one rounding.
    QatRescale { si: f32, so: f32 },
    /// `tflite`, `xnnpack`: TFLite's int8 average, in int8 codes.
    TfliteInt8,
    /// onnxruntime's `QLinearGlobalAveragePool` (MLAS, `f32` scale).
    OrtGlobal { si: f32, so: f32 },
    /// onnxruntime's `QLinearAveragePool` (dequantize, `f32` mean, quantize).
    OrtWindow { si: f32, so: f32 },
}

/// The average-pool output stage of one target: from the codes of one window to one output code,
/// clamped to the output grid. See [`AverageStage::new`] for the formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AverageStage {
    io: Io,
    arith: Arith,
}

impl AverageStage {
    /// The stage from `input` to `output` params. `global` says that every window is the whole
    /// input without padding (a global average pool, or an average pool whose kernel covers the
    /// input: onnxruntime then takes its global-pool kernel). With `n` the number of in-bounds
    /// cells of a window (padding excluded) and `q_i` its codes:
    ///
    /// - `qat`: identical params: `(Σq + n/2)/n` (TFLite's uint8 average); otherwise
    ///   `round_half_away(M'·(Σq − n·Z_in)) + Z_out`, `M' = QuantizeMultiplier(S_in/(S_out·n))`
    ///   in f64 ([`QuantizedMultiplier::apply_rounded_once`]).
    /// - `tflite`, `xnnpack`: TFLite's int8 `AVERAGE_POOL_2D` (`reference_integer_ops::AveragePool`;
    ///   XNNPACK does not take quantized average pools, so LiteRT runs TFLite's kernel): in int8
    ///   codes `s = Σ(q − 128)`, `r = s > 0 ? (s + n/2)/n : (s − n/2)/n` (C division truncates:
    ///   ties away from zero), `q = r + 128`. The kernel has no rescale: input and output must
    ///   share scale and zero point ([`QuantError::Unsupported`] otherwise).
    /// - `ort`, `global` (MLAS `MlasQLinearGlobalAveragePoolNhwc`): `s = f32(S_in/f32(S_out·f32(n)))`,
    ///   `q = round_half_even(f32(Σq − Z_in·n)·s) + Z_out` (`MlasRequantizeOutput`); onnxruntime
    ///   throws for `s < 2^−32`, `s ≥ 256` or `n ≥ 2^24`.
    /// - `ort`, windows (`QLinearAveragePool`): `x_i = f32(S_in·f32(q_i − Z_in))`, summed in `f32`
    ///   in window order (rows, then columns), `y = sum / f32(n)`,
    ///   `q = round_half_even(f32(y/S_out) + f32(Z_out))`.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::{AverageStage, Target}};
    /// let p = QuantParams::new(0.1, 128, QuantRange::unsigned(8)?)?;
    /// // codes 125, 126: int8 −3, −2 → −2.5 → −3 (ties away from zero) → 125
    /// assert_eq!(AverageStage::new(Target::Tflite, &p, &p, false)?.apply(&[125, 126]), 125);
    /// // the uint8 average rounds the same tie up: (251 + 1)/2 = 126
    /// assert_eq!(AverageStage::new(Target::Qat, &p, &p, false)?.apply(&[125, 126]), 126);
    /// // onnxruntime: −2.5 → −2 (ties to even) → 126
    /// assert_eq!(AverageStage::new(Target::Ort, &p, &p, true)?.apply(&[125, 126]), 126);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn new(
        target: Target,
        input: &QuantParams,
        output: &QuantParams,
        global: bool,
    ) -> Result<Self, QuantError> {
        let (si, so) = (input.scale(), output.scale());
        let arith = match target {
            Target::Qat if input == output => Arith::QatSame,
            Target::Qat => {
                // S_in/S_out itself (n = 1, the largest M') must be representable.
                QuantizedMultiplier::from_f64(si as f64 / so as f64)?;
                Arith::QatRescale { si, so }
            }
            Target::Tflite | Target::Xnnpack => {
                if si != so || input.zero_point() != output.zero_point() {
                    return Err(QuantError::Unsupported {
                        target,
                        what: "average pool",
                        reason: format!(
                            "TFLite's int8 average pool has no rescale: input (S {si}, Z {}) \
                             and output (S {so}, Z {}) must share scale and zero point",
                            input.zero_point(),
                            output.zero_point()
                        ),
                    });
                }
                Arith::TfliteInt8
            }
            Target::Ort if global => Arith::OrtGlobal { si, so },
            Target::Ort => Arith::OrtWindow { si, so },
        };
        Ok(Self {
            io: Io::new(input, output),
            arith,
        })
    }

    /// The `f32` scale of onnxruntime's global pool for windows of `n` cells, or why onnxruntime
    /// refuses it (`CheckQLinearGlobalAveragePoolScaleAndSize`).
    pub fn ort_global_scale(si: f32, so: f32, n: usize) -> Result<f32, QuantError> {
        let refuse = |reason: String| QuantError::Unsupported {
            target: Target::Ort,
            what: "global average pool",
            reason,
        };
        if n >= 1 << 24 {
            return Err(refuse(format!(
                "{n} cells: onnxruntime requires fewer than 2^24"
            )));
        }
        let s = si / (so * n.max(1) as f32);
        if !(2f32.powi(-32)..256.0).contains(&s) {
            return Err(refuse(format!(
                "scale S_in/(S_out·n) = {s} outside onnxruntime's [2^-32, 256)"
            )));
        }
        Ok(s)
    }

    /// One output code from the codes of a window, in window order (rows, then columns; only
    /// `ort`'s window pools depend on the order). An empty window gives `Z_out` clamped (real 0).
    /// Never panics: sums are taken in i64, and an onnxruntime global pool that onnxruntime would
    /// refuse ([`Self::ort_global_scale`]) gives `Z_out` (check it when planning).
    #[inline]
    pub fn apply(&self, cells: &[i32]) -> i32 {
        let Io { zi, zo, lo, hi } = self.io;
        let n = cells.len() as i64;
        if n == 0 {
            return clamp_total(zo as i64, lo, hi);
        }
        let sum: i64 = cells.iter().map(|&q| q as i64).sum();
        let r = match self.arith {
            Arith::QatSame => (sum + n / 2).div_euclid(n) - zo as i64,
            Arith::QatRescale { si, so } => {
                let centered = (sum - n * zi as i64).clamp(i32::MIN as i64, i32::MAX as i64);
                match QuantizedMultiplier::from_f64(si as f64 / (so as f64 * n as f64)) {
                    Ok(m) => m.apply_rounded_once(centered as i32) as i64,
                    Err(_) => 0,
                }
            }
            Arith::TfliteInt8 => {
                let s = sum - 128 * n;
                // C's `/` truncates toward zero, as Rust's.
                let r = if s > 0 {
                    (s + n / 2) / n
                } else {
                    (s - n / 2) / n
                };
                r + 128 - zo as i64
            }
            Arith::OrtGlobal { si, so } => match Self::ort_global_scale(si, so, n as usize) {
                Ok(s) => {
                    let acc = (sum - zi as i64 * n) as i32 as f32;
                    (acc * s).round_ties_even() as i64
                }
                Err(_) => 0,
            },
            Arith::OrtWindow { si, so } => {
                let total = cells
                    .iter()
                    .fold(0f32, |acc, &q| acc + si * (q as i64 - zi as i64) as f32);
                let y = total / n as f32;
                (y / so + zo as f32).round_ties_even() as i64 - zo as i64
            }
        };
        self.io.out(r)
    }
}
