//! Shared test helpers: a deterministic generator and a small model that uses every op.
#![allow(dead_code)]

use ndarray::ArrayD;
use qat_core::{QuantParams, fixed_point::QuantizedMultiplier};
use qat_int8_runtime::testing::models::{avg_pool, max_pool, model, tensor};
use qat_int8_runtime::{Clamp, Conv2d, FullyConnected, Int8Model, Op, Target, TensorInfo, Weights};

pub use qat_int8_runtime::testing::models::Rng;

pub fn act(min: f32, max: f32) -> QuantParams {
    QuantParams::asymmetric(min, max, 8).unwrap()
}

/// `x → op → y`, both `U8`: `op` reads tensor 0 and writes tensor 1.
pub fn unary(
    op: Op,
    qi: QuantParams,
    in_shape: &[usize],
    qo: QuantParams,
    out_shape: &[usize],
) -> Int8Model {
    let tensors = vec![
        tensor("x", in_shape, Some(qi)),
        tensor("y", out_shape, Some(qo)),
    ];
    model("unary", tensors, vec![op], 1)
}

/// One sample (batch 1) of shape `shape` whose values quantize to `codes` under `q`.
pub fn codes_input(shape: &[usize], codes: &[u8], q: &QuantParams) -> ArrayD<f32> {
    let mut s = vec![1];
    s.extend_from_slice(shape);
    ArrayD::from_shape_vec(s, codes.iter().map(|&c| q.dequantize(c as i32)).collect()).unwrap()
}

/// A conv's `(kernel, stride, padding, dilation)`.
pub type ConvWindow = ([usize; 2], [usize; 2], [usize; 4], [usize; 2]);

pub struct Builder {
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<Op>,
    pub rng: Rng,
}

impl Builder {
    pub fn new(seed: u64) -> Self {
        Self {
            tensors: vec![],
            ops: vec![],
            rng: Rng(seed),
        }
    }
    pub fn tensor(&mut self, name: &str, shape: &[usize], q: Option<QuantParams>) -> usize {
        self.tensors.push(tensor(name, shape, q));
        self.tensors.len() - 1
    }
    /// The id of the tensor named `name`.
    pub fn id(&self, name: &str) -> usize {
        self.tensors.iter().position(|t| t.name == name).unwrap()
    }
    pub fn q(&self, t: usize) -> QuantParams {
        self.tensors[t].quant.unwrap()
    }
    /// A conv of `[C_out, groups]` channels over `(kernel, stride, padding, dilation)`:
    /// per-channel weights (int8, or uint8 with `uint8_weights`) with scales ~ 1/127 and
    /// multipliers S_in·S_w/S_out, clamped at `Z_out` with `relu`.
    pub fn conv(
        &mut self,
        name: &str,
        input: usize,
        [cout, groups]: [usize; 2],
        (k, stride, padding, dilation): ConvWindow,
        qo: QuantParams,
        [relu, uint8_weights]: [bool; 2],
    ) -> usize {
        let [h, w, cin] = <[usize; 3]>::try_from(self.tensors[input].shape.as_slice()).unwrap();
        let ho = (h + padding[0] + padding[2] - dilation[0] * (k[0] - 1) - 1) / stride[0] + 1;
        let wo = (w + padding[1] + padding[3] - dilation[1] * (k[1] - 1) - 1) / stride[1] + 1;
        let out = self.tensor(name, &[ho, wo, cout], Some(qo));
        let n = cout * k[0] * k[1] * (cin / groups);
        let scales: Vec<f32> = (0..cout)
            .map(|c| 0.5 / 127.0 * (1.0 + c as f32 * 0.05))
            .collect();
        let si = self.q(input).scale();
        let weights = if uint8_weights {
            Weights::Uint8 {
                data: self.rng.u8s(n),
                scales: scales.clone(),
                zero_points: (0..cout).map(|c| 100 + c as i32).collect(),
            }
        } else {
            Weights::Int8 {
                data: self.rng.i8s(n),
                scales: scales.clone(),
            }
        };
        let bias = (0..cout)
            .map(|_| self.rng.below(2001) as i32 - 1000)
            .collect();
        let multipliers = scales
            .iter()
            .map(|s| QuantizedMultiplier::from_f64((si * s / qo.scale()) as f64).unwrap())
            .collect();
        let clamp = Clamp {
            lo: if relu { qo.zero_point() as u8 } else { 0 },
            hi: 255,
        };
        self.ops.push(Op::Conv2d(Conv2d {
            input,
            output: out,
            weights,
            weight_shape: [cout, k[0], k[1], cin / groups],
            bias,
            stride,
            padding,
            dilation,
            groups,
            multipliers,
            clamp,
        }));
        out
    }
    pub fn fc(&mut self, name: &str, input: usize, cout: usize, qo: QuantParams) -> usize {
        let cin: usize = self.tensors[input].shape.iter().product();
        let out = self.tensor(name, &[cout], Some(qo));
        let si = self.q(input).scale();
        let sw = 1.0 / 127.0;
        self.ops.push(Op::FullyConnected(FullyConnected {
            input,
            output: out,
            weights: Weights::Int8 {
                data: self.rng.i8s(cout * cin),
                scales: vec![sw],
            },
            weight_shape: [cout, cin],
            bias: (0..cout)
                .map(|_| self.rng.below(201) as i32 - 100)
                .collect(),
            multipliers: vec![
                QuantizedMultiplier::from_f64((si * sw / qo.scale()) as f64).unwrap(),
            ],
            clamp: Clamp { lo: 0, hi: 255 },
        }));
        out
    }
    pub fn finish(self, name: &str, input: usize, outputs: Vec<usize>) -> Int8Model {
        Int8Model {
            name: name.into(),
            tensors: self.tensors,
            ops: self.ops,
            input,
            outputs,
            rounding: Target::Tflite,
        }
    }
}

/// A small network that uses every op kind and conv variant (padding, stride 2, dilation,
/// groups, depthwise, uint8 weights), input `[8, 8, 3]`.
pub fn zoo_model() -> Int8Model {
    let mut b = Builder::new(7);
    let x = b.tensor("x", &[8, 8, 3], None);
    let xq = b.tensor("xq", &[8, 8, 3], Some(act(-1.0, 1.0)));
    b.ops.push(Op::Quantize {
        input: x,
        output: xq,
    });
    // name, input, [C_out, groups], (kernel, stride, padding, dilation), output range,
    // [ReLU, uint8 weights]
    #[rustfmt::skip]
    let convs = [
        ("conv1", "xq", [8, 1], ([3, 3], [1, 1], [1; 4], [1, 1]), (0.0, 4.0), [true, false]),
        ("dw", "conv1", [8, 8], ([3, 3], [2, 2], [1; 4], [1, 1]), (0.0, 3.0), [true, false]),
        ("pw", "dw", [8, 1], ([1, 1], [1, 1], [0; 4], [1, 1]), (-2.0, 2.0), [false, false]),
        ("grouped", "dw", [8, 2], ([3, 3], [1, 1], [2; 4], [2, 2]), (-1.5, 2.5), [false, true]),
    ];
    for (name, input, channels, window, (lo, hi), flags) in convs {
        let input = b.id(input);
        b.conv(name, input, channels, window, act(lo, hi), flags);
    }
    let (pw, gc) = (b.id("pw"), b.id("grouped"));
    let qa = act(-3.0, 4.0);
    let add = b.tensor("add", &[4, 4, 8], Some(qa));
    b.ops.push(Op::Add {
        a: pw,
        b: gc,
        output: add,
        clamp: Clamp {
            lo: qa.zero_point() as u8,
            hi: 255,
        },
    });
    let mp = b.tensor("maxpool", &[2, 2, 8], Some(qa));
    b.ops.push(max_pool([add, mp], [2, 2], [2, 2], [0; 4]));
    let ap = b.tensor("avgpool", &[2, 2, 8], Some(act(0.0, 3.0)));
    b.ops
        .push(avg_pool([add, ap], [3, 3], [2, 2], [1, 1, 0, 0]));
    let cat = b.tensor("concat", &[2, 2, 16], Some(act(-1.0, 4.0)));
    b.ops.push(Op::Concat {
        inputs: vec![mp, ap],
        output: cat,
    });
    let gap = b.tensor("gap", &[16], Some(act(0.0, 4.0)));
    b.ops.push(Op::GlobalAvgPool {
        input: cat,
        output: gap,
    });
    let flat = b.tensor("flat", &[2 * 2 * 16], Some(act(-1.0, 4.0)));
    b.ops.push(Op::Reshape {
        input: cat,
        output: flat,
    });
    let fc = b.fc("fc", flat, 5, act(-6.0, 6.0));
    let y = b.tensor("y", &[5], None);
    b.ops.push(Op::Dequantize {
        input: fc,
        output: y,
    });
    b.finish("zoo", x, vec![y, gap])
}
