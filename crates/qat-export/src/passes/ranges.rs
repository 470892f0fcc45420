//! Observed range → activation quantization parameters (paper §2.1 eq. 1, §3 nudging).

use qat_core::{QuantError, QuantParams};

use crate::ir::Range;

/// Asymmetric activation parameters on `[0, 2^bits − 1]` from an observed range, nudged so that
/// 0.0 is exact — `QuantParams::asymmetric(min, max, bits)` (TFLite `NudgeQuantizationRange`):
///
/// `min ← min(min, 0)`, `max ← max(max, 0)`, `S = (max − min)/(2^b − 1)`,
/// `Z = clamp(round_half_away(−min/S), 0, 2^b − 1)`; the represented range is
/// `[−Z·S, (2^b − 1 − Z)·S]`.
///
/// A b-bit activation keeps `qmax = 2^b − 1` in its `QuantParams`; the runtime stores the codes in
/// uint8 and every clamp export emits stays within `[qmin, qmax]`.
///
/// ```
/// use qat_export::{ir::Range, passes::ranges::activation_params};
/// let p = activation_params(Range { min: -1.0, max: 3.0 }, 8)?;
/// assert_eq!((p.scale(), p.zero_point()), (4.0 / 255.0, 64));
/// let p4 = activation_params(Range { min: 0.0, max: 1.5 }, 4)?;
/// assert_eq!((p4.scale(), p4.zero_point(), p4.qmax()), (0.1, 0, 15));
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn activation_params(range: Range, bits: u32) -> Result<QuantParams, QuantError> {
    QuantParams::asymmetric(range.min, range.max, bits)
}
