//! Lowering of each runtime [`Op`] to TFLite operators (see the table in the
//! [module docs](super)).

use qat_core::QuantParams;
use qat_int8_runtime::{
    Clamp, Conv2d, DType, FullyConnected, Int8Model, Pool2d, PoolWindow, TensorId,
};

use super::TfliteOptions;
use super::builder::{Builder, Quant};
use super::geometry::{Axis, Pad, fused_activation, resolve};
use super::schema::{
    ActivationFunctionType, AddOptions, BuiltinOperator as B, BuiltinOptions, ConcatenationOptions,
    MaximumMinimumOptions, PadOptions, PadV2Options, Pool2DOptions, ReshapeOptions,
};
use crate::interchange::{ExportFormatError, Format, LowerOps, Lowered, Site, Unsupported};

/// Op versions (TFLite `op_version.cc` for int8 operands).
pub(super) mod version {
    pub const CONV_2D: i32 = 3;
    pub const CONV_2D_GROUPED: i32 = 6;
    pub const DEPTHWISE_CONV_2D: i32 = 3;
    pub const FULLY_CONNECTED: i32 = 4;
    pub const INT8_DEFAULT: i32 = 2; // ADD, CONCATENATION, pools, PAD, PADV2, MAXIMUM, MINIMUM, DEQUANTIZE
    pub const QUANTIZE: i32 = 1;
    pub const RESHAPE: i32 = 1;
}

/// The int8 view of a uint8 tensor's params: `(S, Z − 128)`.
fn int8_quant(q: &QuantParams) -> Quant {
    Quant::tensor(q.scale(), q.zero_point() - 128)
}

pub(super) struct Lowering<'m> {
    pub b: Builder,
    pub(super) site: Site<'m>,
    pub(super) model: &'m Int8Model,
    pub(super) opts: &'m TfliteOptions,
    /// Runtime tensor → TFLite tensor index.
    pub map: Vec<Option<i32>>,
}

impl<'m> Lowering<'m> {
    pub fn new(model: &'m Int8Model, opts: &'m TfliteOptions) -> Self {
        Self {
            b: Builder::new(),
            site: Site::new(model, Format::Tflite),
            model,
            opts,
            map: vec![None; model.tensors.len()],
        }
    }

    pub fn outputs(&self, expose_all_tensors: bool) -> Vec<TensorId> {
        self.site.graph_outputs(expose_all_tensors)
    }

    pub(super) fn refuse(&self, reason: Unsupported) -> ExportFormatError {
        self.site.refuse(reason)
    }

    pub(super) fn params(&self, t: TensorId) -> QuantParams {
        self.site.params(t)
    }

    pub(super) fn hw(&self, t: TensorId) -> [usize; 2] {
        let s = &self.model.tensors[t].shape;
        [s[0], s[1]]
    }

    /// The TFLite tensor of runtime tensor `t` (created on first use).
    pub fn tensor(&mut self, t: TensorId) -> i32 {
        if let Some(i) = self.map[t] {
            return i;
        }
        let info = &self.model.tensors[t];
        let quant = match info.dtype {
            DType::U8 => Some(int8_quant(&self.params(t))),
            DType::F32 => None,
        };
        let name = self.b.name(&info.name);
        let i = self.b.activation(name, &info.shape, quant);
        self.map[t] = Some(i);
        i
    }

    /// A fresh int8 tensor with the params of `like` and per-sample `shape`.
    pub(super) fn scratch(&mut self, like: TensorId, suffix: &str, shape: &[usize]) -> i32 {
        let name = self
            .b
            .name(&format!("{}/{suffix}", self.model.tensors[like].name));
        self.b
            .activation(name, shape, Some(int8_quant(&self.params(like))))
    }

    /// Emits an op whose output is runtime tensor `out`, clamped to `[lo, hi]` (uint8 codes):
    /// the op's own clamp comes from `fused` (`Some`: the op takes a fused activation; `None`: it
    /// saturates to int8), and what it cannot express follows as `MAXIMUM` / `MINIMUM` with a
    /// constant of the output's params. `emit(lowering, activation, dst)` adds the op itself.
    pub(super) fn clamped(
        &mut self,
        out: TensorId,
        lo: i32,
        hi: i32,
        fused: bool,
        emit: impl FnOnce(&mut Self, ActivationFunctionType, i32),
    ) {
        let q = self.params(out);
        let (lo, hi) = (lo - 128, hi - 128);
        let (act, a, b) = if fused {
            fused_activation(lo, hi, q.scale(), q.zero_point() - 128)
        } else {
            (ActivationFunctionType::None, -128, 127)
        };
        let shape = self.model.tensors[out].shape.clone();
        let final_t = self.tensor(out);
        let (lo_step, hi_step) = ((a < lo).then_some(lo), (hi < b).then_some(hi));
        if lo_step.is_none() && hi_step.is_none() {
            emit(self, act, final_t);
            return;
        }
        let dst = self.scratch(out, "unclamped", &shape);
        emit(self, act, dst);
        let name = self.model.tensors[out].name.clone();
        self.clamp_codes(dst, lo_step, hi_step, &q, &shape, &name, Some(final_t));
    }

    /// `MAXIMUM(x, lo)` then `MINIMUM(·, hi)` on int8 codes (each only when given), with
    /// constants of the params `q`; the last op writes `dst` (or a new tensor). Returns the
    /// clamped tensor.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn clamp_codes(
        &mut self,
        mut x: i32,
        lo: Option<i32>,
        hi: Option<i32>,
        q: &QuantParams,
        shape: &[usize],
        name: &str,
        dst: Option<i32>,
    ) -> i32 {
        let steps: Vec<_> = [(B::Maximum, lo, "max"), (B::Minimum, hi, "min")]
            .into_iter()
            .filter_map(|(op, bound, what)| bound.map(|b| (op, b, what)))
            .collect();
        for (i, &(op, bound, what)) in steps.iter().enumerate() {
            let c = self.b.const_i8(
                &format!("{name}/{what}"),
                &[],
                &[bound as i8],
                int8_quant(q),
            );
            let y = match dst {
                Some(d) if i + 1 == steps.len() => d,
                _ => {
                    let tname = self.b.name(&format!("{name}/{what}"));
                    self.b.activation(tname, shape, Some(int8_quant(q)))
                }
            };
            let opts = BuiltinOptions::MaximumMinimumOptions(Box::new(MaximumMinimumOptions {}));
            self.b
                .op(op, version::INT8_DEFAULT, &[x, c], &[y], Some(opts));
            x = y;
        }
        x
    }

    /// Pads `input` explicitly (`PAD` with the zero point, or `PADV2` with `value` for max
    /// pooling) and returns the padded tensor.
    pub(super) fn pad(&mut self, input: TensorId, padding: [usize; 4], value: Option<i8>) -> i32 {
        let [h, w, c] = [0, 1, 2].map(|i| self.model.tensors[input].shape[i]);
        let [t, l, bo, r] = padding.map(|p| p as i32);
        let name = format!("{}/paddings", self.site.layer);
        let pads = self
            .b
            .const_i32(&name, &[4, 2], &[0, 0, t, bo, l, r, 0, 0], None);
        let padded_shape = [h + padding[0] + padding[2], w + padding[1] + padding[3], c];
        let layer = self.site.layer.clone();
        let name = self.b.name(&format!("{layer}/padded"));
        let q = int8_quant(&self.params(input));
        let out = self.b.activation(name, &padded_shape, Some(q.clone()));
        let x = self.tensor(input);
        match value {
            None => {
                let opts = BuiltinOptions::PadOptions(Box::new(PadOptions {}));
                self.b.op(
                    B::Pad,
                    version::INT8_DEFAULT,
                    &[x, pads],
                    &[out],
                    Some(opts),
                );
            }
            Some(v) => {
                let name = format!("{layer}/pad_value");
                let cv = self.b.const_i8(&name, &[], &[v], q);
                let opts = BuiltinOptions::PadV2Options(Box::new(PadV2Options {}));
                self.b.op(
                    B::Padv2,
                    version::INT8_DEFAULT,
                    &[x, pads, cv],
                    &[out],
                    Some(opts),
                );
            }
        }
        out
    }

    /// How TFLite pads the window `w` from `input` to `output`.
    pub(super) fn window(&self, input: TensorId, output: TensorId, w: PoolWindow) -> Pad {
        let (i, o) = (self.hw(input), self.hw(output));
        let axis = |a: usize| Axis {
            input: i[a],
            output: o[a],
            kernel: w.kernel[a],
            stride: w.stride[a],
            pad_before: w.padding[a],
        };
        resolve(axis(0), axis(1))
    }

    fn same_params(&self, input: TensorId, output: TensorId) -> Result<(), ExportFormatError> {
        let (qi, qo) = (self.params(input), self.params(output));
        if qi == qo {
            return Ok(());
        }
        Err(self.refuse(Unsupported::PoolRequantizes {
            in_scale: qi.scale(),
            in_zero_point: qi.zero_point(),
            out_scale: qo.scale(),
            out_zero_point: qo.zero_point(),
        }))
    }

    fn pool(&mut self, op: B, x: i32, y: i32, pad: Pad, kernel: [usize; 2], stride: [usize; 2]) {
        let opts = BuiltinOptions::Pool2DOptions(Box::new(Pool2DOptions {
            padding: pad.padding(),
            stride_w: stride[1] as i32,
            stride_h: stride[0] as i32,
            filter_width: kernel[1] as i32,
            filter_height: kernel[0] as i32,
            fused_activation_function: ActivationFunctionType::None,
        }));
        self.b.op(op, version::INT8_DEFAULT, &[x], &[y], Some(opts));
    }

    /// `RESHAPE` of TFLite tensor `x` into runtime tensor `output`, shape `[−1, …per-sample]`.
    fn reshape_into(&mut self, x: i32, output: TensorId) {
        let shape = self.model.tensors[output].shape.clone();
        let mut new_shape = vec![-1i32];
        new_shape.extend(shape.iter().map(|&d| d as i32));
        let name = format!("{}/shape", self.site.layer);
        let s = self
            .b
            .const_i32(&name, &[new_shape.len()], &new_shape, None);
        let y = self.tensor(output);
        let opts = BuiltinOptions::ReshapeOptions(Box::new(ReshapeOptions {
            new_shape: Some(new_shape),
        }));
        self.b
            .op(B::Reshape, version::RESHAPE, &[x, s], &[y], Some(opts));
    }
}

impl<'m> LowerOps<'m> for Lowering<'m> {
    fn site(&mut self) -> &mut Site<'m> {
        &mut self.site
    }

    fn quantize(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let x = self.tensor(input);
        let q = self.params(output);
        self.clamped(output, q.qmin(), q.qmax(), false, |s, _, dst| {
            s.b.op(B::Quantize, version::QUANTIZE, &[x], &[dst], None)
        });
        Ok(())
    }

    fn dequantize(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let (x, y) = (self.tensor(input), self.tensor(output));
        self.b
            .op(B::Dequantize, version::INT8_DEFAULT, &[x], &[y], None);
        Ok(())
    }

    fn conv(&mut self, c: &Conv2d) -> Lowered {
        self.emit_conv(c)
    }

    fn fully_connected(&mut self, f: &FullyConnected) -> Lowered {
        self.emit_fully_connected(f)
    }

    fn add(&mut self, a: TensorId, b: TensorId, output: TensorId, clamp: Clamp) -> Lowered {
        let (x, y) = (self.tensor(a), self.tensor(b));
        self.clamped(
            output,
            clamp.lo as i32,
            clamp.hi as i32,
            true,
            |s, act, dst| {
                let opts = BuiltinOptions::AddOptions(Box::new(AddOptions {
                    fused_activation_function: act,
                    pot_scale_int16: false,
                }));
                s.b.op(B::Add, version::INT8_DEFAULT, &[x, y], &[dst], Some(opts))
            },
        );
        Ok(())
    }

    fn concat(&mut self, inputs: &[TensorId], output: TensorId) -> Lowered {
        let qo = self.params(output);
        let mut xs = Vec::with_capacity(inputs.len());
        for &t in inputs {
            if self.params(t) == qo {
                xs.push(self.tensor(t));
                continue;
            }
            // TFLite's int8 concatenation takes inputs with the output's params: requantize first
            // (QUANTIZE int8 → int8: M = S_in/S_out, saturating), then clamp to the output grid.
            let x = self.tensor(t);
            let shape = self.model.tensors[t].shape.clone();
            let name = self
                .b
                .name(&format!("{}/requantized", self.model.tensors[t].name));
            let y = self.b.activation(name, &shape, Some(int8_quant(&qo)));
            let (lo, hi) = (qo.qmin() - 128, qo.qmax() - 128);
            self.b.op(B::Quantize, version::QUANTIZE, &[x], &[y], None);
            let name = format!("{}/requantized", self.model.tensors[t].name);
            let (lo, hi) = ((lo > -128).then_some(lo), (hi < 127).then_some(hi));
            let y = self.clamp_codes(y, lo, hi, &qo, &shape, &name, None);
            xs.push(y);
        }
        let y = self.tensor(output);
        let axis = self.model.tensors[output].shape.len() as i32; // last axis of [N, …]
        let opts = BuiltinOptions::ConcatenationOptions(Box::new(ConcatenationOptions {
            axis,
            fused_activation_function: ActivationFunctionType::None,
        }));
        self.b.op(
            B::Concatenation,
            version::INT8_DEFAULT,
            &xs,
            &[y],
            Some(opts),
        );
        Ok(())
    }

    fn avg_pool(&mut self, p: &Pool2d) -> Lowered {
        let (input, output, w) = (p.input, p.output, p.window());
        self.same_params(input, output)?;
        let pad = self.window(input, output, w);
        if pad == Pad::Explicit {
            let padding = w.padding;
            return Err(self.refuse(Unsupported::PoolPadding { padding }));
        }
        let (x, y) = (self.tensor(input), self.tensor(output));
        self.pool(B::AveragePool2d, x, y, pad, w.kernel, w.stride);
        Ok(())
    }

    fn global_avg_pool(&mut self, input: TensorId, output: TensorId) -> Lowered {
        self.same_params(input, output)?;
        let [h, w] = self.hw(input);
        let c = self.model.tensors[output].shape[0];
        let x = self.tensor(input);
        let pooled = self.scratch(output, "pooled", &[1, 1, c]);
        self.pool(B::AveragePool2d, x, pooled, Pad::Valid, [h, w], [1, 1]);
        self.reshape_into(pooled, output);
        Ok(())
    }

    fn max_pool(&mut self, p: &Pool2d) -> Lowered {
        let (input, output, w) = (p.input, p.output, p.window());
        let pad = self.window(input, output, w);
        let x = if pad == Pad::Explicit {
            // Padded cells never win a max: pad with the smallest code.
            self.pad(input, w.padding, Some(i8::MIN))
        } else {
            self.tensor(input)
        };
        let y = self.tensor(output);
        self.pool(B::MaxPool2d, x, y, pad, w.kernel, w.stride);
        Ok(())
    }

    fn reshape(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let x = self.tensor(input);
        self.reshape_into(x, output);
        Ok(())
    }
}
