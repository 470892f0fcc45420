//! The executor's tensor buffers: which tensors hold the whole batch, and their allocation for a
//! batch size and split of the batch.

use super::{Executor, RunError};
use crate::model::{DType, Int8Model, Op, TensorId};

/// One tensor's storage.
#[derive(Debug, Clone)]
pub(super) enum Buf {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Default for Buf {
    fn default() -> Self {
        Buf::U8(Vec::new())
    }
}

/// The layout of the tensor buffers: batch size, the chunks of a run, samples per tile, and
/// whether every tensor holds the whole batch ([`Executor::run_all`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Layout {
    pub(super) n: usize,
    pub(super) chunks: Vec<std::ops::Range<usize>>,
    pub(super) tile: usize,
    pub(super) all: bool,
}

impl Executor<'_> {
    /// The batch size of the last complete run.
    pub(super) fn batch(&self) -> usize {
        self.layout.as_ref().map_or(0, |l| l.n)
    }

    /// Whether tensor `t` holds the whole batch (else one tile per chunk); `all`: every tensor
    /// does.
    pub(super) fn whole(&self, t: TensorId, all: bool) -> bool {
        all || self.kept[t]
    }

    /// Allocates the buffers for `layout` (unless they already are): a kept tensor (or every
    /// tensor, for `run_all`) holds the batch; the others hold one tile of samples per chunk,
    /// which each tile of the chunk reuses, so that the intermediate tensors of a large batch
    /// stay in cache however large the batch.
    pub(super) fn plan_buffers(&mut self, layout: Layout) -> Result<(), RunError> {
        if self.layout.as_ref() == Some(&layout) && self.bufs.len() == self.model.tensors.len() {
            return Ok(());
        }
        // Only a complete plan is marked as such: an error half-way replans next time.
        self.layout = None;
        let n = layout.n;
        let tiles: usize = layout.chunks.iter().map(|c| c.len().min(layout.tile)).sum();
        self.bufs = self
            .model
            .tensors
            .iter()
            .enumerate()
            .map(|(t, info)| {
                let samples = if self.whole(t, layout.all) { n } else { tiles };
                let len = self.sizes[t]
                    .checked_mul(samples)
                    .ok_or(RunError::BatchTooLarge {
                        batch: n,
                        tensor: t,
                    })?;
                Ok(match info.dtype {
                    DType::U8 => Buf::U8(vec![0; len]),
                    DType::F32 => Buf::F32(vec![0.0; len]),
                })
            })
            .collect::<Result<_, RunError>>()?;
        self.layout = Some(layout);
        Ok(())
    }
}

/// The tensors a run reads back after the ops ([`Executor::kept`]): the model input, the outputs,
/// and the uint8 tensors that the outputs' `Dequantize` ops read (`run_u8` returns those codes).
pub(super) fn kept_tensors(model: &Int8Model) -> Vec<bool> {
    let mut kept = vec![false; model.tensors.len()];
    kept[model.input] = true;
    for &t in &model.outputs {
        kept[t] = true;
        for op in &model.ops {
            if let Op::Dequantize { input, output } = op
                && *output == t
            {
                kept[*input] = true;
            }
        }
    }
    kept
}
