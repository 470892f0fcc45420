//! The float interpreter of a [`FloatGraph`]: plain loops over NHWC `ndarray` tensors, f64
//! accumulation. It is the float reference (BN-folding tests, PTQ calibration) and, with
//! fake-quantized weights and per-node activation fake quant, the simulation twin
//! ([`crate::simulate`]).
//!
//! Op semantics (batch `N` first, then the per-sample shape):
//! * conv: `y[n,y,x,o] = Σ_{ky,kx,i} x[n, y·s_h − p_t + ky·d_h, x·s_w − p_l + kx·d_w, g·I_g + i] ·
//!   W[o,ky,kx,i] + b[o]` with `g = o / (O/groups)`, zero outside the input; then batch norm
//!   `γ(y − mean)/√(var + eps) + β` if present, then the activation;
//! * linear: `y[n,o] = Σ_i W[o,i]·x[n,i] + b[o]` (a `[H, W, C]` input is read in NHWC order);
//! * add: `act(a + b)`; concat along the last axis;
//! * average pool: mean over the window cells inside the input (padding excluded, as TFLite);
//!   max pool: max over the cells inside the input; global average pool: mean over H, W;
//! * flatten: NHWC row-major reshape; output: identity.
//!
//! ```
//! use ndarray::ArrayD;
//! use qat_export::{FloatGraph, interp::run};
//! use qat_export::ir::Linear;
//! let mut g = FloatGraph::new("fc");
//! let x = g.input("x", &[2]);
//! let y = g.linear("fc", x, Linear::new(vec![1.0, 2.0], [1, 2]).with_bias(vec![0.5]));
//! g.output("y", y);
//! let input = ArrayD::from_shape_vec(vec![1, 2], vec![3.0, 4.0]).unwrap();
//! let vals = run(&g, input.view(), None)?;
//! assert_eq!(vals[y.0].as_slice().unwrap(), &[11.5]);
//! # Ok::<(), qat_export::GraphError>(())
//! ```

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use qat_core::QuantParams;
use rayon::prelude::*;

use crate::error::GraphError;
use crate::ir::{Activation, BatchNorm, Conv2d, FloatGraph, FloatOp, Linear, Node, Pool2d};

/// Runs `g` on a batch `input` of shape `[N, …per-sample shape]` and returns every node's output
/// (index = node id), each `[N, …]`.
///
/// With `fake_quant = Some(params)`, node `i`'s output is replaced by
/// `params[i].fake_quant(·)` element-wise when `params[i]` is `Some` (paper §3: activations are
/// fake-quantized after the activation function and after add/concat/pool). Weights are used as
/// stored: the simulation twin passes a graph whose weights are already fake-quantized.
pub fn run(
    g: &FloatGraph,
    input: ArrayViewD<'_, f32>,
    fake_quant: Option<&[Option<QuantParams>]>,
) -> Result<Vec<ArrayD<f32>>, GraphError> {
    let shapes = g.validate()?;
    check_input(g, &shapes, input.shape())?;
    let n = input.shape()[0];
    let input = input.to_owned();
    let mut vals: Vec<ArrayD<f32>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let ins: Vec<&ArrayD<f32>> = match node.op {
            FloatOp::Input { .. } => vec![&input],
            _ => node.inputs.iter().map(|j| &vals[j.0]).collect(),
        };
        let mut out_shape = vec![n];
        out_shape.extend_from_slice(&shapes[i]);
        let mut y = eval_node(node, &ins, &out_shape)?;
        if let Some(Some(p)) = fake_quant.and_then(|f| f.get(i)) {
            y.mapv_inplace(|v| p.fake_quant(v));
        }
        vals.push(y);
    }
    Ok(vals)
}

/// Checks that a batch of shape `batch` fits `g`'s input node (`shapes`: every node's per-sample
/// shape, as [`FloatGraph::validate`] returns them).
pub(crate) fn check_input(
    g: &FloatGraph,
    shapes: &[Vec<usize>],
    batch: &[usize],
) -> Result<(), GraphError> {
    let in_id = g.input_id()?;
    let expected = &shapes[in_id.0];
    if batch.len() != expected.len() + 1 || &batch[1..] != expected.as_slice() {
        return Err(GraphError::InputShape {
            node: g.nodes[in_id.0].name.clone(),
            expected: expected.clone(),
            got: batch.to_vec(),
        });
    }
    Ok(())
}

/// Evaluates one node on batched inputs (for `Input`, `ins[0]` is the graph input) and returns
/// its output of batched shape `out_shape`. The caller guarantees shapes that
/// [`FloatGraph::validate`] accepted (as [`run`] does).
pub(crate) fn eval_node(
    node: &Node,
    ins: &[&ArrayD<f32>],
    out_shape: &[usize],
) -> Result<ArrayD<f32>, GraphError> {
    let arity = |k: usize| {
        if ins.len() < k {
            Err(GraphError::Arity {
                node: node.name.clone(),
                op: node.op.kind(),
                expected: "as validated",
                got: ins.len(),
            })
        } else {
            Ok(())
        }
    };
    let shape_err = |e: ndarray::ShapeError| GraphError::Shape {
        node: node.name.clone(),
        op: node.op.kind(),
        reason: e.to_string(),
    };
    arity(match node.op {
        FloatOp::Add { .. } => 2,
        _ => 1,
    })?;
    let n = out_shape.first().copied().unwrap_or(0);
    Ok(match &node.op {
        FloatOp::Input { .. } => ins[0].clone(),
        FloatOp::Conv2d(c) => conv2d(ins[0], c, out_shape),
        FloatOp::Linear(l) => linear(ins[0], l, n),
        FloatOp::Add { activation } => {
            let mut y = ins[0] + ins[1];
            y.mapv_inplace(|v| activation.apply(v));
            y
        }
        FloatOp::Concat => {
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            let last = Axis(out_shape.len() - 1);
            ndarray::concatenate(last, &views).map_err(shape_err)?
        }
        FloatOp::AvgPool(p) => pool(ins[0], p, out_shape, false),
        FloatOp::MaxPool(p) => pool(ins[0], p, out_shape, true),
        FloatOp::GlobalAvgPool => global_avg_pool(ins[0], out_shape),
        FloatOp::Flatten | FloatOp::Output => {
            let data: Vec<f32> = ins[0].iter().copied().collect();
            ArrayD::from_shape_vec(IxDyn(out_shape), data).map_err(shape_err)?
        }
    })
}

fn contiguous(x: &ArrayD<f32>) -> Vec<f32> {
    x.iter().copied().collect()
}

fn contiguous_f64(x: &ArrayD<f32>) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `[N, H, W, C]` of a batched NHWC tensor shape.
pub(crate) fn nhwc(shape: &[usize]) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

fn apply_bn_act(acc: f64, c: usize, bn: Option<&BatchNorm>, act: Activation) -> f32 {
    let v = match bn {
        Some(bn) => {
            let inv = 1.0 / (bn.var[c] as f64 + bn.eps as f64).sqrt();
            bn.gamma[c] as f64 * (acc - bn.mean[c] as f64) * inv + bn.beta[c] as f64
        }
        None => acc,
    };
    act.apply(v as f32)
}

/// `Σ a[i]·b[i]` in f64 with four independent partial sums (vectorizes; the summation order is
/// fixed, so results are deterministic; exact for integer operands below 2^53).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// NHWC conv with OHWI weights (see the module docs for the formula). Per output pixel the
/// input patch of each group is gathered once (zeros where the window leaves the input, which
/// add exactly 0), then every output channel is one dot product with its weight row.
fn conv2d(x: &ArrayD<f32>, c: &Conv2d, out_shape: &[usize]) -> ArrayD<f32> {
    let wf: Vec<f64> = c.weight.iter().map(|&v| v as f64).collect();
    let out = conv2d_with(
        &contiguous_f64(x),
        nhwc(x.shape()),
        c,
        &wf,
        out_shape,
        |d, oc| {
            let acc = c.bias.as_ref().map_or(0.0, |b| b[oc] as f64) + d;
            apply_bn_act(acc, oc, c.batch_norm.as_ref(), c.activation)
        },
    );
    ArrayD::from_shape_vec(IxDyn(out_shape), out).expect("conv output size matches its shape")
}

/// The conv loop of [`conv2d`] on any f64 input values `xs` (`[N, H, W, C_in]` row-major) and
/// weights `wf` (OHWI), with `c`'s geometry: every output element is `finish(Σ x·w, channel)`
/// (bias and activation are `finish`'s business). The simulation runs it on centred integer codes,
/// where every sum is exact.
pub(crate) fn conv2d_with<T: Copy + Default + Send>(
    xs: &[f64],
    [_, h, w, cin]: [usize; 4],
    c: &Conv2d,
    wf: &[f64],
    out_shape: &[usize],
    finish: impl Fn(f64, usize) -> T + Sync,
) -> Vec<T> {
    let (ho, wo, o) = (out_shape[1], out_shape[2], out_shape[3]);
    let [_, kh, kw, ig] = c.weight_shape;
    let og = o / c.groups;
    let k = kh * kw * ig;
    let mut out = vec![T::default(); out_shape.iter().product()];
    let per_sample = ho * wo * o;
    if per_sample > 0 {
        out.par_chunks_mut(per_sample)
            .enumerate()
            .for_each(|(b, ys)| {
                let xb = &xs[b * h * w * cin..(b + 1) * h * w * cin];
                // patch[g][ky][kx][i]
                let mut patch = vec![0f64; c.groups * k];
                for oy in 0..ho {
                    for ox in 0..wo {
                        for ky in 0..kh {
                            let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                - c.padding[0] as isize;
                            for kx in 0..kw {
                                let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                    - c.padding[1] as isize;
                                let inside =
                                    iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                                let base = if inside {
                                    (iy as usize * w + ix as usize) * cin
                                } else {
                                    0
                                };
                                for g in 0..c.groups {
                                    let dst = &mut patch[g * k + (ky * kw + kx) * ig..][..ig];
                                    if inside {
                                        dst.copy_from_slice(&xb[base + g * ig..][..ig]);
                                    } else {
                                        dst.fill(0.0);
                                    }
                                }
                            }
                        }
                        let yo = &mut ys[(oy * wo + ox) * o..][..o];
                        for (oc, y) in yo.iter_mut().enumerate() {
                            let g = oc / og;
                            *y = finish(dot(&patch[g * k..][..k], &wf[oc * k..][..k]), oc);
                        }
                    }
                }
            });
    }
    out
}

fn linear(x: &ArrayD<f32>, l: &Linear, n: usize) -> ArrayD<f32> {
    let wf: Vec<f64> = l.weight.iter().map(|&v| v as f64).collect();
    let out = linear_with(
        &contiguous_f64(x),
        &wf,
        l.weight_shape,
        n,
        |oc| l.bias.as_ref().map_or(0.0, |b| b[oc] as f64),
        |acc, _| l.activation.apply(acc as f32),
    );
    ArrayD::from_shape_vec(IxDyn(&[n, l.weight_shape[0]]), out)
        .expect("linear output size matches its shape")
}

/// The fully-connected loop of [`linear`] on f64 inputs `xs` (`[N, K]`) and weights `wf`
/// (`[O, K]`): `finish(init(o) + Σ_k x[k]·w[o, k], o)`, summed left to right.
pub(crate) fn linear_with<T: Copy + Default>(
    xs: &[f64],
    wf: &[f64],
    [o, k]: [usize; 2],
    n: usize,
    init: impl Fn(usize) -> f64,
    finish: impl Fn(f64, usize) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); n * o];
    for b in 0..n {
        let xb = &xs[b * k..(b + 1) * k];
        for oc in 0..o {
            let wr = &wf[oc * k..(oc + 1) * k];
            let mut acc = init(oc);
            for (xv, wv) in xb.iter().zip(wr) {
                acc += xv * wv;
            }
            out[b * o + oc] = finish(acc, oc);
        }
    }
    out
}

fn pool(x: &ArrayD<f32>, p: &Pool2d, out_shape: &[usize], max: bool) -> ArrayD<f32> {
    let out = pool_with(&contiguous(x), nhwc(x.shape()), p, out_shape, |cells| {
        if max {
            cells.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        } else {
            mean(cells)
        }
    });
    ArrayD::from_shape_vec(IxDyn(out_shape), out).expect("pool output size matches its shape")
}

/// `Σ cells / n` summed left to right in f64 (0 for no cell).
fn mean(cells: &[f32]) -> f32 {
    let acc = cells.iter().fold(0f64, |a, &v| a + v as f64);
    (acc / cells.len().max(1) as f64) as f32
}

/// Every window of a pool over `xs` (`[N, H, W, C]` row-major): `reduce(cells)` with the window's
/// in-bounds cells in row-major order (padding excluded). Output `[N, Ho, Wo, C]`.
pub(crate) fn pool_with<T: Copy, U: Clone + Default>(
    xs: &[T],
    [n, h, w, c]: [usize; 4],
    p: &Pool2d,
    out_shape: &[usize],
    reduce: impl Fn(&[T]) -> U,
) -> Vec<U> {
    let (ho, wo) = (out_shape[1], out_shape[2]);
    let mut out = vec![U::default(); out_shape.iter().product()];
    let mut cells = Vec::with_capacity(p.kernel[0] * p.kernel[1]);
    for b in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                let y0 = (oy * p.stride[0]) as isize - p.padding[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
                for ch in 0..c {
                    cells.clear();
                    for ky in 0..p.kernel[0] as isize {
                        let iy = y0 + ky;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..p.kernel[1] as isize {
                            let ix = x0 + kx;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            cells.push(xs[((b * h + iy as usize) * w + ix as usize) * c + ch]);
                        }
                    }
                    out[((b * ho + oy) * wo + ox) * c + ch] = reduce(&cells);
                }
            }
        }
    }
    out
}

fn global_avg_pool(x: &ArrayD<f32>, out_shape: &[usize]) -> ArrayD<f32> {
    let out = global_pool_with(&contiguous(x), nhwc(x.shape()), mean);
    ArrayD::from_shape_vec(IxDyn(out_shape), out).expect("pool output size matches its shape")
}

/// Every channel of a global pool over `xs` (`[N, H, W, C]`): `reduce(cells)` with the channel's
/// `H·W` cells in row-major order. Output `[N, C]`.
pub(crate) fn global_pool_with<T: Copy, U>(
    xs: &[T],
    [n, h, w, c]: [usize; 4],
    reduce: impl Fn(&[T]) -> U,
) -> Vec<U> {
    let mut out = Vec::with_capacity(n * c);
    let mut cells = Vec::with_capacity(h * w);
    for b in 0..n {
        for ch in 0..c {
            cells.clear();
            cells.extend((0..h * w).map(|i| xs[(b * h * w + i) * c + ch]));
            out.push(reduce(&cells));
        }
    }
    out
}
