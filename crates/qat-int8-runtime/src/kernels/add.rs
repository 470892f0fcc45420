//! The derived requantization parameters of the elementwise ops in the model's target: the add
//! ([`AddParams`], with qat-core's TFLite multipliers
//! [`add_multipliers`](qat_core::target::add_multipliers)) and the rescale of a concat input
//! ([`Rescale`]). They are computed once per model from the tensors' params; validation checks
//! that they exist, the executor prepares them and [`reference`](super::reference) applies them.

use qat_core::target::{AddStage, RescaleStage, Target};
use qat_core::{QuantError, QuantParams};

use crate::model::Clamp;

/// The add of the model's target, derived once from the three tensors' params: qat-core's
/// [`AddStage`] (TFLite's uint8 add with
/// [`add_multipliers`](qat_core::target::add_multipliers) for `qat` and `tflite`, onnxruntime's
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
