//! Activation fusion into the requantization clamp (paper §2.4: "the ReLU6 nonlinearity only
//! involves 8-bit integer arithmetic").

use qat_core::QuantParams;
use qat_int8_runtime::Clamp;

use crate::ir::Activation;

/// The clamp `[lo, hi]` that implements `act` on the output grid `out` (codes `[qmin, qmax]`,
/// e.g. `[0, 2^b − 1]` for b-bit activations):
///
/// * none: `[qmin, qmax]`;
/// * ReLU: `[Z_out, qmax]` — codes below `Z_out` are negative reals;
/// * ReLU6: `[Z_out, min(qmax, Z_out + round(6/S_out))]`, where `Z_out + round(6/S_out)` is
///   `out.quantize(6.0)` (qat-core's rounding: ties to even of `6·(1/S)` in f32), i.e. exactly the
///   code the simulation gives to `relu6(x) = 6`.
///
/// Because the simulation applies `act` in float and then fake-quantizes, and fake quant is
/// monotone, clamping the requantized code to these bounds gives the same code.
///
/// ```
/// use qat_core::QuantParams;
/// use qat_export::{ir::Activation, passes::fuse::activation_clamp};
/// let p = QuantParams::asymmetric(-2.0, 8.0, 8)?;          // S = 10/255, Z = 51
/// assert_eq!((p.scale(), p.zero_point()), (10.0 / 255.0, 51));
/// let c = activation_clamp(Activation::Relu6, &p);
/// assert_eq!((c.lo, c.hi), (51, 51 + 153));               // 6/(10/255) = 153
/// let c = activation_clamp(Activation::Relu, &QuantParams::asymmetric(-1.0, 6.0, 4)?);
/// assert_eq!(c.hi, 15);                                    // 4-bit grid
/// # Ok::<(), qat_core::QuantError>(())
/// ```
pub fn activation_clamp(act: Activation, out: &QuantParams) -> Clamp {
    let to_u8 = |q: i32| q.clamp(0, 255) as u8;
    let (qmin, qmax, z) = (out.qmin(), out.qmax(), out.zero_point());
    let (lo, hi) = match act {
        Activation::None => (qmin, qmax),
        Activation::Relu => (z, qmax),
        Activation::Relu6 => (z, out.quantize(6.0).min(qmax)),
    };
    Clamp {
        lo: to_u8(lo),
        hi: to_u8(hi),
    }
}
