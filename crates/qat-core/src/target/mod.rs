//! Deployment targets: the requantization arithmetic of the runtime a model is deployed to.
//!
//! The paper's point is that training simulates the integer arithmetic of the hardware that runs
//! the model. The runtimes users deploy to compute the same integer model with different
//! arithmetic: where they round, how they form the multiplier from the `f32` scales stored in
//! the file, and in which order. A [`Target`] names one of them; every formula it implies lives
//! here, once, and the runtime, the export's simulation and the QAT forward pass call it.
//!
//! | target | conv / FC output stage | multiplier from the file's `f32` scales |
//! |---|---|---|
//! | [`Target::Qat`] | `round_half_away(acc·M0·2^(shift−31))`, one rounding of the exact product | `QuantizeMultiplier((f64)S_in·(f64)S_w/(f64)S_out)` |
//! | [`Target::Tflite`] | `RoundingDivideByPOT(SRDHM(acc·2^left, M0), right)` (gemmlowp double rounding) | the same |
//! | [`Target::Ort`], [`Target::Xnnpack`] | `round_half_even(f32(acc)·s)` in `f32` | `s = f32(f32(S_in·S_w)/S_out)`, held exactly as `(M0, shift)` |
//!
//! then `+ Z_out` and the clamp. The targets also differ in the elementwise add ([`AddStage`]),
//! the average pools ([`AverageStage`]), the requantization of concat inputs ([`RescaleStage`]) and
//! the quantization of the `f32` graph input ([`Target::quantize`]). `docs/targets.md` gives every
//! formula with the runtime source it was read from.
//!
//! Why `Target` is not the model's [`Rounding`]: `Rounding` is how a *fixed-point* multiplier
//! rounds (`Single` for `qat`, `Gemmlowp` for `tflite`); the `f32` targets have no fixed-point
//! rounding at all. `Target` is laid out so that it can replace `Rounding` in the stored model
//! without breaking old files: its first two variants are `Tflite` (bincode index 0, the old
//! `Gemmlowp`) and `Qat` (index 1, the old `Single`), and it deserializes the old names.
//!
//! ```
//! use qat_core::fixed_point::QuantizedMultiplier;
//! use qat_core::target::Target;
//! let m = QuantizedMultiplier::from_f64(0.3)?;
//! // 8·0.3 = 2.4 → 2 once; gemmlowp rounds 2.4 to 2.5 first, then 2.5 → 3.
//! assert_eq!(Target::Qat.requantize(8, m, 0, 0, 255), 2);
//! assert_eq!(Target::Tflite.requantize(8, m, 0, 0, 255), 3);
//! // 5·0.5 = 2.5: ties away from zero once (qat), ties to even in f32 (ort, xnnpack).
//! let half = Target::Ort.conv_multiplier(1.0, 0.5, 1.0)?;
//! assert_eq!(Target::Qat.requantize(5, half, 0, 0, 255), 3);
//! assert_eq!(Target::Ort.requantize(5, half, 0, 0, 255), 2);
//! # Ok::<(), qat_core::QuantError>(())
//! ```

mod add;
mod fp32;
mod pool;
mod quantize;
mod real;
mod rescale;

use serde::{Deserialize, Serialize};

pub use add::{ADD_LEFT_SHIFT, AddStage, add_multipliers};
pub use fp32::{fp32_multiplier, requantize_fp32};
pub use pool::AverageStage;
pub use real::requantize_real;
pub use rescale::RescaleStage;

use crate::QuantError;
use crate::fixed_point::{QuantizedMultiplier, Rounding, requantize_with};

/// The requantization arithmetic of a deployment runtime (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Target {
    /// TFLite's builtin kernels (reference and optimized, default build): gemmlowp's
    /// `MultiplyByQuantizedMultiplier`, the double rounding (the model's `Rounding::Gemmlowp`).
    #[serde(
        rename = "tflite",
        alias = "Gemmlowp",
        alias = "gemmlowp",
        alias = "Tflite"
    )]
    Tflite,
    /// This project's own arithmetic: one rounding of the exact product, ties away from zero
    /// (the model's `Rounding::Single`), what the float simulation of QAT approximates best.
    #[default]
    #[serde(rename = "qat", alias = "Single", alias = "single", alias = "Qat")]
    Qat,
    /// onnxruntime's CPU provider (MLAS) running a QDQ model: `f32` multiplier, `cvtps2dq`
    /// (ties to even), `f32` elementwise add and pools.
    #[serde(rename = "ort", alias = "Ort")]
    Ort,
    /// LiteRT with its default XNNPACK delegate: XNNPACK's `fp32` requantization for conv and
    /// fully connected, its 21-bit fixed-point add, and TFLite's builtin int8 average pool for
    /// the pools XNNPACK leaves to TFLite.
    #[serde(rename = "xnnpack", alias = "Xnnpack")]
    Xnnpack,
}

impl Target {
    /// Every target, `qat` first.
    pub const ALL: [Target; 4] = [Target::Qat, Target::Tflite, Target::Ort, Target::Xnnpack];

    /// `"qat"`, `"tflite"`, `"ort"` or `"xnnpack"` (config key `qat.target`, `--target`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Qat => "qat",
            Target::Tflite => "tflite",
            Target::Ort => "ort",
            Target::Xnnpack => "xnnpack",
        }
    }

    /// Parses a [`Target::name`] (case-insensitive); `"single"` and `"gemmlowp"`, the model's
    /// rounding names, are accepted for `qat` and `tflite`.
    ///
    /// ```
    /// use qat_core::target::Target;
    /// assert_eq!(Target::from_name("TFLite"), Some(Target::Tflite));
    /// assert_eq!(Target::from_name("gemmlowp"), Some(Target::Tflite));
    /// assert_eq!(Target::from_name("fp32"), None);
    /// ```
    pub fn from_name(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "single" => Some(Target::Qat),
            "gemmlowp" => Some(Target::Tflite),
            other => Self::ALL.into_iter().find(|t| t.name() == other),
        }
    }

    /// The fixed-point rounding of the target's conv/FC output stage: `Single` for `qat`,
    /// `Gemmlowp` for `tflite`, `None` for the `f32` targets (they have none).
    pub fn rounding(self) -> Option<Rounding> {
        match self {
            Target::Qat => Some(Rounding::Single),
            Target::Tflite => Some(Rounding::Gemmlowp),
            Target::Ort | Target::Xnnpack => None,
        }
    }

    /// Whether the target's average pools can rescale, i.e. give their output parameters of its
    /// own: `qat` and `ort` can; TFLite's int8 `AVERAGE_POOL_2D` (which `tflite` and `xnnpack` run)
    /// averages codes in its input's scale and zero point. QAT for a target that cannot ties an
    /// average pool's output quantizer to its input's parameters.
    ///
    /// ```
    /// use qat_core::target::Target;
    /// assert!(Target::Qat.average_pool_rescales() && Target::Ort.average_pool_rescales());
    /// assert!(!Target::Tflite.average_pool_rescales() && !Target::Xnnpack.average_pool_rescales());
    /// ```
    pub fn average_pool_rescales(self) -> bool {
        matches!(self, Target::Qat | Target::Ort)
    }

    /// Whether the target requantizes with an `f32` multiplier (onnxruntime, XNNPACK).
    pub fn is_fp32(self) -> bool {
        self.rounding().is_none()
    }

    /// The conv / fully-connected multiplier `M = S_in·S_w/S_out` exactly as the target's runtime
    /// derives it from the `f32` scales that the exported file carries:
    ///
    /// - `qat`, `tflite`: `QuantizeMultiplier((f64)S_in · (f64)S_w / (f64)S_out)` (TFLite
    ///   `PopulateConvolutionQuantizationParams`), [`QuantizedMultiplier::from_f64`];
    /// - `ort`, `xnnpack`: `s = (S_in · S_w) / S_out` in `f32`, left to right (onnxruntime
    ///   `QLinearConv::ComputeOutputScale`, XNNPACK `init_requantization_scale_qx8_qc8w`), held
    ///   exactly by [`fp32_multiplier`]. XNNPACK refuses `s ≥ 256`.
    ///
    /// ```
    /// use qat_core::target::Target;
    /// let (s_in, s_w, s_out) = (0.1f32, 0.02f32, 0.3f32);
    /// let fp = Target::Ort.conv_multiplier(s_in, s_w, s_out)?;
    /// assert_eq!(fp.to_f32(), s_in * s_w / s_out);                   // the runtime's f32, exactly
    /// let fx = Target::Tflite.conv_multiplier(s_in, s_w, s_out)?;
    /// assert!((fx.to_f64() - 0.1f32 as f64 * 0.02f32 as f64 / 0.3f32 as f64).abs() < 1e-12);
    /// assert!(Target::Xnnpack.conv_multiplier(1.0, 1.0, 1.0 / 512.0).is_err());
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn conv_multiplier(
        self,
        s_in: f32,
        s_w: f32,
        s_out: f32,
    ) -> Result<QuantizedMultiplier, QuantError> {
        match self {
            Target::Qat | Target::Tflite => {
                QuantizedMultiplier::from_f64(s_in as f64 * s_w as f64 / s_out as f64)
            }
            Target::Ort => fp32_multiplier(s_in * s_w / s_out),
            Target::Xnnpack => {
                let s = s_in * s_w / s_out;
                if s >= 256.0 {
                    return Err(QuantError::Unsupported {
                        target: self,
                        what: "requantization scale",
                        reason: format!("XNNPACK requires S_in·S_w/S_out < 256, got {s}"),
                    });
                }
                fp32_multiplier(s)
            }
        }
    }

    /// The multiplier of a fully-connected layer with *per-tensor* weights: TFLite's
    /// `FULLY_CONNECTED` takes it from `GetQuantizedConvolutionMultipler`, whose product
    /// `S_in·S_w` is an `f32` product, widened afterwards:
    /// `QuantizeMultiplier((f64)f32(S_in·S_w) / (f64)S_out)`. Every other case is
    /// [`Self::conv_multiplier`] (per-channel fully connected goes through TFLite's
    /// `PopulateConvolutionQuantizationParams`, as conv).
    ///
    /// ```
    /// use qat_core::target::Target;
    /// let (s_in, s_w, s_out) = (0.1f32, 0.3f32, 0.7f32);
    /// let fc = Target::Tflite.fc_multiplier(s_in, s_w, s_out, false)?;
    /// assert_eq!(fc, qat_core::fixed_point::QuantizedMultiplier::from_f64((s_in * s_w) as f64 / s_out as f64)?);
    /// assert_eq!(Target::Tflite.fc_multiplier(s_in, s_w, s_out, true)?, Target::Tflite.conv_multiplier(s_in, s_w, s_out)?);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn fc_multiplier(
        self,
        s_in: f32,
        s_w: f32,
        s_out: f32,
        per_channel: bool,
    ) -> Result<QuantizedMultiplier, QuantError> {
        if self == Target::Tflite && !per_channel {
            return QuantizedMultiplier::from_f64((s_in * s_w) as f64 / s_out as f64);
        }
        self.conv_multiplier(s_in, s_w, s_out)
    }

    /// The conv / fully-connected output stage for one int32 accumulator (bias included):
    /// `q = clamp(round(acc·M) + Z_out, lo, hi)` with the target's rounding — the same codes as
    /// [`requantize_with`]`(Single, …)` for `qat` and `(Gemmlowp, …)` for `tflite`
    /// ([`QuantizedMultiplier::apply_rounded_once`], [`QuantizedMultiplier::apply`]), and
    /// [`requantize_fp32`] for `ort` and `xnnpack`. Total over all inputs (never panics; `lo > hi`
    /// gives `hi`).
    #[inline]
    pub fn requantize(self, acc: i32, m: QuantizedMultiplier, zp: i32, lo: i32, hi: i32) -> i32 {
        match self {
            Target::Qat => requantize_with(Rounding::Single, acc, m, zp, lo, hi),
            Target::Tflite => requantize_with(Rounding::Gemmlowp, acc, m, zp, lo, hi),
            Target::Ort | Target::Xnnpack => requantize_fp32(acc, m, zp, lo, hi),
        }
    }
}

impl From<Rounding> for Target {
    /// `Single` → `qat`, `Gemmlowp` → `tflite`.
    fn from(r: Rounding) -> Self {
        match r {
            Rounding::Single => Target::Qat,
            Rounding::Gemmlowp => Target::Tflite,
        }
    }
}

/// A target equals the rounding of its fixed-point output stage (`Qat` = `Single`, `Tflite` =
/// `Gemmlowp`); the `f32` targets equal no rounding. (Old code compares a model's target with a
/// [`Rounding`].)
impl PartialEq<Rounding> for Target {
    fn eq(&self, r: &Rounding) -> bool {
        self.rounding() == Some(*r)
    }
}

/// See `PartialEq<Rounding> for Target`.
impl PartialEq<Target> for Rounding {
    fn eq(&self, t: &Target) -> bool {
        t == self
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Target {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, QuantError> {
        Self::from_name(s).ok_or_else(|| QuantError::UnknownTarget {
            name: s.to_string(),
        })
    }
}

/// Clamps `v` to `[lo, hi]` without panicking when `lo > hi` (the result is then `hi`).
#[inline]
pub(crate) fn clamp_total(v: i64, lo: i32, hi: i32) -> i32 {
    v.max(lo as i64).min(hi as i64) as i32
}

/// The zero points and output grid a rescaling stage needs (add, pools, concat).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Io {
    pub zi: i32,
    pub zo: i32,
    pub lo: i32,
    pub hi: i32,
}

impl Io {
    /// From the input's zero point and the output's params, clamped to the output's grid.
    pub fn new(input: &crate::QuantParams, output: &crate::QuantParams) -> Self {
        Self {
            zi: input.zero_point(),
            zo: output.zero_point(),
            lo: output.qmin(),
            hi: output.qmax(),
        }
    }

    /// `clamp(v + Z_out, lo, hi)`.
    #[inline]
    pub fn out(&self, v: i64) -> i32 {
        clamp_total(v + self.zo as i64, self.lo, self.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_old_rounding_names_parse() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
            assert_eq!(t.to_string().parse::<Target>(), Ok(t));
        }
        assert_eq!(Target::from_name(" Single "), Some(Target::Qat));
        assert!("mlas".parse::<Target>().is_err());
        assert_eq!(Target::from(Rounding::Gemmlowp), Target::Tflite);
        for r in Rounding::ALL {
            assert_eq!(Target::from(r).rounding(), Some(r));
        }
        assert!(Target::Ort.is_fp32() && Target::Xnnpack.is_fp32() && !Target::Qat.is_fp32());
        assert!(Target::Tflite == Rounding::Gemmlowp && Rounding::Single == Target::Qat);
        assert!(Target::Ort != Rounding::Single && Rounding::Gemmlowp != Target::Xnnpack);
    }

    #[test]
    fn serde_reads_the_old_rounding_names_and_keeps_bincode_indices() {
        for (old, t) in [
            ("\"Single\"", Target::Qat),
            ("\"Gemmlowp\"", Target::Tflite),
        ] {
            assert_eq!(serde_json::from_str::<Target>(old).unwrap(), t);
        }
        for t in Target::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
        }
        // A model's `Rounding` serialized with bincode decodes as the matching target.
        let cfg = bincode::config::standard();
        for r in Rounding::ALL {
            let bytes = bincode::serde::encode_to_vec(r, cfg).unwrap();
            let (t, _): (Target, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(t, Target::from(r));
        }
    }

    #[test]
    fn requantize_never_panics_on_an_inverted_clamp() {
        let m = QuantizedMultiplier::from_f64(0.5).unwrap();
        for t in Target::ALL {
            assert_eq!(t.requantize(100, m, 0, 10, 5), 5, "{t}");
        }
    }
}
