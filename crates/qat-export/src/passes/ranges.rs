//! Observed range → activation quantization parameters (paper §2.1 eq. 1, §3 nudging).

use qat_core::{QuantError, QuantParams, QuantRange};

use crate::ir::Range;

/// The smallest activation scale export emits, `2^−16`.
///
/// A degenerate observed range — `[0, 0]` from a ReLU that never fired, or any range narrower
/// than `2^−16·(2^b − 1)` — would give qat-core's `MIN_SCALE` (`f32::EPSILON`), and the next
/// layer's int32 bias `b/(S_in·S_w)` would overflow. All values of such a tensor are (nearly) 0,
/// which every scale represents exactly, so export widens the range to `[min, min + 2^−16·(2^b − 1)]`
/// (min ≤ 0 after including 0) before nudging. The simulation twin uses the same parameters.
pub const MIN_ACTIVATION_SCALE: f32 = 1.0 / 65536.0;

/// Asymmetric activation parameters on `[0, 2^bits − 1]` from an observed range, nudged so that
/// 0.0 is exact — `QuantParams::asymmetric(min, max, bits)` (TFLite `NudgeQuantizationRange`):
///
/// `min ← min(min, 0)`, `max ← max(max, 0)`, `S = (max − min)/(2^b − 1)`,
/// `Z = clamp(round_half_away(−min/S), 0, 2^b − 1)`; the represented range is
/// `[−Z·S, (2^b − 1 − Z)·S]`.
///
/// A b-bit activation keeps `qmax = 2^b − 1` in its `QuantParams`; the runtime stores the codes in
/// uint8 and every clamp export emits stays within `[qmin, qmax]`. Degenerate ranges are widened
/// first (see [`MIN_ACTIVATION_SCALE`]).
///
/// ```
/// use qat_export::{ir::Range, passes::ranges::activation_params};
/// let p = activation_params(Range { min: -1.0, max: 3.0 }, 8)?;
/// assert_eq!((p.scale(), p.zero_point()), (4.0 / 255.0, 64));
/// let p4 = activation_params(Range { min: 0.0, max: 1.5 }, 4)?;
/// assert_eq!((p4.scale(), p4.zero_point(), p4.qmax()), (0.1, 0, 15));
/// let dead = activation_params(Range { min: 0.0, max: 0.0 }, 8)?;   // a ReLU that never fired
/// assert_eq!((dead.scale(), dead.zero_point()), (1.0 / 65536.0, 0));
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn activation_params(range: Range, bits: u32) -> Result<QuantParams, QuantError> {
    let steps = QuantRange::unsigned(bits)?.steps() as f32;
    let (lo, hi) = (range.min.min(0.0), range.max.max(0.0));
    let hi = if (hi - lo) < MIN_ACTIVATION_SCALE * steps {
        lo + MIN_ACTIVATION_SCALE * steps
    } else {
        hi
    };
    QuantParams::asymmetric(lo, hi, bits)
}
