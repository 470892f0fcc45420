//! Fake quantization with parameters held in tensors on the tensor's device ([`DeviceQParams`]), so
//! that a training step never reads them back to the host nor uploads them: on a GPU each such read
//! or upload is a synchronization.
//!
//! Same formula, values, masks and gradients as the host-parameter ops of [`crate::fake_quant`]
//! (tested bit for bit): `y = S·(clamp(round_half_even(x·(1/S)) + Z, qmin, qmax) − Z)`, `1/S` rounded
//! to f32 once. On the CPU the one-pass kernels read `S` and `Z` from the parameter tensors' memory
//! (host memory: no transfer); elsewhere the op is composed from libtorch ops taking the tensors, or
//! is libtorch's `fake_quantize_per_tensor_affine` overload with tensor parameters (GPU) and
//! `fake_quantize_per_channel_affine`.

use qat_core::QuantRange;
use tch::{Device, Kind, Tensor};

use crate::FakeQuantError;
use crate::fake_quant::{
    Ste, check_channels, check_f32, clamp_then_fake_quant, composed_fake_quant, fq_parts_cpu,
    fused_per_channel, fused_with_ste,
};

/// Quantization parameters in tensors: scales `S` (`f32[C]`), zero points `Z` (`i32[C]`, and the
/// same values as `f32[C]` for arithmetic), the integer grid, and the channel axis (`None`: per
/// tensor, `C = 1`). Built on the device by the observers from their device-resident ranges with
/// qat-core's formulas (bit for bit); [`DeviceQParams::to_host`] reads them back (export, tests).
#[derive(Debug)]
pub struct DeviceQParams {
    scale: Tensor,
    zero_point: Tensor,
    zero_point_f: Tensor,
    range: QuantRange,
    axis: Option<usize>,
}

impl DeviceQParams {
    /// Parameters from contiguous 1-D tensors `scale` (`f32[C]`) and `zero_point` (any kind holding
    /// integers; converted to `i32` and `f32`), on one device; per tensor (`axis = None`) needs
    /// `C = 1`. Only shapes and kinds are checked (no value is read).
    ///
    /// ```
    /// use qat_autograd::{DeviceQParams, Ste, fake_quant_device};
    /// use qat_core::QuantRange;
    /// use tch::Tensor;
    /// let p = DeviceQParams::new(Tensor::from_slice(&[0.01f32]), Tensor::from_slice(&[0i32]),
    ///     QuantRange::unsigned(8)?, None)?;
    /// let y = fake_quant_device(&Tensor::from_slice(&[0.004f32, 0.016, 3.0]), &p, Ste::Clipped)?;
    /// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.02, 2.55]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(
        scale: Tensor,
        zero_point: Tensor,
        range: QuantRange,
        axis: Option<usize>,
    ) -> Result<Self, FakeQuantError> {
        const OP: &str = "DeviceQParams::new";
        let torch = || FakeQuantError::torch(OP);
        let c = scale.size();
        if c.len() != 1 || zero_point.size() != c || (axis.is_none() && c != [1]) {
            return Err(FakeQuantError::ParamShape {
                op: OP,
                what: "scale and zero_point",
                expected: vec![if axis.is_none() {
                    1
                } else {
                    c.first().copied().unwrap_or(0)
                }],
                got: zero_point.size(),
            });
        }
        let scale = scale
            .f_to_kind(Kind::Float)
            .and_then(|t| t.f_contiguous())
            .map_err(torch())?;
        let zp_i = zero_point
            .f_to_kind(Kind::Int)
            .and_then(|t| t.f_contiguous())
            .map_err(torch())?;
        let zp_f = zero_point
            .f_to_kind(Kind::Float)
            .and_then(|t| t.f_contiguous())
            .map_err(torch())?;
        Ok(Self {
            scale,
            zero_point: zp_i,
            zero_point_f: zp_f,
            range,
            axis,
        })
    }

    /// qat-core's parameters `p` uploaded to `device` (one transfer; not for a training step).
    pub fn from_host(p: &crate::TensorQParams, device: Device) -> Result<Self, FakeQuantError> {
        const OP: &str = "DeviceQParams::from_host";
        let torch = || FakeQuantError::torch(OP);
        let (s, z, range, axis): (Vec<f32>, Vec<i32>, _, _) = match p {
            crate::TensorQParams::PerTensor(q) => {
                (vec![q.scale()], vec![q.zero_point()], q.range(), None)
            }
            crate::TensorQParams::PerChannel(q) => (
                q.scales().to_vec(),
                q.zero_points().to_vec(),
                q.range(),
                Some(q.axis()),
            ),
        };
        let s = upload(&s, device).map_err(torch())?;
        let z = upload(&z, device).map_err(torch())?;
        Self::new(s, z, range, axis)
    }

    /// The scales `S` (`f32[C]`).
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// The zero points `Z` (`i32[C]`).
    pub fn zero_point(&self) -> &Tensor {
        &self.zero_point
    }

    /// The integer grid.
    pub fn range(&self) -> QuantRange {
        self.range
    }

    /// The channel axis (`None`: per tensor).
    pub fn axis(&self) -> Option<usize> {
        self.axis
    }

    /// Number of `(S, Z)` pairs.
    pub fn len(&self) -> usize {
        self.scale.size()[0] as usize
    }

    /// Whether there are no parameters (never, for parameters built by the observers).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parameters as qat-core values, validated. Reads them to the host (export, tests).
    pub fn to_host(&self) -> Result<crate::TensorQParams, FakeQuantError> {
        const OP: &str = "DeviceQParams::to_host";
        let s = crate::host_read::vec_f32(&self.scale, "device qparams scale")
            .map_err(FakeQuantError::torch(OP))?;
        let z = crate::host_read::vec_f32(&self.zero_point_f, "device qparams zero point")
            .map_err(FakeQuantError::torch(OP))?;
        let ps = s
            .iter()
            .zip(&z)
            .map(|(&s, &z)| qat_core::QuantParams::new(s, z as i32, self.range))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FakeQuantError::quant(OP))?;
        match self.axis {
            None => Ok(crate::TensorQParams::PerTensor(ps[0])),
            Some(a) => qat_core::PerChannelParams::from_params(&ps, a)
                .map(crate::TensorQParams::PerChannel)
                .map_err(FakeQuantError::quant(OP)),
        }
    }

    /// `[1/S, S, qmin − Z, qmax − Z]` of per-tensor parameters on the CPU, read from the tensors'
    /// (host) memory for the one-pass kernels; `None` on other devices and with the host fast paths
    /// off ([`crate::cpu`]).
    fn cpu_consts(&self) -> Option<[f32; 4]> {
        if self.axis.is_some() {
            return None;
        }
        let first = |v: &[f32]| v.first().copied();
        let s = crate::cpu::with_slice(&self.scale, first)??;
        let z = crate::cpu::with_slice(&self.zero_point_f, first)??;
        Some([
            1.0f32 / s,
            s,
            self.range.qmin as f32 - z,
            self.range.qmax as f32 - z,
        ])
    }
}

/// The host values `v` as a 1-D tensor on `device`.
pub(crate) fn upload<T: tch::kind::Element>(
    v: &[T],
    device: Device,
) -> Result<Tensor, tch::TchError> {
    Tensor::f_from_slice(v).and_then(|t| t.f_to_device(device))
}

/// Fake quantization with device-resident parameters, per tensor or per channel (dispatch on
/// [`DeviceQParams::axis`]); the values and gradients of [`crate::fake_quant`] with the same
/// parameters read to the host. `x` must be `f32`.
pub fn fake_quant_device(
    x: &Tensor,
    p: &DeviceQParams,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    match p.axis {
        None => fq_per_tensor(x, p, ste, "fake_quant_device"),
        Some(axis) => fq_per_channel(x, p, axis, ste),
    }
}

/// `FQ(clamp(x, lo, hi))` with device-resident per-tensor parameters: the values and gradients of
/// [`crate::clamp_fake_quant_per_tensor`] (fused ReLU/ReLU6 + output fake quant).
pub fn clamp_fake_quant_device(
    x: &Tensor,
    lo: f32,
    hi: f32,
    p: &DeviceQParams,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "clamp_fake_quant_device";
    per_tensor_only(OP, p)?;
    clamp_then_fake_quant(
        OP,
        x,
        [lo, hi],
        ste,
        || p.cpu_consts(),
        |c| fq_per_tensor(c, p, ste, OP),
    )
}

fn per_tensor_only(op: &'static str, p: &DeviceQParams) -> Result<(), FakeQuantError> {
    if p.axis.is_some() {
        return Err(FakeQuantError::ParamShape {
            op,
            what: "per-tensor parameters",
            expected: vec![1],
            got: p.scale.size(),
        });
    }
    Ok(())
}

fn fq_per_tensor(
    x: &Tensor,
    p: &DeviceQParams,
    ste: Ste,
    op: &'static str,
) -> Result<Tensor, FakeQuantError> {
    check_f32(op, x)?;
    per_tensor_only(op, p)?;
    let torch = || FakeQuantError::torch(op);
    if x.device() != Device::Cpu {
        // libtorch's fused kernel with tensor parameters: one launch, mask cached for the backward.
        let run = || {
            x.f_fake_quantize_per_tensor_affine_tensor_qparams(
                &p.scale,
                &p.zero_point,
                i64::from(p.range.qmin),
                i64::from(p.range.qmax),
            )
        };
        return fused_with_ste(x, ste, run).map_err(torch());
    }
    composed_fake_quant(x, ste, || p.cpu_consts(), |mask| parts(x, p, mask)).map_err(torch())
}

/// `(FQ(x), clipped-STE mask if want_mask)` without gradient: the one-pass kernel on a contiguous
/// CPU tensor (host fast paths on), else composed from libtorch ops on the parameter tensors
/// (`t = round_half_even(x·(1/S))`, NaN → 0, `t + Z` clamped to the grid, `m = [clamped = t + Z]`,
/// `FQ = (c − Z)·S`, each op exact in f32 but the same two roundings as qat-core's).
fn parts(
    x: &Tensor,
    p: &DeviceQParams,
    want_mask: bool,
) -> Result<(Tensor, Option<Tensor>), tch::TchError> {
    if let Some(r) = fq_parts_cpu(x, || p.cpu_consts(), want_mask) {
        return r;
    }
    tch::no_grad(|| {
        let xd = x.f_detach()?;
        let inv = p.scale.f_reciprocal()?;
        let mut t = xd.f_mul(&inv)?;
        let _ = t.f_round_()?;
        let _ = t.f_nan_to_num_(0.0, None, None)?;
        let _ = t.f_add_(&p.zero_point_f)?;
        let mut c = t.f_clamp(i64::from(p.range.qmin), i64::from(p.range.qmax))?;
        let mask = if want_mask {
            Some(c.f_eq_tensor(&t)?.f_to_kind(Kind::Float)?)
        } else {
            None
        };
        let _ = c.f_sub_(&p.zero_point_f)?;
        let _ = c.f_mul_(&p.scale)?;
        Ok((c, mask))
    })
}

fn fq_per_channel(
    x: &Tensor,
    p: &DeviceQParams,
    axis: usize,
    ste: Ste,
) -> Result<Tensor, FakeQuantError> {
    const OP: &str = "fake_quant_device (per channel)";
    check_f32(OP, x)?;
    check_channels(OP, x, axis, p.len())?;
    fused_per_channel(OP, x, [&p.scale, &p.zero_point], axis, p.range, ste)
}
