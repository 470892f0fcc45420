//! Random small graphs for the export tests (seeded, tiny shapes).
#![allow(dead_code)]

use ndarray::ArrayD;
use qat_export::FloatGraph;
use qat_export::ir::{Activation, BatchNorm, Conv2d, Linear, NodeId, Pool2d};
/// SplitMix64: a tiny seeded generator, enough for test data (keeps the crate free of `rand`).
pub struct StdRng(qat_int8_runtime::testing::models::Rng);

impl StdRng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in `lo..=hi`.
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform real in `[lo, hi)`.
    pub fn real(&mut self, lo: f32, hi: f32) -> f32 {
        (lo as f64 + (hi - lo) as f64 * self.unit()) as f32
    }

    /// `true` with probability `p`.
    pub fn coin(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng(qat_int8_runtime::testing::models::Rng(seed))
}

pub fn uniform(r: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.real(lo, hi)).collect()
}

pub fn batch(r: &mut StdRng, n: usize, shape: &[usize]) -> ArrayD<f32> {
    let mut s = vec![n];
    s.extend_from_slice(shape);
    let len = s.iter().product();
    ArrayD::from_shape_vec(s, uniform(r, len, -1.0, 1.0)).expect("shape")
}

/// Batch norm of `c` channels with random statistics: `γ, σ² ~ U(0.5, 1.5)`, `β ~ U(−0.2, 0.2)`,
/// `μ ~ U(−0.1, 0.1)`, `ε = 10⁻⁵`.
pub fn random_bn(r: &mut StdRng, c: usize) -> BatchNorm {
    BatchNorm {
        gamma: uniform(r, c, 0.5, 1.5),
        beta: uniform(r, c, -0.2, 0.2),
        mean: uniform(r, c, -0.1, 0.1),
        var: uniform(r, c, 0.5, 1.5),
        eps: 1e-5,
    }
}

fn act(r: &mut StdRng) -> Activation {
    match r.int(0, 2) {
        0 => Activation::None,
        1 => Activation::Relu,
        _ => Activation::Relu6,
    }
}

pub struct GenOptions {
    /// Use concat / average pools.
    pub pools_and_concat: bool,
    /// Attach batch norm to some convs.
    pub batch_norm: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            pools_and_concat: true,
            batch_norm: true,
        }
    }
}

/// A random conv: kernel 1..=3, stride 1..=2, padding ≤ k−1, dilation 1..=2, groups 1 or
/// depthwise, random bias / BN / activation. Weights ~ U(−a, a), a = 1.5/√fan_in.
pub fn random_conv(r: &mut StdRng, cin: usize, hw: [usize; 2], opts: &GenOptions) -> Conv2d {
    let depthwise = cin > 1 && r.coin(0.3);
    let (groups, cout) = if depthwise {
        (cin, cin * r.int(1, 2))
    } else {
        (1, r.int(1, 6))
    };
    let mut k = r.int(1, 3);
    k = k.min(hw[0]).min(hw[1]);
    let dil = if k > 1 && r.coin(0.2) && hw[0] >= 2 * k && hw[1] >= 2 * k {
        2
    } else {
        1
    };
    let stride = if r.coin(0.3) { 2 } else { 1 };
    let pad = if k > 1 { r.int(0, k - 1) } else { 0 };
    let padding = [pad, r.int(0, k - 1), pad, r.int(0, k - 1)];
    let ig = cin / groups;
    let fan_in = (k * k * ig) as f32;
    let a = 1.5 / fan_in.sqrt();
    let w = uniform(r, cout * k * k * ig, -a, a);
    let mut c = Conv2d::new(w, [cout, k, k, ig])
        .with_groups(groups)
        .with_stride([stride, stride])
        .with_padding(padding)
        .with_dilation([dil, dil])
        .with_activation(act(r));
    if r.coin(0.6) {
        c = c.with_bias(uniform(r, cout, -0.3, 0.3));
    }
    if opts.batch_norm && r.coin(0.5) {
        c = c.with_batch_norm(BatchNorm {
            gamma: uniform(r, cout, 0.5, 1.5),
            beta: uniform(r, cout, -0.3, 0.3),
            mean: uniform(r, cout, -0.2, 0.2),
            var: uniform(r, cout, 0.3, 2.0),
            eps: 1e-5,
        });
    }
    c
}

fn conv_out(c: &Conv2d, hw: [usize; 2]) -> [usize; 2] {
    let e = |n: usize, lo: usize, hi: usize, k: usize, s: usize, d: usize| {
        (n + lo + hi - d * (k - 1) - 1) / s + 1
    };
    [
        e(
            hw[0],
            c.padding[0],
            c.padding[2],
            c.weight_shape[1],
            c.stride[0],
            c.dilation[0],
        ),
        e(
            hw[1],
            c.padding[1],
            c.padding[3],
            c.weight_shape[2],
            c.stride[1],
            c.dilation[1],
        ),
    ]
}

/// A random CNN: 2..=4 blocks of conv / residual add / concat / pools on a 5..=8 square input,
/// then global pool or flatten, 1..=2 linear layers and an output.
pub fn random_cnn(seed: u64, opts: &GenOptions) -> FloatGraph {
    let r = &mut rng(seed);
    let mut g = FloatGraph::new(format!("random-cnn-{seed}"));
    let s = r.int(5, 8);
    let mut c = r.int(1, 3);
    let mut hw = [s, s];
    let mut cur = g.input("x", &[s, s, c]);
    let blocks = r.int(2, 4);
    for b in 0..blocks {
        let choice = r.int(0, 4);
        match choice {
            // residual: 1×1-or-3×3 same-shape conv branch + add
            1 if hw[0] >= 3 => {
                let w = uniform(r, c * 9 * c, -0.4, 0.4);
                let br = Conv2d::new(w, [c, 3, 3, c])
                    .with_padding([1, 1, 1, 1])
                    .with_bias(uniform(r, c, -0.2, 0.2))
                    .with_activation(act(r));
                let y = g.conv2d(format!("b{b}_branch"), cur, br);
                cur = g.add(format!("b{b}_add"), cur, y, act(r));
            }
            2 if opts.pools_and_concat => {
                let conv = random_conv(r, c, hw, opts);
                let out = conv_out(&conv, hw);
                if out == hw {
                    let cout = conv.out_channels();
                    let y = g.conv2d(format!("b{b}_cbranch"), cur, conv);
                    cur = g.concat(format!("b{b}_concat"), &[cur, y]);
                    c += cout;
                } else {
                    // shapes differ: plain conv instead
                    c = conv.out_channels();
                    hw = out;
                    cur = g.conv2d(format!("b{b}_conv"), cur, conv);
                }
            }
            3 if hw[0] >= 2 && hw[1] >= 2 => {
                let k = 2;
                let stride = r.int(1, 2);
                let p = Pool2d {
                    kernel: [k, k],
                    stride: [stride, stride],
                    padding: [
                        r.int(0, k - 1),
                        r.int(0, k - 1),
                        r.int(0, k - 1),
                        r.int(0, k - 1),
                    ],
                };
                let oh = (hw[0] + p.padding[0] + p.padding[2] - k) / stride + 1;
                let ow = (hw[1] + p.padding[1] + p.padding[3] - k) / stride + 1;
                cur = if opts.pools_and_concat && r.coin(0.5) {
                    g.avg_pool(format!("b{b}_avgpool"), cur, p)
                } else {
                    g.max_pool(format!("b{b}_maxpool"), cur, p)
                };
                hw = [oh, ow];
            }
            _ => {
                let conv = random_conv(r, c, hw, opts);
                hw = conv_out(&conv, hw);
                c = conv.out_channels();
                cur = g.conv2d(format!("b{b}_conv"), cur, conv);
            }
        }
    }
    let (mut cur, mut n): (NodeId, usize) = if opts.pools_and_concat && r.coin(0.5) {
        (g.global_avg_pool("gap", cur), c)
    } else {
        (g.flatten("flatten", cur), hw[0] * hw[1] * c)
    };
    let layers = r.int(1, 2);
    for l in 0..layers {
        let out = r.int(2, 10);
        let a = 1.5 / (n as f32).sqrt();
        let mut lin =
            Linear::new(uniform(r, out * n, -a, a), [out, n]).with_bias(uniform(r, out, -0.2, 0.2));
        if l + 1 < layers {
            lin = lin.with_activation(act(r));
        }
        cur = g.linear(format!("fc{l}"), cur, lin);
        n = out;
    }
    g.output("logits", cur);
    g
}

/// Maximum relative difference `max|a − b| / max(max|b|, 1e-6)`.
pub fn rel_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |d, (x, y)| d.max((x - y).abs())) / m
}

#[allow(unused_imports)] // not every test uses both
pub use qat_int8_runtime::testing::models::{one_op as one_op_model, tensor};

/// The uint8 codes of tensor `t` when the qat runtime runs `model` on `x`.
pub fn codes_of(model: &qat_int8_runtime::Int8Model, x: &ArrayD<f32>, t: usize) -> Vec<u8> {
    let values = qat_int8_runtime::Executor::new(model)
        .expect("executor")
        .run_all(x.view())
        .expect("run");
    match &values[t] {
        qat_int8_runtime::TensorValue::U8(a) => a.iter().copied().collect(),
        v => panic!("tensor {t} holds {v:?}, not codes"),
    }
}

/// Every layer's codes equal the simulation's, in isolation and end to end.
pub fn assert_exact(rep: &qat_export::FidelityReport, what: &str) {
    for l in &rep.layers {
        assert!(
            l.isolated.max_abs_lsb == 0 && l.end_to_end.max_abs_lsb == 0,
            "{what}: layer {} ({}) isolated max {} LSB, end to end max {} LSB\n{}",
            l.node,
            l.op,
            l.isolated.max_abs_lsb,
            l.end_to_end.max_abs_lsb,
            rep.to_table()
        );
    }
}
