//! The derived requantization parameters of the elementwise ops: TFLite's uint8 add
//! ([`AddParams`], [`add_multipliers`]) and the rescale of a concat input ([`Rescale`]). They are
//! computed once per model from the tensors' params; validation checks that they exist, the
//! executor prepares them and [`reference`](super::reference) applies them.

use qat_core::fixed_point::{QuantizedMultiplier, Rounding};
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

/// Everything TFLite's uint8 add needs, derived once from the three tensors' params
/// ([`add_multipliers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddParams {
    /// `Z_a`.
    pub za: i32,
    /// `Z_b`.
    pub zb: i32,
    /// `Z_out`.
    pub zo: i32,
    /// `M_a = S_a/(2·max(S_a, S_b))`.
    pub ma: QuantizedMultiplier,
    /// `M_b = S_b/(2·max(S_a, S_b))`.
    pub mb: QuantizedMultiplier,
    /// `M_out = 2·max(S_a, S_b)/(2^20·S_out)`.
    pub mo: QuantizedMultiplier,
    /// Fused activation clamp.
    pub clamp: Clamp,
    /// Rounding of the output stage (`M_out`); the input rescales always use `apply`.
    pub rounding: Rounding,
}

impl AddParams {
    /// Derives the multipliers; fails only for scales no valid model has.
    pub fn new(
        qa: &QuantParams,
        qb: &QuantParams,
        qo: &QuantParams,
        clamp: Clamp,
        rounding: Rounding,
    ) -> Result<Self, QuantError> {
        let (ma, mb, mo) = add_multipliers(qa, qb, qo)?;
        Ok(Self {
            za: qa.zero_point(),
            zb: qb.zero_point(),
            zo: qo.zero_point(),
            ma,
            mb,
            mo,
            clamp,
            rounding,
        })
    }
}

/// Requantization between two tensors' params (concat inputs): `None` multiplier when they are
/// equal (codes pass through unchanged), else `q = clamp(M·(q_in − Z_in) + Z_out, qmin, qmax)`,
/// `M = S_in/S_out`, clamped to the output tensor's grid (`[0, 2^b − 1]` for b-bit activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescale {
    /// `Z_in`.
    pub zi: i32,
    /// `Z_out`.
    pub zo: i32,
    /// `qmin` of the output grid.
    pub lo: i32,
    /// `qmax` of the output grid.
    pub hi: i32,
    /// `M = S_in/S_out`, or `None` for identical params.
    pub m: Option<QuantizedMultiplier>,
    /// How `M·(q_in − Z_in)` is rounded.
    pub rounding: Rounding,
}

impl Rescale {
    /// From input and output params, rounding as `rounding` says.
    pub fn new(qi: &QuantParams, qo: &QuantParams, rounding: Rounding) -> Result<Self, QuantError> {
        let m = if qi == qo {
            None
        } else {
            Some(QuantizedMultiplier::from_f64(
                qi.scale() as f64 / qo.scale() as f64,
            )?)
        };
        Ok(Self {
            zi: qi.zero_point(),
            zo: qo.zero_point(),
            lo: qo.qmin(),
            hi: qo.qmax(),
            m,
            rounding,
        })
    }
}
