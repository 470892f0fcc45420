//! Per-op checks of [`Int8Model::validate`]: each op's tensors, geometry, weights and derived
//! multipliers.

use qat_core::target::add_multipliers;
use qat_core::{QuantParams, fixed_point::QuantizedMultiplier};

use super::{
    MAX_POOL_WINDOW, MAX_REDUCTION, MAX_SPATIAL, ValidationError, conv_out_extent, elements,
};
use crate::kernels::add::Rescale;
use crate::kernels::pool::pool_multiplier;
use crate::model::{
    Clamp, Conv2d, DType, FullyConnected, Int8Model, Op, Pool2d, TensorId, TensorInfo, Weights,
};

pub(super) struct Ctx<'m> {
    pub(super) model: &'m Int8Model,
    pub(super) op: usize,
    pub(super) kind: &'static str,
}

impl Ctx<'_> {
    pub(super) fn err(&self, field: &'static str, problem: impl Into<String>) -> ValidationError {
        ValidationError::Op {
            op: self.op,
            kind: self.kind,
            field,
            problem: problem.into(),
        }
    }

    fn tensor(&self, field: &'static str, id: TensorId) -> Result<&TensorInfo, ValidationError> {
        self.model.tensors.get(id).ok_or_else(|| {
            self.err(
                field,
                format!(
                    "tensor index {id} out of range ({} tensors)",
                    self.model.tensors.len()
                ),
            )
        })
    }

    fn u8_tensor(
        &self,
        field: &'static str,
        id: TensorId,
    ) -> Result<(&TensorInfo, QuantParams), ValidationError> {
        let t = self.tensor(field, id)?;
        match (t.dtype, t.quant) {
            (DType::U8, Some(q)) => Ok((t, q)),
            _ => Err(self.err(field, format!("tensor {id} ('{}') must be U8", t.name))),
        }
    }

    fn hwc(&self, field: &'static str, t: &TensorInfo) -> Result<[usize; 3], ValidationError> {
        match t.shape.as_slice() {
            &[h, w, c] => Ok([h, w, c]),
            s => Err(self.err(
                field,
                format!("tensor '{}' must be [H, W, C], got {s:?}", t.name),
            )),
        }
    }

    fn multipliers(
        &self,
        field: &'static str,
        ms: &[QuantizedMultiplier],
        out_ch: usize,
    ) -> Result<(), ValidationError> {
        if ms.len() != 1 && ms.len() != out_ch {
            return Err(self.err(
                field,
                format!(
                    "{} multipliers for {out_ch} output channels (need 1 or {out_ch})",
                    ms.len()
                ),
            ));
        }
        for (c, m) in ms.iter().enumerate() {
            QuantizedMultiplier::from_parts(m.multiplier(), m.shift())
                .map_err(|e| self.err(field, format!("channel {c}: {e}")))?;
        }
        Ok(())
    }

    fn weights(
        &self,
        w: &Weights,
        expected_len: usize,
        out_ch: usize,
    ) -> Result<(), ValidationError> {
        let (len, scales) = match w {
            Weights::Int8 { data, scales } => (data.len(), scales),
            Weights::Uint8 {
                data,
                scales,
                zero_points,
            } => {
                if zero_points.len() != scales.len() {
                    return Err(self.err(
                        "weights.zero_points",
                        format!(
                            "{} zero points for {} scales",
                            zero_points.len(),
                            scales.len()
                        ),
                    ));
                }
                if let Some((c, z)) = zero_points
                    .iter()
                    .enumerate()
                    .find(|(_, z)| !(0..=255).contains(*z))
                {
                    return Err(self.err(
                        "weights.zero_points",
                        format!("channel {c}: zero point {z} outside [0, 255]"),
                    ));
                }
                (data.len(), scales)
            }
        };
        if len != expected_len {
            return Err(self.err(
                "weights.data",
                format!("{len} weight codes, weight_shape needs {expected_len}"),
            ));
        }
        if scales.len() != 1 && scales.len() != out_ch {
            return Err(self.err(
                "weights.scales",
                format!(
                    "{} scales for {out_ch} output channels (need 1 or {out_ch})",
                    scales.len()
                ),
            ));
        }
        if let Some((c, s)) = scales
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(self.err(
                "weights.scales",
                format!("channel {c}: scale {s} must be finite and > 0"),
            ));
        }
        Ok(())
    }

    fn clamp(&self, lo: u8, hi: u8) -> Result<(), ValidationError> {
        if lo > hi {
            return Err(self.err("clamp", format!("lo {lo} > hi {hi}")));
        }
        Ok(())
    }

    fn conv(&self, c: &Conv2d) -> Result<(), ValidationError> {
        let (tin, _) = self.u8_tensor("input", c.input)?;
        let (tout, _) = self.u8_tensor("output", c.output)?;
        let [h, w, cin] = self.hwc("input", tin)?;
        let [ho, wo, cout] = self.hwc("output", tout)?;
        let [wo_ch, kh, kw, wi] = c.weight_shape;
        if c.groups == 0 || cin % c.groups != 0 || cout % c.groups != 0 {
            return Err(self.err(
                "groups",
                format!(
                    "groups {} must divide C_in {cin} and C_out {cout}",
                    c.groups
                ),
            ));
        }
        if wo_ch != cout || wi.checked_mul(c.groups) != Some(cin) || kh == 0 || kw == 0 {
            return Err(self.err(
                "weight_shape",
                format!(
                    "{:?} inconsistent with C_in {cin}, C_out {cout}, groups {}",
                    c.weight_shape, c.groups
                ),
            ));
        }
        for (field, v) in [
            ("stride", c.stride[0]),
            ("stride", c.stride[1]),
            ("dilation", c.dilation[0]),
            ("dilation", c.dilation[1]),
        ] {
            if v == 0 || v > MAX_SPATIAL {
                return Err(self.err(field, format!("{v} must be in 1..={MAX_SPATIAL}")));
            }
        }
        if kh > MAX_SPATIAL || kw > MAX_SPATIAL || c.padding.iter().any(|&p| p > MAX_SPATIAL) {
            return Err(self.err(
                "padding",
                format!("kernel/padding larger than {MAX_SPATIAL}"),
            ));
        }
        let k = kh
            .checked_mul(kw)
            .and_then(|v| v.checked_mul(wi))
            .filter(|&k| k <= MAX_REDUCTION)
            .ok_or_else(|| {
                self.err(
                    "weight_shape",
                    format!("reduction kh·kw·C_in/groups exceeds {MAX_REDUCTION}"),
                )
            })?;
        let want_h = conv_out_extent(
            h,
            kh,
            c.stride[0],
            c.dilation[0],
            c.padding[0],
            c.padding[2],
        );
        let want_w = conv_out_extent(
            w,
            kw,
            c.stride[1],
            c.dilation[1],
            c.padding[1],
            c.padding[3],
        );
        if want_h != Some(ho) || want_w != Some(wo) {
            return Err(self.err(
                "output",
                format!(
                    "output is {ho}×{wo} but input {h}×{w}, kernel {kh}×{kw}, stride {:?}, dilation {:?}, padding {:?} give {want_h:?}×{want_w:?}",
                    c.stride, c.dilation, c.padding
                ),
            ));
        }
        let n = cout.saturating_mul(k);
        self.layer_params(&c.weights, n, &c.bias, &c.multipliers, c.clamp, cout)
    }

    /// The checks a conv and a fully connected layer share: `n` weights for `cout` output
    /// channels, one bias per channel, the multipliers and the clamp.
    fn layer_params(
        &self,
        weights: &Weights,
        n: usize,
        bias: &[i32],
        multipliers: &[QuantizedMultiplier],
        clamp: Clamp,
        cout: usize,
    ) -> Result<(), ValidationError> {
        self.weights(weights, n, cout)?;
        if bias.len() != cout {
            return Err(self.err(
                "bias",
                format!("{} biases for {cout} output channels", bias.len()),
            ));
        }
        self.multipliers("multipliers", multipliers, cout)?;
        self.clamp(clamp.lo, clamp.hi)
    }

    /// `t` (the op's `field`) holds exactly `n` elements, the layer's `what`.
    fn holds(
        &self,
        field: &'static str,
        t: &TensorInfo,
        what: &str,
        n: usize,
    ) -> Result<(), ValidationError> {
        if elements(&t.shape) == Some(n) {
            return Ok(());
        }
        let problem = format!(
            "{field} shape {:?} does not hold {what} = {n} elements",
            t.shape
        );
        Err(self.err(field, problem))
    }

    fn fc(&self, f: &FullyConnected) -> Result<(), ValidationError> {
        let (tin, _) = self.u8_tensor("input", f.input)?;
        let (tout, _) = self.u8_tensor("output", f.output)?;
        let [cout, cin] = f.weight_shape;
        if cin == 0 || cout == 0 || cin > MAX_REDUCTION {
            return Err(self.err(
                "weight_shape",
                format!(
                    "{:?}: C_in must be in 1..={MAX_REDUCTION}, C_out ≥ 1",
                    f.weight_shape
                ),
            ));
        }
        self.holds("input", tin, "C_in", cin)?;
        self.holds("output", tout, "C_out", cout)?;
        let n = cout.saturating_mul(cin);
        self.layer_params(&f.weights, n, &f.bias, &f.multipliers, f.clamp, cout)
    }

    /// Checks a pool's tensors and window; gives the input and output params.
    fn pool(&self, p: &Pool2d) -> Result<(QuantParams, QuantParams), ValidationError> {
        let Pool2d {
            input,
            output,
            kernel,
            stride,
            padding,
        } = *p;
        let (tin, qin) = self.u8_tensor("input", input)?;
        let (tout, qout) = self.u8_tensor("output", output)?;
        let [h, w, c] = self.hwc("input", tin)?;
        let [ho, wo, co] = self.hwc("output", tout)?;
        if kernel
            .iter()
            .chain(stride.iter())
            .any(|&v| v == 0 || v > MAX_SPATIAL)
        {
            return Err(self.err(
                "kernel",
                format!("kernel {kernel:?} and stride {stride:?} must be in 1..={MAX_SPATIAL}"),
            ));
        }
        if kernel[0].saturating_mul(kernel[1]) > MAX_POOL_WINDOW {
            return Err(self.err(
                "kernel",
                format!("window {kernel:?} larger than {MAX_POOL_WINDOW} cells"),
            ));
        }
        // Padding smaller than the window guarantees no window is entirely padding.
        if padding[0] >= kernel[0]
            || padding[2] >= kernel[0]
            || padding[1] >= kernel[1]
            || padding[3] >= kernel[1]
        {
            return Err(self.err(
                "padding",
                format!("padding {padding:?} must be smaller than kernel {kernel:?}"),
            ));
        }
        let want_h = conv_out_extent(h, kernel[0], stride[0], 1, padding[0], padding[2]);
        let want_w = conv_out_extent(w, kernel[1], stride[1], 1, padding[1], padding[3]);
        if want_h != Some(ho) || want_w != Some(wo) || c != co {
            return Err(self.err(
                "output",
                format!("output {:?} but input {:?}, kernel {kernel:?}, stride {stride:?}, padding {padding:?} give [{want_h:?}, {want_w:?}, {c}]", tout.shape, tin.shape),
            ));
        }
        Ok((qin, qout))
    }

    /// An average's `M' = S_in/(S_out·count)` is largest for `count = 1`; every smaller one is
    /// representable or flushes to 0 (exactly, see `pool_multiplier`).
    fn average_multiplier(
        &self,
        qi: &QuantParams,
        qo: &QuantParams,
    ) -> Result<(), ValidationError> {
        if qi != qo {
            pool_multiplier(qi, qo, 1).map_err(|e| {
                self.err(
                    "output",
                    format!("no valid average multiplier S_in/(S_out·count): {e}"),
                )
            })?;
        }
        Ok(())
    }

    pub(super) fn check(&self, op: &Op) -> Result<(), ValidationError> {
        match op {
            Op::Quantize { input, output } | Op::Dequantize { input, output } => {
                let quantize = matches!(op, Op::Quantize { .. });
                let ti = self.tensor("input", *input)?;
                let to = self.tensor("output", *output)?;
                let (want_in, want_out) = if quantize {
                    (DType::F32, DType::U8)
                } else {
                    (DType::U8, DType::F32)
                };
                if ti.dtype != want_in {
                    return Err(
                        self.err("input", format!("must be {want_in:?}, is {:?}", ti.dtype))
                    );
                }
                if to.dtype != want_out {
                    return Err(
                        self.err("output", format!("must be {want_out:?}, is {:?}", to.dtype))
                    );
                }
                if ti.shape != to.shape {
                    return Err(self.err(
                        "output",
                        format!("shape {:?} differs from input {:?}", to.shape, ti.shape),
                    ));
                }
                Ok(())
            }
            Op::Conv2d(c) => self.conv(c),
            Op::FullyConnected(f) => self.fc(f),
            Op::Add {
                a,
                b,
                output,
                clamp,
            } => {
                let (ta, qa) = self.u8_tensor("a", *a)?;
                let (tb, qb) = self.u8_tensor("b", *b)?;
                let (to, qo) = self.u8_tensor("output", *output)?;
                if ta.shape != tb.shape || ta.shape != to.shape {
                    return Err(self.err(
                        "b",
                        format!(
                            "shapes differ: a {:?}, b {:?}, output {:?}",
                            ta.shape, tb.shape, to.shape
                        ),
                    ));
                }
                add_multipliers(&qa, &qb, &qo).map_err(|e| {
                    self.err(
                        "output",
                        format!("scales give no valid add multiplier: {e}"),
                    )
                })?;
                self.clamp(clamp.lo, clamp.hi)
            }
            Op::Concat { inputs, output } => {
                let (to, qo) = self.u8_tensor("output", *output)?;
                if inputs.is_empty() {
                    return Err(self.err("inputs", "concat needs at least one input"));
                }
                let rank = to.shape.len();
                let mut channels = 0usize;
                for &i in inputs {
                    let (ti, qi) = self.u8_tensor("inputs", i)?;
                    if ti.shape.len() != rank || ti.shape[..rank - 1] != to.shape[..rank - 1] {
                        return Err(self.err(
                            "inputs",
                            format!(
                                "input {i} shape {:?} incompatible with output {:?}",
                                ti.shape, to.shape
                            ),
                        ));
                    }
                    channels = channels.saturating_add(ti.shape[rank - 1]);
                    Rescale::new(&qi, &qo, self.model.rounding).map_err(|e| {
                        self.err(
                            "inputs",
                            format!("input {i}: no valid rescale multiplier: {e}"),
                        )
                    })?;
                }
                if channels != to.shape[rank - 1] {
                    return Err(self.err(
                        "output",
                        format!(
                            "inputs have {channels} channels in total, output has {}",
                            to.shape[rank - 1]
                        ),
                    ));
                }
                Ok(())
            }
            Op::AvgPool2d(p) => {
                let (qi, qo) = self.pool(p)?;
                self.average_multiplier(&qi, &qo)
            }
            Op::MaxPool2d(p) => {
                let (qi, qo) = self.pool(p)?;
                if qi != qo {
                    return Err(self.err(
                        "output",
                        "max pool input and output must share quantization params",
                    ));
                }
                Ok(())
            }
            Op::GlobalAvgPool { input, output } => {
                let (ti, qi) = self.u8_tensor("input", *input)?;
                let (to, qo) = self.u8_tensor("output", *output)?;
                let [h, w, c] = self.hwc("input", ti)?;
                if h.saturating_mul(w) > MAX_POOL_WINDOW {
                    return Err(self.err(
                        "input",
                        format!("{h}×{w} window larger than {MAX_POOL_WINDOW} cells"),
                    ));
                }
                if elements(&to.shape) != Some(c) || to.shape.last() != Some(&c) {
                    return Err(self.err(
                        "output",
                        format!("output {:?} must hold the {c} channels", to.shape),
                    ));
                }
                self.average_multiplier(&qi, &qo)
            }
            Op::Reshape { input, output } => {
                let ti = self.tensor("input", *input)?;
                let to = self.tensor("output", *output)?;
                if elements(&ti.shape) != elements(&to.shape) {
                    return Err(self.err(
                        "output",
                        format!(
                            "shape {:?} has a different element count from input {:?}",
                            to.shape, ti.shape
                        ),
                    ));
                }
                if ti.dtype != to.dtype || ti.quant != to.quant {
                    return Err(
                        self.err("output", "reshape must keep dtype and quantization params")
                    );
                }
                Ok(())
            }
        }
    }
}
