//! Every read of tensor values back to the host in qat-autograd and qat-train goes through this
//! module, and each one is counted.
//!
//! On a GPU a read of a tensor value (`double_value`, `Vec::try_from`, …) waits for every queued
//! kernel to finish: a training step that reads one is bound by round trips, not by arithmetic. So
//! the training step must not read at all (the observers' state, the quantization parameters and
//! the schedule's switches stay on the device or are decided on the host), and reads are reserved
//! for export, checkpoints, logging and warm-up. The counter makes that testable on any machine,
//! the CPU included: [`count`] before and after a step must be equal.
//!
//! The counter is per thread (libtorch ops run on the calling thread), so parallel tests do not
//! disturb each other. [`by_label`] tells which reads happened, for a failing test's message.
//!
//! ```
//! use qat_autograd::host_read;
//! use tch::Tensor;
//! let t = Tensor::from_slice(&[1.5f32, 2.0]);
//! let before = host_read::count();
//! let v = host_read::vec_f32(&t, "example")?;
//! assert_eq!(v, vec![1.5, 2.0]);
//! assert_eq!(host_read::scalar_f64(&t.sum(tch::Kind::Float), "example")?, 3.5);
//! assert_eq!(host_read::count() - before, 2);
//! # Ok::<(), tch::TchError>(())
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use tch::{Kind, Tensor};

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static LABELS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

fn record(what: &'static str) {
    COUNT.with(|c| c.set(c.get() + 1));
    LABELS.with(|l| *l.borrow_mut().entry(what).or_insert(0) += 1);
}

/// Number of host reads made by this thread so far.
pub fn count() -> u64 {
    COUNT.with(Cell::get)
}

/// This thread's host reads so far, by label (the `what` of each call).
pub fn by_label() -> BTreeMap<&'static str, u64> {
    LABELS.with(|l| l.borrow().clone())
}

/// The value of the single element of `t` (any shape with one element), as f64. One host read.
pub fn scalar_f64(t: &Tensor, what: &'static str) -> Result<f64, tch::TchError> {
    record(what);
    t.f_reshape([-1])?.f_double_value(&[0])
}

/// The value of the single element of `t`, as i64 (integer and bool tensors). One host read.
pub fn scalar_i64(t: &Tensor, what: &'static str) -> Result<i64, tch::TchError> {
    record(what);
    t.f_reshape([-1])?.f_int64_value(&[0])
}

/// All values of `t` (any shape, kind and device) as f32, in row-major order. One host read.
pub fn vec_f32(t: &Tensor, what: &'static str) -> Result<Vec<f32>, tch::TchError> {
    record(what);
    let flat = t.f_detach()?.f_to_kind(Kind::Float)?.f_flatten(0, -1)?;
    Vec::<f32>::try_from(&flat)
}

/// All values of `t` (any shape, kind and device) as f64, in row-major order. One host read.
pub fn vec_f64(t: &Tensor, what: &'static str) -> Result<Vec<f64>, tch::TchError> {
    record(what);
    let flat = t.f_detach()?.f_to_kind(Kind::Double)?.f_flatten(0, -1)?;
    Vec::<f64>::try_from(&flat)
}

/// A host copy of a one-element tensor (a flag, a counter), valid while the tensor's version
/// counter is unchanged: every in-place write (`fill_`, `copy_`, a `VarStore::load`) bumps it, so
/// a stale copy is never used, and reading the counter is host metadata, not a device read. The
/// owner records what it writes ([`HostCopy::set`]), so its own writes cost no read either.
///
/// ```
/// use qat_autograd::host_read::{self, HostCopy};
/// use tch::Tensor;
/// let mut flag = Tensor::from_slice(&[0f32]);
/// let copy = HostCopy::default();
/// let n = host_read::count();
/// assert_eq!(copy.get(&flag, "flag")?, 0.0); // read once
/// assert_eq!(copy.get(&flag, "flag")?, 0.0); // cached
/// assert_eq!(host_read::count() - n, 1);
/// let _ = flag.fill_(1.0);                    // a write behind the copy's back
/// assert_eq!(copy.get(&flag, "flag")?, 1.0); // read again
/// assert_eq!(host_read::count() - n, 2);
/// # Ok::<(), tch::TchError>(())
/// ```
#[derive(Debug, Default)]
pub struct HostCopy {
    cell: Cell<Option<(i64, f64)>>,
}

impl HostCopy {
    /// The value of `t` (one element): the copy if `t` was not written since, else one host read.
    pub fn get(&self, t: &Tensor, what: &'static str) -> Result<f64, tch::TchError> {
        match self.peek(t) {
            Some(v) => Ok(v),
            None => {
                let version = t.f_internal_version()?;
                let v = scalar_f64(t, what)?;
                self.cell.set(Some((version, v)));
                Ok(v)
            }
        }
    }

    /// The copy if it is still valid for `t`, without reading.
    pub fn peek(&self, t: &Tensor) -> Option<f64> {
        let version = t.f_internal_version().ok()?;
        self.cell
            .get()
            .and_then(|(ver, v)| (ver == version).then_some(v))
    }

    /// Records `v` as the value just written to `t`.
    pub fn set(&self, t: &Tensor, v: f64) {
        self.cell
            .set(t.f_internal_version().ok().map(|version| (version, v)));
    }
}
