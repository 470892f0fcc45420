//! The derived requantization parameters of the elementwise ops in the model's target: the add
//! ([`AddParams`]; TFLite's multipliers [`add_multipliers`]) and the rescale of a concat input
//! ([`Rescale`]). They are
//! computed once per model from the tensors' params; validation checks that they exist, the
//! executor prepares them and [`reference`](super::reference) applies them.

use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::{AddStage, RescaleStage, Target};
use qat_core::{QuantError, QuantParams};

use crate::model::Clamp;

/// The fixed-point multipliers of TFLite's integer add (`left_shift = 20`): with
/// `twice_max = 2·max(S_a, S_b)`, `M_a = S_a/twice_max`, `M_b = S_b/twice_max`,
/// `M_out = twice_max/(2^20·S_out)`. Returns `(M_a, M_b, M_out)`.
pub fn add_multipliers(
    a: &QuantParams,
    b: &QuantParams,
    out: &QuantParams,
) -> Result<
    (
        QuantizedMultiplier,
        QuantizedMultiplier,
        QuantizedMultiplier,
    ),
    QuantError,
> {
    let twice_max = 2.0 * (a.scale() as f64).max(b.scale() as f64);
    let ma = QuantizedMultiplier::from_f64(a.scale() as f64 / twice_max)?;
    let mb = QuantizedMultiplier::from_f64(b.scale() as f64 / twice_max)?;
    let mo = QuantizedMultiplier::from_f64(
        twice_max / ((1u64 << ADD_LEFT_SHIFT) as f64 * out.scale() as f64),
    )?;
    Ok((ma, mb, mo))
}

/// TFLite's `left_shift` for uint8 add: inputs are scaled by `2^20` before rescaling.
pub const ADD_LEFT_SHIFT: u32 = 20;

/// The add of the model's target, derived once from the three tensors' params: qat-core's
/// [`AddStage`] (TFLite's uint8 add with [`add_multipliers`] for `qat` and `tflite`, onnxruntime's
/// `f32` add for `ort`, XNNPACK's 21-bit fixed-point add for `xnnpack`) with the fused clamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddParams {
    /// The target's add, clamp included.
    pub stage: AddStage,
}

impl AddParams {
    /// Derives the stage; fails for scales the target's runtime cannot add (XNNPACK's ratio
    /// limits) and for multipliers no valid model has.
    pub fn new(
        qa: &QuantParams,
        qb: &QuantParams,
        qo: &QuantParams,
        clamp: Clamp,
        target: Target,
    ) -> Result<Self, QuantError> {
        let stage = AddStage::new(target, qa, qb, qo, clamp.lo as i32, clamp.hi as i32)?;
        Ok(Self { stage })
    }
}

/// Requantization between two tensors' params (concat inputs), as the model's target computes
/// it: qat-core's [`RescaleStage`] (codes pass through unchanged for identical params; otherwise
/// one rounding for `qat`, TFLite's `QUANTIZE` for `tflite`, onnxruntime's lookup table for `ort`,
/// XNNPACK's 8-bit-fraction `qs8-vcvt` for `xnnpack`), clamped to the output tensor's grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    /// The target's rescale.
    pub stage: RescaleStage,
}

impl Rescale {
    /// From input and output params in `target`'s arithmetic.
    pub fn new(qi: &QuantParams, qo: &QuantParams, target: Target) -> Result<Self, QuantError> {
        Ok(Self {
            stage: RescaleStage::new(target, qi, qo)?,
        })
    }
}
