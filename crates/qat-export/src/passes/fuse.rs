//! Activation fusion into the requantization clamp (paper §2.4: "the ReLU6 nonlinearity only
//! involves 8-bit integer arithmetic").

use qat_core::{QuantParams, Target};
use qat_int8_runtime::Clamp;

use crate::ir::Activation;

/// The clamp `[lo, hi]` that implements `act` on the output grid `out` (codes `[qmin, qmax]`,
/// e.g. `[0, 2^b − 1]` for b-bit activations), as `target`'s runtime computes it:
///
/// * none: `[qmin, qmax]`;
/// * ReLU: `[Z_out, qmax]` — codes below `Z_out` are negative reals;
/// * ReLU6: `[Z_out, min(qmax, code(6))]` with `code(6)` = `target.activation_bound(6.0, out)`
///   (qat: `out.quantize(6.0)`, ties to even of `6·(1/S)` in f32, the code the float simulation
///   gives to `relu6(x) = 6`; TFLite: `Z + round_half_away(6/S)`; see
///   [`Target::activation_bound`]).
///
/// ```
/// use qat_core::{QuantParams, Target};
/// use qat_export::{ir::Activation, passes::fuse::activation_clamp};
/// let p = QuantParams::asymmetric(-2.0, 8.0, 8)?;          // S = 10/255, Z = 51
/// assert_eq!((p.scale(), p.zero_point()), (10.0 / 255.0, 51));
/// let c = activation_clamp(Activation::Relu6, &p, Target::Qat);
/// assert_eq!((c.lo, c.hi), (51, 51 + 153));               // 6/(10/255) = 153
/// let c = activation_clamp(Activation::Relu, &QuantParams::asymmetric(-1.0, 6.0, 4)?, Target::Qat);
/// assert_eq!(c.hi, 15);                                    // 4-bit grid
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn activation_clamp(act: Activation, out: &QuantParams, target: Target) -> Clamp {
    let to_u8 = |q: i32| q.clamp(0, 255) as u8;
    let (qmin, qmax, z) = (out.qmin(), out.qmax(), out.zero_point());
    let (lo, hi) = match act {
        Activation::None => (qmin, qmax),
        Activation::Relu => (z, qmax),
        Activation::Relu6 => (z, target.activation_bound(6.0, out).min(qmax)),
    };
    Clamp {
        lo: to_u8(lo),
        hi: to_u8(hi),
    }
}
