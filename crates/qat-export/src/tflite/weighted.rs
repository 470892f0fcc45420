//! The layers with weights — conv (plain, depthwise, grouped) and fully connected — and the
//! checks that TFLite derives from the written scales exactly what the model holds.

use qat_core::fixed_point::QuantizedMultiplier;
use qat_int8_runtime::{Clamp, Conv2d, FullyConnected, PoolWindow, Weights};

use super::builder::Quant;
use super::geometry::Pad;
use super::lower::{Lowering, version};
use super::schema::{
    BuiltinOperator as B, BuiltinOptions, Conv2DOptions, DepthwiseConv2DOptions,
    FullyConnectedOptions,
};
use crate::interchange::{ExportFormatError, Unsupported};

impl Lowering<'_> {
    /// Checks the weights (symmetric int8 in `[−127, 127]`, one scale or one per channel) and
    /// returns `(codes, scales)`.
    fn int8_weights<'w>(
        &self,
        w: &'w Weights,
        channels: usize,
    ) -> Result<(&'w [i8], &'w [f32]), ExportFormatError> {
        let Weights::Int8 { data, scales } = w else {
            return Err(self.refuse(Unsupported::AsymmetricWeights));
        };
        let per = data.len() / channels.max(1);
        if let Some(i) = data.iter().position(|&v| v == i8::MIN) {
            return Err(self.refuse(Unsupported::WeightCodeOutOfRange {
                channel: i / per.max(1),
            }));
        }
        Ok((data, scales))
    }

    /// Checks that TFLite derives the model's multiplier for every channel:
    /// `QuantizeMultiplier(S_in·S_w[c]/S_out)` with the product in f64 (`f32_product`: in f32, as
    /// TFLite's per-tensor fully connected does); for a model of an `f32` target, the multiplier
    /// that target's runtime forms ([`qat_core::Target::conv_multiplier`]).
    fn check_multipliers(
        &self,
        ours: &[QuantizedMultiplier],
        scales: &[f32],
        s_in: f32,
        s_out: f32,
        channels: usize,
        f32_product: bool,
    ) -> Result<(), ExportFormatError> {
        for c in 0..channels {
            let sw = if scales.len() == 1 {
                scales[0]
            } else {
                scales[c]
            };
            let product = if f32_product {
                (s_in * sw) as f64
            } else {
                s_in as f64 * sw as f64
            };
            // The `f32` targets' runtimes (XNNPACK behind LiteRT) form `f32(S_in·S_w/S_out)`.
            let target = self.model.rounding;
            let theirs = if target.is_fp32() {
                target.conv_multiplier(s_in, sw, s_out)
            } else {
                QuantizedMultiplier::from_f64(product / s_out as f64)
            };
            let theirs = theirs.map_err(|e| {
                self.refuse(Unsupported::Shape(format!(
                    "multiplier of channel {c}: {e}"
                )))
            })?;
            let ours = if ours.len() == 1 { ours[0] } else { ours[c] };
            if ours != theirs {
                return Err(self.refuse(Unsupported::Multiplier {
                    channel: c,
                    ours_m0: ours.multiplier(),
                    ours_shift: ours.shift(),
                    theirs_m0: theirs.multiplier(),
                    theirs_shift: theirs.shift(),
                }));
            }
        }
        Ok(())
    }

    /// The int32 bias tensor with scales `S_in·S_w[c]` (f32 products): one scale for per-tensor
    /// weights (TFLite's per-tensor fully connected compares the bias tensor's own scale with
    /// `S_in·S_w` in `GetQuantizedConvolutionMultipler`; a per-channel bias leaves it 0 there).
    fn bias(&mut self, bias: &[i32], scales: &[f32], s_in: f32) -> i32 {
        let n = bias.len();
        let bs = scales.iter().map(|&sw| s_in * sw).collect();
        let name = format!("{}/bias", self.site.layer);
        self.b
            .const_i32(&name, &[n], bias, Some(Quant::symmetric(bs, 0)))
    }

    /// `CONV_2D` or `DEPTHWISE_CONV_2D` of `c`.
    pub(super) fn emit_conv(&mut self, c: &Conv2d) -> Result<(), ExportFormatError> {
        let [co, kh, kw, cig] = c.weight_shape;
        let cin = self.model.tensors[c.input].shape[2];
        let (codes, scales) = self.int8_weights(&c.weights, co)?;
        let (qi, qo) = (self.params(c.input), self.params(c.output));
        self.check_multipliers(&c.multipliers, scales, qi.scale(), qo.scale(), co, false)?;
        let depthwise = c.groups > 1 && c.groups == cin && cig == 1;
        let kernel = [c.dilation[0] * (kh - 1) + 1, c.dilation[1] * (kw - 1) + 1];
        let (stride, padding) = (c.stride, c.padding);
        let window = PoolWindow {
            kernel,
            stride,
            padding,
        };
        let pad = self.window(c.input, c.output, window);
        let x = if pad == Pad::Explicit {
            self.pad(c.input, c.padding, None)
        } else {
            self.tensor(c.input)
        };
        let wname = format!("{}/weights", self.site.layer);
        let w = if depthwise {
            // OHWI [C_out, kh, kw, 1] → [1, kh, kw, C_out]; per-channel on dim 3.
            let mut t = vec![0i8; codes.len()];
            for (o, chunk) in codes.chunks_exact(kh * kw).enumerate() {
                for (p, &v) in chunk.iter().enumerate() {
                    t[p * co + o] = v;
                }
            }
            self.b.const_i8(
                &wname,
                &[1, kh, kw, co],
                &t,
                Quant::symmetric(scales.to_vec(), 3),
            )
        } else {
            self.b.const_i8(
                &wname,
                &c.weight_shape,
                codes,
                Quant::symmetric(scales.to_vec(), 0),
            )
        };
        let bias = self.bias(&c.bias, scales, qi.scale());
        let (stride, dil, groups) = (c.stride, c.dilation, c.groups);
        self.clamped(
            c.output,
            c.clamp.lo as i32,
            c.clamp.hi as i32,
            true,
            |s, act, dst| {
                let (op, v, opts) = if depthwise {
                    let o = DepthwiseConv2DOptions {
                        padding: pad.padding(),
                        stride_w: stride[1] as i32,
                        stride_h: stride[0] as i32,
                        depth_multiplier: (co / cin) as i32,
                        fused_activation_function: act,
                        dilation_w_factor: dil[1] as i32,
                        dilation_h_factor: dil[0] as i32,
                    };
                    (
                        B::DepthwiseConv2d,
                        version::DEPTHWISE_CONV_2D,
                        BuiltinOptions::DepthwiseConv2DOptions(Box::new(o)),
                    )
                } else {
                    let o = Conv2DOptions {
                        padding: pad.padding(),
                        stride_w: stride[1] as i32,
                        stride_h: stride[0] as i32,
                        fused_activation_function: act,
                        dilation_w_factor: dil[1] as i32,
                        dilation_h_factor: dil[0] as i32,
                        ..Default::default()
                    };
                    let v = if groups == 1 {
                        version::CONV_2D
                    } else {
                        version::CONV_2D_GROUPED
                    };
                    (B::Conv2d, v, BuiltinOptions::Conv2DOptions(Box::new(o)))
                };
                s.b.op(op, v, &[x, w, bias], &[dst], Some(opts));
            },
        );
        Ok(())
    }

    /// `FULLY_CONNECTED` of `f`.
    pub(super) fn emit_fully_connected(
        &mut self,
        f: &FullyConnected,
    ) -> Result<(), ExportFormatError> {
        let [co, _] = f.weight_shape;
        let (codes, scales) = self.int8_weights(&f.weights, co)?;
        let (qi, qo) = (self.params(f.input), self.params(f.output));
        // Per tensor, TFLite forms S_in·S_w in f32; per channel in f64. A per-tensor layer whose
        // f32 product gives another multiplier is written per channel (the same scale repeated).
        let per_tensor_ok = scales.len() == 1
            && self
                .check_multipliers(&f.multipliers, scales, qi.scale(), qo.scale(), co, true)
                .is_ok();
        let scales: Vec<f32> = if per_tensor_ok {
            scales.to_vec()
        } else {
            if !self.opts.per_channel_fully_connected {
                if scales.len() > 1 {
                    return Err(self.refuse(Unsupported::PerChannelFullyConnected));
                }
                // Reports the per-tensor mismatch.
                self.check_multipliers(&f.multipliers, scales, qi.scale(), qo.scale(), co, true)?;
            }
            self.check_multipliers(&f.multipliers, scales, qi.scale(), qo.scale(), co, false)?;
            (0..co)
                .map(|c| {
                    if scales.len() == 1 {
                        scales[0]
                    } else {
                        scales[c]
                    }
                })
                .collect()
        };
        let x = self.tensor(f.input);
        let wname = format!("{}/weights", self.site.layer);
        let w = self.b.const_i8(
            &wname,
            &f.weight_shape,
            codes,
            Quant::symmetric(scales.clone(), 0),
        );
        let bias = self.bias(&f.bias, &scales, qi.scale());
        let Clamp { lo, hi } = f.clamp;
        self.clamped(f.output, lo as i32, hi as i32, true, |s, act, dst| {
            let opts = BuiltinOptions::FullyConnectedOptions(Box::new(FullyConnectedOptions {
                fused_activation_function: act,
                ..Default::default()
            }));
            s.b.op(
                B::FullyConnected,
                version::FULLY_CONNECTED,
                &[x, w, bias],
                &[dst],
                Some(opts),
            );
        });
        Ok(())
    }
}
