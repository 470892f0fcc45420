//! One op of the executor on one tile of samples.

use std::ops::Range;

use super::{Executor, OpPlan, View, hwc, quant};
use crate::kernels::{KernelPath, gap, par, reference};
use crate::model::{Op, TensorId};

/// The tensors of a chunk of the batch as one op reads them.
struct Inputs<'v, 'a> {
    views: &'v [View<'a>],
    sizes: &'v [usize],
    whole: &'v [bool],
}

/// Where samples `tile` of the chunk lie in a tensor's view: from `tile.start` in a view of the
/// chunk's samples (`whole`), from 0 in a view of one tile.
fn span(whole: bool, per: usize, tile: &Range<usize>) -> Range<usize> {
    let at = if whole { tile.start } else { 0 };
    at * per..(at + tile.len()) * per
}

impl<'v> Inputs<'v, '_> {
    /// Samples `tile` (of the chunk) of U8 tensor `t`.
    fn u8_buf(&self, t: TensorId, tile: &Range<usize>) -> &'v [u8] {
        match &self.views[t] {
            View::U8(v) => &v[span(self.whole[t], self.sizes[t], tile)],
            View::F32(_) => unreachable!("validated model: tensor {t} is U8"),
        }
    }

    /// Samples `tile` (of the chunk) of F32 tensor `t`.
    fn f32_buf(&self, t: TensorId, tile: &Range<usize>) -> &'v [f32] {
        match &self.views[t] {
            View::F32(v) => &v[span(self.whole[t], self.sizes[t], tile)],
            View::U8(_) => unreachable!("validated model: tensor {t} is F32"),
        }
    }
}

impl Executor<'_> {
    /// Runs op `i` on the samples `tile` of a chunk (`views`: the chunk's part of every tensor,
    /// see `whole`; every op computes each sample on its own).
    pub(super) fn run_op(
        &self,
        i: usize,
        op: &Op,
        views: &[View<'_>],
        whole: &[bool],
        tile: Range<usize>,
        out: &mut View<'_>,
    ) {
        let model = &*self.model;
        let so = self.sizes[op.output()];
        let n = tile.len();
        let inputs = Inputs {
            views,
            sizes: &self.sizes,
            whole,
        };
        let at = span(whole[op.output()], so, &tile);
        let out = match out {
            View::U8(o) => TileOut::U8(&mut o[at]),
            View::F32(o) => TileOut::F32(&mut o[at]),
        };
        match (op, &self.plans[i], out) {
            (Op::Quantize { input, .. }, OpPlan::Quantize(p), TileOut::U8(o)) => {
                let x = inputs.f32_buf(*input, &tile);
                per_sample(o, so, |s, o| p.run(&x[s * so..(s + 1) * so], o));
            }
            (Op::Dequantize { input, .. }, _, TileOut::F32(o)) => {
                let x = inputs.u8_buf(*input, &tile);
                let q = quant(model, *input);
                per_sample(o, so, |s, o| {
                    reference::dequantize(&x[s * so..(s + 1) * so], &q, o)
                });
            }
            (Op::Conv2d(c), OpPlan::Conv(plan), TileOut::U8(o)) => {
                plan.run(c, inputs.u8_buf(c.input, &tile), n, o);
            }
            (Op::FullyConnected(f), OpPlan::Fc(plan), TileOut::U8(o)) => {
                plan.run(f, inputs.u8_buf(f.input, &tile), n, o);
            }
            (Op::Add { a, b, .. }, OpPlan::Add(p), TileOut::U8(o)) => {
                let (xa, xb) = (inputs.u8_buf(*a, &tile), inputs.u8_buf(*b, &tile));
                per_sample(o, so, |s, o| {
                    reference::add(&xa[s * so..(s + 1) * so], &xb[s * so..(s + 1) * so], p, o)
                });
            }
            (Op::Concat { inputs: ts, .. }, OpPlan::Concat(rescales), TileOut::U8(o)) => {
                // Each input's rows of `c` channels, rescaled into the output's rows.
                let total = *model.tensors[op.output()].shape.last().unwrap_or(&1);
                per_sample(o, so, |s, o| {
                    let rows = so / total;
                    let mut off = 0;
                    for (&t, r) in ts.iter().zip(rescales) {
                        let len = self.sizes[t];
                        let c = *model.tensors[t].shape.last().unwrap_or(&1);
                        let x = &inputs.u8_buf(t, &tile)[s * len..(s + 1) * len];
                        for row in 0..rows {
                            reference::rescale(
                                &x[row * c..(row + 1) * c],
                                r,
                                &mut o[row * total + off..row * total + off + c],
                            );
                        }
                        off += c;
                    }
                });
            }
            (Op::AvgPool2d(pool), OpPlan::AvgPool(p), TileOut::U8(o)) => {
                let input = pool.input;
                let (x, si) = (inputs.u8_buf(input, &tile), self.sizes[input]);
                let (r, g) = &**p;
                per_sample(o, so, |s, o| {
                    reference::avg_pool2d(&x[s * si..(s + 1) * si], g, r, o)
                });
            }
            (Op::GlobalAvgPool { input, .. }, OpPlan::Pool(r), TileOut::U8(o)) => {
                let (x, si) = (inputs.u8_buf(*input, &tile), self.sizes[*input]);
                let ih = hwc(model, *input);
                let fast = self.path != KernelPath::Reference;
                per_sample(o, so, |s, o| {
                    let x = &x[s * si..(s + 1) * si];
                    if fast {
                        gap::global_avg_pool(x, ih, r, o)
                    } else {
                        reference::global_avg_pool(x, ih, r, o)
                    }
                });
            }
            (Op::MaxPool2d(pool), OpPlan::MaxPool(g), TileOut::U8(o)) => {
                let input = pool.input;
                let (x, si) = (inputs.u8_buf(input, &tile), self.sizes[input]);
                per_sample(o, so, |s, o| {
                    reference::max_pool2d(&x[s * si..(s + 1) * si], g, o)
                });
            }
            (Op::Reshape { input, .. }, _, TileOut::U8(o)) => {
                o.copy_from_slice(inputs.u8_buf(*input, &tile))
            }
            (Op::Reshape { input, .. }, _, TileOut::F32(o)) => {
                o.copy_from_slice(inputs.f32_buf(*input, &tile))
            }
            _ => unreachable!(
                "validated model: op {i} ({}) has consistent dtypes and plan",
                op.kind()
            ),
        }
    }
}

/// An op's output over one tile of samples.
enum TileOut<'a> {
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

/// Runs `f(sample, out_sample)` over the tile's samples, split across threads when the output
/// is large enough ([`par::for_each_chunk`], one unit of work per output element).
fn per_sample<T: Send>(out: &mut [T], per: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let work = out.len();
    par::for_each_chunk(out, per, work, f);
}
