//! Lowering of an [`Int8Model`] to an ONNX QDQ graph (see the table in the
//! [module docs](super)).

use qat_core::QuantParams;
use qat_int8_runtime::{
    Clamp, Conv2d, DType, FullyConnected, Int8Model, Pool2d, TensorId, Weights,
};

use super::graph::{Attr, Graph, TO_NCHW, TO_NHWC};
use super::proto::tensor_proto::DataType;
use crate::interchange::{ExportFormatError, Format, LowerOps, Lowered, Site, Unsupported};
use crate::ir::oihw_from_ohwi;

pub(super) struct Qdq<'m> {
    pub g: Graph,
    pub site: Site<'m>,
    model: &'m Int8Model,
    /// Runtime tensor → ONNX value (uint8 codes, NCHW for `[H, W, C]`; f32 for F32 tensors).
    pub map: Vec<Option<String>>,
    /// `(scale, zero point)` initializers per runtime tensor.
    qp: Vec<Option<(String, String)>>,
}

fn spatial(shape: &[usize]) -> bool {
    shape.len() == 3
}

/// The ONNX dims of a per-sample runtime shape (`[H, W, C]` → `[C, H, W]`).
pub(super) fn onnx_dims(shape: &[usize]) -> Vec<usize> {
    match shape {
        [h, w, c] => vec![*c, *h, *w],
        s => s.to_vec(),
    }
}

impl<'m> Qdq<'m> {
    pub fn new(model: &'m Int8Model) -> Self {
        Self {
            g: Graph::default(),
            site: Site::new(model, Format::Onnx),
            model,
            map: vec![None; model.tensors.len()],
            qp: vec![None; model.tensors.len()],
        }
    }

    fn params(&self, t: TensorId) -> QuantParams {
        self.site.params(t)
    }

    fn shape(&self, t: TensorId) -> Vec<usize> {
        self.model.tensors[t].shape.clone()
    }

    /// The value name of runtime tensor `t`, reserved on first use (its producer writes it).
    pub fn value(&mut self, t: TensorId) -> String {
        if let Some(v) = &self.map[t] {
            return v.clone();
        }
        let v = self.g.name(&self.model.tensors[t].name);
        self.map[t] = Some(v.clone());
        v
    }

    /// `(scale, zero point)` initializers of a uint8 tensor's params.
    fn qparams(&mut self, t: TensorId) -> (String, String) {
        if let Some(p) = &self.qp[t] {
            return p.clone();
        }
        let q = self.params(t);
        let name = self.model.tensors[t].name.clone();
        let s = self.g.f32s(&format!("{name}/scale"), &[], &[q.scale()]);
        let z = self
            .g
            .u8s(&format!("{name}/zero_point"), &[], &[q.zero_point() as u8]);
        self.qp[t] = Some((s.clone(), z.clone()));
        (s, z)
    }

    /// `DequantizeLinear` of tensor `t`'s codes (one per consumer, as QDQ node units want).
    fn dq(&mut self, t: TensorId) -> String {
        let x = self.value(t);
        let (s, z) = self.qparams(t);
        let base = format!("{}/dq", self.model.tensors[t].name);
        self.g
            .apply("DequantizeLinear", &[&x, &s, &z], &base, vec![])
    }

    /// `QuantizeLinear` of float `y` into tensor `out`'s codes, then `Clip` of the codes to
    /// `[lo, hi]` unless that is `[0, 255]` (what `QuantizeLinear` saturates to).
    fn q_clamped(&mut self, y: &str, out: TensorId, lo: u8, hi: u8) {
        let (s, z) = self.qparams(out);
        let dst = self.value(out);
        if (lo, hi) == (0, 255) {
            self.g.node("QuantizeLinear", &[y, &s, &z], &dst, vec![]);
            return;
        }
        let name = self.model.tensors[out].name.clone();
        let codes = self.g.apply(
            "QuantizeLinear",
            &[y, &s, &z],
            &format!("{name}/unclamped"),
            vec![],
        );
        self.clip_into(&codes, &dst, lo, hi, &name);
    }

    /// `Clip` of uint8 codes to `[lo, hi]` into `dst`.
    fn clip_into(&mut self, codes: &str, dst: &str, lo: u8, hi: u8, name: &str) {
        let l = self.g.u8s(&format!("{name}/min"), &[], &[lo]);
        let h = self.g.u8s(&format!("{name}/max"), &[], &[hi]);
        self.g.node("Clip", &[codes, &l, &h], dst, vec![]);
    }

    /// The output grid of a tensor as a clamp.
    fn grid(&self, t: TensorId) -> (u8, u8) {
        let q = self.params(t);
        (q.qmin().clamp(0, 255) as u8, q.qmax().clamp(0, 255) as u8)
    }

    /// Weights as a `DequantizeLinear` of int8 (zero point 0) or uint8 codes, per axis 0 when
    /// there is one scale per output channel.
    fn weights(
        &mut self,
        w: &Weights,
        dims: &[usize],
        reorder: impl Fn(&[i8]) -> Vec<i8>,
        reorder_u8: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Result<String, ExportFormatError> {
        let name = self.site.layer.clone();
        let (codes, scales, zp) = match w {
            Weights::Int8 { data, scales } => {
                let codes = self.g.i8s(&format!("{name}/weight"), dims, &reorder(data));
                let zp = self.g.i8s(
                    &format!("{name}/weight_zero_point"),
                    &scale_dims(scales),
                    &vec![0; scales.len()],
                );
                (codes, scales, zp)
            }
            Weights::Uint8 {
                data,
                scales,
                zero_points,
            } => {
                if let Some(&other) = zero_points.iter().find(|&&z| z != zero_points[0]) {
                    return Err(self.site.refuse(Unsupported::MixedWeightZeroPoints {
                        first: zero_points[0],
                        other,
                    }));
                }
                let codes = self
                    .g
                    .u8s(&format!("{name}/weight"), dims, &reorder_u8(data));
                let zps: Vec<u8> = zero_points.iter().map(|&z| z as u8).collect();
                let zp = self.g.u8s(
                    &format!("{name}/weight_zero_point"),
                    &scale_dims(scales),
                    &zps,
                );
                (codes, scales, zp)
            }
        };
        let s = self
            .g
            .f32s(&format!("{name}/weight_scale"), &scale_dims(scales), scales);
        let attrs = if scales.len() > 1 {
            vec![("axis", Attr::Int(0))]
        } else {
            vec![]
        };
        Ok(self.g.apply(
            "DequantizeLinear",
            &[&codes, &s, &zp],
            &format!("{name}/weight_dq"),
            attrs,
        ))
    }

    /// The int32 bias dequantized with scales `S_in·S_w[c]` (f32 products), zero point 0.
    fn bias(&mut self, bias: &[i32], w: &Weights, s_in: f32) -> String {
        let scales = match w {
            Weights::Int8 { scales, .. } | Weights::Uint8 { scales, .. } => scales,
        };
        let name = self.site.layer.clone();
        let n = bias.len();
        let b = self.g.i32s(&format!("{name}/bias"), &[n], bias);
        let bs: Vec<f32> = (0..n)
            .map(|c| {
                s_in * if scales.len() == 1 {
                    scales[0]
                } else {
                    scales[c]
                }
            })
            .collect();
        let s = self.g.f32s(&format!("{name}/bias_scale"), &[n], &bs);
        let z = self
            .g
            .i32s(&format!("{name}/bias_zero_point"), &[n], &vec![0; n]);
        self.g.apply(
            "DequantizeLinear",
            &[&b, &s, &z],
            &format!("{name}/bias_dq"),
            vec![("axis", Attr::Int(0))],
        )
    }

    /// The ONNX element type and dims of runtime tensor `t`.
    pub fn value_type(&self, t: TensorId) -> (DataType, Vec<usize>) {
        let info = &self.model.tensors[t];
        match info.dtype {
            DType::U8 => (DataType::Uint8, onnx_dims(&info.shape)),
            DType::F32 => (DataType::Float, info.shape.clone()),
        }
    }
}

impl<'m> LowerOps<'m> for Qdq<'m> {
    fn site(&mut self) -> &mut Site<'m> {
        &mut self.site
    }

    fn quantize(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let x = self.value(input);
        let (lo, hi) = self.grid(output);
        if spatial(&self.shape(output)) {
            let (s, z) = self.qparams(output);
            let base = format!("{}/nhwc", self.site.layer);
            let mut codes = self.g.apply("QuantizeLinear", &[&x, &s, &z], &base, vec![]);
            if (lo, hi) != (0, 255) {
                let clipped = self.g.name(&format!("{}/nhwc_clipped", self.site.layer));
                let name = self.site.layer.clone();
                self.clip_into(&codes, &clipped, lo, hi, &name);
                codes = clipped;
            }
            let dst = self.value(output);
            self.g.transpose_into(&codes, &dst, TO_NCHW);
        } else {
            self.q_clamped(&x, output, lo, hi);
        }
        Ok(())
    }

    fn dequantize(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let mut x = self.value(input);
        if spatial(&self.shape(input)) {
            let base = format!("{}/nhwc", self.model.tensors[input].name);
            x = self.g.transpose(&x, &base, TO_NHWC);
        }
        let (s, z) = self.qparams(input);
        let dst = self.value(output);
        self.g.node("DequantizeLinear", &[&x, &s, &z], &dst, vec![]);
        Ok(())
    }

    fn conv(&mut self, c: &Conv2d) -> Lowered {
        let [o, kh, kw, i] = c.weight_shape;
        let x = self.dq(c.input);
        let w = self.weights(
            &c.weights,
            &[o, i, kh, kw],
            |d| oihw_from_ohwi(d, c.weight_shape),
            |d| oihw_from_ohwi(d, c.weight_shape),
        )?;
        let b = self.bias(&c.bias, &c.weights, self.params(c.input).scale());
        let attrs = conv_attrs([kh, kw], c.stride, c.padding, c.dilation, c.groups);
        let y = self.g.apply(
            "Conv",
            &[&x, &w, &b],
            &format!("{}/f", self.site.layer),
            attrs,
        );
        self.q_clamped(&y, c.output, c.clamp.lo, c.clamp.hi);
        Ok(())
    }

    fn fully_connected(&mut self, f: &FullyConnected) -> Lowered {
        let x = self.dq(f.input);
        let w = self.weights(&f.weights, &f.weight_shape, <[i8]>::to_vec, <[u8]>::to_vec)?;
        let b = self.bias(&f.bias, &f.weights, self.params(f.input).scale());
        let y = self.g.apply(
            "Gemm",
            &[&x, &w, &b],
            &format!("{}/f", self.site.layer),
            vec![("transB", Attr::Int(1))],
        );
        self.q_clamped(&y, f.output, f.clamp.lo, f.clamp.hi);
        Ok(())
    }

    fn add(&mut self, a: TensorId, b: TensorId, output: TensorId, clamp: Clamp) -> Lowered {
        let (x, y) = (self.dq(a), self.dq(b));
        let sum = self.g.apply(
            "Add",
            &[&x, &y],
            &format!("{}/sum", self.site.layer),
            vec![],
        );
        self.q_clamped(&sum, output, clamp.lo, clamp.hi);
        Ok(())
    }

    fn concat(&mut self, inputs: &[TensorId], output: TensorId) -> Lowered {
        let qo = self.params(output);
        if inputs.iter().all(|&t| self.params(t) == qo) {
            // Same params: codes concatenate as they are.
            let xs: Vec<String> = inputs.iter().map(|&t| self.value(t)).collect();
            let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
            let dst = self.value(output);
            self.g
                .node("Concat", &refs, &dst, vec![("axis", Attr::Int(1))]);
        } else {
            let xs: Vec<String> = inputs.iter().map(|&t| self.dq(t)).collect();
            let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
            let y = self.g.apply(
                "Concat",
                &refs,
                &format!("{}/f", self.site.layer),
                vec![("axis", Attr::Int(1))],
            );
            let (lo, hi) = self.grid(output);
            self.q_clamped(&y, output, lo, hi);
        }
        Ok(())
    }

    fn avg_pool(&mut self, w: &Pool2d) -> Lowered {
        let x = self.dq(w.input);
        let mut attrs = window_attrs(w.kernel, w.stride, w.padding);
        attrs.push(("count_include_pad", Attr::Int(0)));
        let y = self.g.apply(
            "AveragePool",
            &[&x],
            &format!("{}/f", self.site.layer),
            attrs,
        );
        let (lo, hi) = self.grid(w.output);
        self.q_clamped(&y, w.output, lo, hi);
        Ok(())
    }

    fn global_avg_pool(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let x = self.dq(input);
        let y = self.g.apply(
            "GlobalAveragePool",
            &[&x],
            &format!("{}/f", self.site.layer),
            vec![],
        );
        let (s, z) = self.qparams(output);
        let name = self.site.layer.clone();
        let mut codes = self.g.apply(
            "QuantizeLinear",
            &[&y, &s, &z],
            &format!("{name}/nc11"),
            vec![],
        );
        let (lo, hi) = self.grid(output);
        if (lo, hi) != (0, 255) {
            let clipped = self.g.name(&format!("{name}/nc11_clipped"));
            self.clip_into(&codes, &clipped, lo, hi, &name);
            codes = clipped;
        }
        let dst = self.value(output);
        self.g
            .node("Flatten", &[&codes], &dst, vec![("axis", Attr::Int(1))]);
        Ok(())
    }

    fn max_pool(&mut self, w: &Pool2d) -> Lowered {
        // On the codes: max commutes with the monotone dequantization; padded cells are
        // ignored, as in the runtime.
        let (x, dst) = (self.value(w.input), self.value(w.output));
        let attrs = window_attrs(w.kernel, w.stride, w.padding);
        self.g.node("MaxPool", &[&x], &dst, attrs);
        Ok(())
    }

    /// Reshape in NHWC order (the runtime's), whatever the ONNX layouts.
    fn reshape(&mut self, input: TensorId, output: TensorId) -> Lowered {
        let (si, so) = (self.shape(input), self.shape(output));
        let mut x = self.value(input);
        let name = self.site.layer.clone();
        if spatial(&si) && si[..2] != [1, 1] {
            x = self.g.transpose(&x, &format!("{name}/nhwc"), TO_NHWC);
        }
        let dst = self.value(output);
        if spatial(&so) {
            let dims: Vec<i64> = std::iter::once(-1)
                .chain(so.iter().map(|&d| d as i64))
                .collect();
            let shape = self.g.i64s(&format!("{name}/shape"), &[dims.len()], &dims);
            let nhwc = self.g.apply(
                "Reshape",
                &[&x, &shape],
                &format!("{name}/nhwc_out"),
                vec![],
            );
            self.g.transpose_into(&nhwc, &dst, TO_NCHW);
        } else {
            self.g
                .node("Flatten", &[&x], &dst, vec![("axis", Attr::Int(1))]);
        }
        Ok(())
    }
}

/// Dims of a scale: `[]` for one, `[n]` for per-axis.
fn scale_dims(scales: &[f32]) -> Vec<usize> {
    if scales.len() == 1 {
        vec![]
    } else {
        vec![scales.len()]
    }
}

/// `kernel_shape`, `strides`, `pads` (`[top, left, bottom, right]` is ONNX's `[x1_begin,
/// x2_begin, x1_end, x2_end]` order) of a window op.
pub(super) fn window_attrs(
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
) -> Vec<(&'static str, Attr)> {
    let ints = |v: &[usize]| Attr::Ints(v.iter().map(|&x| x as i64).collect());
    vec![
        ("kernel_shape", ints(&kernel)),
        ("strides", ints(&stride)),
        ("pads", ints(&padding)),
    ]
}

/// [`window_attrs`] of a convolution, and its `dilations` and `group`.
pub(super) fn conv_attrs(
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
) -> Vec<(&'static str, Attr)> {
    let mut attrs = window_attrs(kernel, stride, padding);
    attrs.push((
        "dilations",
        Attr::Ints(dilation.iter().map(|&d| d as i64).collect()),
    ));
    attrs.push(("group", Attr::Int(groups as i64)));
    attrs
}
