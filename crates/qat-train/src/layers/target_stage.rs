//! QAT for a deployment target ([`QuantConfig::target`](super::QuantConfig::target)): the forward
//! values the target's runtime computes, from the codes QAT's float forward pass lies on.
//!
//! * [`AccumulatorStage::requantize`]: a conv / linear output `z = conv(x̂, Ŵ) + b̂` (input, weights and
//!   bias fake-quantized, the bias on the int32 grid `g[c] = S_in·S_w[c]`) is `g[c]·acc` for the
//!   integer accumulator `acc` up to float rounding, so `acc = round(z/g[c])`; the output code is
//!   then the target's conv/FC output stage of `acc` — exactly qat-export's simulation
//!   (`simulate::output_stage`): the multipliers of `passes::weights::requant_multipliers`, the
//!   `f64` stage of a TFLite fully connected layer ([`Target::fc_real_scale`]), the fused clamp of
//!   `passes::fuse::activation_clamp` — and the value `S_out·(q − Z_out)`.
//! * [`average_codes`]: a global average pool whose output keeps its input's parameters, as the
//!   target's [`AverageStage`] averages the input codes `q = round(x/S) + Z`.
//!
//! Both run on the host with qat-core's scalar stages (the one place the arithmetic lives); the
//! layer adds `(value − y).detach()` to its fake-quantized output `y`, so the backward is `y`'s.

use qat_core::target::{AverageStage, requantize_real};
use qat_core::{QuantParams, Target};
use qat_export::ir::Activation;
use qat_export::passes::{fuse, weights};
use tch::{Device, Kind, Tensor};

/// Why a target stage could not be computed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    /// A libtorch call failed.
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    /// The target cannot derive the layer's multipliers or pool stage.
    #[error("{0}")]
    Quant(#[from] qat_core::QuantError),
    /// A shape the stage does not take.
    #[error("{0}")]
    Shape(String),
}

/// `z` as host `f32`s and its shape.
fn host(z: &Tensor) -> Result<(Vec<f32>, Vec<i64>), StageError> {
    let shape = z.size();
    let flat = z
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok((
        qat_autograd::host_read::vec_f32(&flat, "target stage: layer output")?,
        shape,
    ))
}

fn tensor_like(values: &[f32], shape: &[i64], like: &Tensor) -> Result<Tensor, StageError> {
    Ok(Tensor::from_slice(values)
        .f_view(shape)?
        .f_to_device(like.device())?)
}

/// A conv / linear layer's output stage in a target's arithmetic: the input scale, the weight
/// scales (one, or one per channel) and the output parameters it requantizes with.
#[derive(Debug, Clone)]
pub(crate) struct AccumulatorStage {
    /// The target.
    pub target: Target,
    /// `S_in`.
    pub s_in: f32,
    /// `S_w` (one per tensor, or one per output channel).
    pub w_scales: Vec<f32>,
    /// The output parameters.
    pub p_out: QuantParams,
}

impl AccumulatorStage {
    /// The forward value of a conv (`z` `[N, C, H, W]`) or linear (`[N, C]`, `fully_connected`)
    /// output (see [`requantize_accumulators`]).
    pub(crate) fn requantize(
        &self,
        z: &Tensor,
        act: Activation,
        fully_connected: bool,
    ) -> Result<Tensor, StageError> {
        requantize_accumulators(z, self, act, fully_connected)
    }
}

/// The forward value of a conv (`z` `[N, C, H, W]`) or linear (`[N, C]`, `fully_connected`)
/// output in the stage's target arithmetic: per element, `acc = round(z / g[c])` with
/// `g[c] = f32(f64(S_in)·f64(S_w[c]))` (saturated to int32), `q = stage_c(acc)`, value
/// `p_out.dequantize(q)`.
fn requantize_accumulators(
    z: &Tensor,
    st: &AccumulatorStage,
    act: Activation,
    fully_connected: bool,
) -> Result<Tensor, StageError> {
    let (target, s_in, w_scales, p_out) = (st.target, st.s_in, &st.w_scales[..], &st.p_out);
    let (v, shape) = host(z)?;
    if shape.len() < 2 {
        return Err(StageError::Shape(format!(
            "output of shape {shape:?}: expected [N, C, …]"
        )));
    }
    let c = shape[1].max(0) as usize;
    let plane: usize = shape[2..].iter().map(|&d| d.max(0) as usize).product();
    if w_scales.len() != 1 && w_scales.len() != c {
        return Err(StageError::Shape(format!(
            "{} weight scales for {c} output channels",
            w_scales.len()
        )));
    }
    let s_out = p_out.scale();
    let multipliers = weights::requant_multipliers(target, s_in, w_scales, s_out, fully_connected)?;
    let reals: Option<Vec<f64>> = if fully_connected {
        w_scales
            .iter()
            .map(|&sw| target.fc_real_scale(s_in, sw, s_out))
            .collect()
    } else {
        None
    };
    let grid: Vec<f64> = w_scales
        .iter()
        .map(|&sw| f64::from((f64::from(s_in) * f64::from(sw)) as f32))
        .collect();
    let clamp = fuse::activation_clamp(act, p_out, target);
    let (lo, hi, zp) = (clamp.lo as i32, clamp.hi as i32, p_out.zero_point());
    let pick = |k: usize| if w_scales.len() == 1 { 0 } else { k };
    let out: Vec<f32> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let ch = pick((i / plane.max(1)) % c.max(1));
            let acc = (f64::from(x) / grid[ch])
                .round()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            let q = match &reals {
                Some(r) => requantize_real(acc, r[ch], zp, lo, hi),
                None => target.requantize(acc, multipliers[ch], zp, lo, hi),
            };
            p_out.dequantize(q)
        })
        .collect();
    tensor_like(&out, &shape, z)
}

/// The forward value of a global average pool over `x` `[N, C, H, W]` (values on the grid of
/// `p`) whose output keeps `p`: the codes `round(x/S) + Z` averaged over `H×W` by `target`'s
/// [`AverageStage`], as `[N, C]` values `p.dequantize(q)`.
pub(crate) fn average_codes(
    x: &Tensor,
    target: Target,
    p: &QuantParams,
) -> Result<Tensor, StageError> {
    let (v, shape) = host(x)?;
    let [n, c, h, w] = shape[..] else {
        return Err(StageError::Shape(format!(
            "input of shape {shape:?}: expected [N, C, H, W]"
        )));
    };
    let stage = AverageStage::new(target, p, p, true)?;
    let plane = (h * w).max(0) as usize;
    let codes: Vec<i32> = v.iter().map(|&x| p.quantize(x)).collect();
    let out: Vec<f32> = codes
        .chunks(plane.max(1))
        .take((n * c).max(0) as usize)
        .map(|cells| p.dequantize(stage.apply(cells)))
        .collect();
    tensor_like(&out, &[n, c], x)
}
