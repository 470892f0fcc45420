//! Data-parallel training: the [`Collective`] a trainer needs from a process group, and the three
//! synchronizations it does with it.
//!
//! With `W` ranks, each rank runs the same model on its own shard of every epoch (global batch `b`
//! goes to rank `b mod W`), and after each backward pass the gradients are averaged:
//! `g = (1/W) Σ_r g_r`. With per-rank batches of `B`, that is the gradient of the mean loss over the
//! global batch of `W·B` samples, so every rank applies the same update and the replicas stay
//! identical ([`all_reduce_mean_grads`]). The state that the forward pass changes outside the
//! optimizer (batch-norm running statistics, the EMA activation ranges of the observers) is made
//! equal again after each step by [`sync_buffers`]: a float buffer that differs across ranks becomes
//! the mean of the ranks' values; one that is already equal everywhere (a frozen observer, a flag,
//! a weight's min/max) is left bit for bit as it is. At the start every parameter and buffer is
//! broadcast from rank 0 ([`broadcast_state`]), so the replicas start equal whatever their seeds.
//!
//! The process group itself lives in the `qat-dist` crate (PyTorch's c10d: a TCPStore rendezvous
//! and the Gloo backend); this module only needs the trait, so tests can run it on a stand-in.

use tch::{Kind, Tensor, nn::VarStore};

/// A reduction applied across the ranks of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise minimum.
    Min,
    /// Elementwise maximum.
    Max,
}

/// A collective operation failed (the message says which and why; a rank that went away shows
/// as a timeout or a closed connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("collective {op} failed on rank {rank}: {message}")]
pub struct CollectiveError {
    /// The operation (`all_reduce`, `broadcast`, …).
    pub op: &'static str,
    /// This process's rank.
    pub rank: usize,
    /// What the backend said.
    pub message: String,
}

/// The collectives of a process group of `world_size()` ranks, as data-parallel training uses
/// them. Every rank must make the same calls in the same order with tensors of the same shape and
/// kind; the tensors are dense and contiguous and are changed in place.
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// In place: `t ← op over the ranks of t`.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<(), CollectiveError>;
    /// In place: `t ← root's t`.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), CollectiveError>;
}

/// Errors of the synchronizations: a collective or a torch op.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The collective failed.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// A torch op around it failed.
    #[error("data-parallel sync: {0}")]
    Torch(#[from] tch::TchError),
}

/// The variables of `vs` sorted by name: parameters (`requires_grad`) and buffers, in an order
/// every rank agrees on.
fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// One contiguous 1-D buffer of `kind` holding `ts` one after the other.
fn flatten(ts: &[Tensor], kind: Kind) -> Result<Tensor, tch::TchError> {
    let views: Vec<Tensor> = ts
        .iter()
        .map(|t| t.f_reshape([-1])?.f_to_kind(kind))
        .collect::<Result<_, _>>()?;
    Tensor::f_cat(&views, 0)
}

/// Copies the pieces of `flat` back into `ts` (the inverse of [`flatten`]).
fn unflatten_into(flat: &Tensor, ts: &[Tensor]) -> Result<(), tch::TchError> {
    let mut off = 0;
    for t in ts {
        let n = t.numel() as i64;
        let piece = flat.f_narrow(0, off, n)?.f_view_as(t)?;
        t.shallow_clone().f_copy_(&piece)?;
        off += n;
    }
    Ok(())
}

/// Broadcasts every parameter and buffer of `vs` from rank 0, so every replica starts from rank
/// 0's model.
pub fn broadcast_state(c: &dyn Collective, vs: &VarStore) -> Result<(), SyncError> {
    let _g = tch::no_grad_guard();
    let all: Vec<Tensor> = sorted_variables(vs).into_iter().map(|(_, t)| t).collect();
    broadcast_by_kind(c, &all)
}

/// Broadcasts `ts` from rank 0: one flat buffer per tensor kind.
fn broadcast_by_kind(c: &dyn Collective, ts: &[Tensor]) -> Result<(), SyncError> {
    let mut kinds: Vec<Kind> = ts.iter().map(Tensor::kind).collect();
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<Tensor> = ts
            .iter()
            .filter(|t| t.kind() == kind)
            .map(Tensor::shallow_clone)
            .collect();
        let flat = flatten(&of_kind, kind)?;
        c.broadcast(&flat, 0)?;
        unflatten_into(&flat, &of_kind)?;
    }
    Ok(())
}

/// Averages the gradients of the trainable variables over the ranks, in place:
/// `g ← (1/W) Σ_r g_r` (one all-reduce of one flat buffer). Variables without a gradient are
/// skipped; every rank must have gradients for the same variables (same model, same schedule).
pub fn all_reduce_mean_grads(c: &dyn Collective, vs: &VarStore) -> Result<(), SyncError> {
    let _g = tch::no_grad_guard();
    let grads: Vec<Tensor> = vs
        .trainable_variables()
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() || c.world_size() <= 1 {
        return Ok(());
    }
    let kind = grads[0].kind();
    let flat = flatten(&grads, kind)?;
    c.all_reduce(&flat, ReduceOp::Sum)?;
    let flat = flat.f_div_scalar(c.world_size() as f64)?;
    unflatten_into(&flat, &grads)?;
    Ok(())
}

/// Makes the buffers (the variables without `requires_grad`) equal on every rank: a float buffer
/// element that differs across ranks becomes the mean over the ranks, one that is equal everywhere
/// keeps its exact value (so frozen observers and flags never drift by rounding); non-float buffers
/// are taken from rank 0. Two all-reduces: the maximum of `[x, -x]` (so the maximum and the
/// minimum at once) and the sum.
pub fn sync_buffers(c: &dyn Collective, vs: &VarStore) -> Result<(), SyncError> {
    if c.world_size() <= 1 {
        return Ok(());
    }
    let _g = tch::no_grad_guard();
    let buffers: Vec<Tensor> = sorted_variables(vs)
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| !t.requires_grad())
        .collect();
    let (floats, others): (Vec<Tensor>, Vec<Tensor>) =
        buffers.into_iter().partition(Tensor::is_floating_point);
    if !floats.is_empty() {
        let local = flatten(&floats, Kind::Double)?;
        let n = local.numel() as i64;
        // One MAX over [x, -x] gives the maximum and the negated minimum together.
        let extremes = Tensor::f_cat(&[&local, &local.f_neg()?], 0)?;
        c.all_reduce(&extremes, ReduceOp::Max)?;
        let sum = local.copy();
        c.all_reduce(&sum, ReduceOp::Sum)?;
        let mean = sum.f_div_scalar(c.world_size() as f64)?;
        let hi = extremes.f_narrow(0, 0, n)?;
        let neg_lo = extremes.f_narrow(0, n, n)?;
        let same = hi.f_eq_tensor(&neg_lo.f_neg()?)?;
        let merged = local.f_where_self(&same, &mean)?;
        unflatten_into(&merged, &floats)?;
    }
    broadcast_by_kind(c, &others)
}

/// The per-rank step count and this rank's batches of an epoch of `num_batches` global batches:
/// batch `b` belongs to rank `b mod W`; every rank takes the same number, `⌊num_batches / W⌋`
/// (capped by `cap`), so no rank waits in a collective for a step another rank never takes.
///
/// ```
/// use qat_train::trainer::collective::shard_steps;
/// assert_eq!(shard_steps(10, 3, None), 3);
/// assert_eq!(shard_steps(10, 3, Some(2)), 2);
/// assert_eq!(shard_steps(10, 1, None), 10);
/// ```
pub fn shard_steps(num_batches: usize, world: usize, cap: Option<usize>) -> usize {
    let per_rank = num_batches / world.max(1);
    cap.map_or(per_rank, |c| c.min(per_rank))
}
