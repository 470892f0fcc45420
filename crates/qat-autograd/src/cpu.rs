//! The host fast paths of the training step on the CPU, and the per-thread switch that turns them
//! off.
//!
//! On the CPU a tensor's values are in host memory: reading them is not a transfer and costs no
//! synchronization, while each small libtorch op that the device form of a training step is
//! composed of (the observers' updates, the parameters, the fake-quant masks: dozens per layer)
//! costs a dispatch and an allocation. So, on the CPU, the one-pass fake-quant kernels read `S` and
//! `Z` from the parameter tensors' memory, and qat-train's observers update their state and compute
//! their parameters on the host from the tensors' memory, with qat-core's functions, which the
//! device form equals bit for bit (tested). Nothing of that goes through [`crate::host_read`]: it is
//! not a device read.
//!
//! [`set_fast_paths`]`(false)` (or [`with_fast_paths`]) makes this thread take the device form on the CPU too (the same
//! ops as on a GPU), so that tests can check that form, its values and its zero host reads, on any
//! machine.
//!
//! ```
//! use qat_autograd::cpu;
//! use tch::Tensor;
//! let t = Tensor::from_slice(&[1.5f32, -2.0]);
//! assert_eq!(cpu::with_slice(&t, |v: &[f32]| v.iter().sum::<f32>()), Some(-0.5));
//! let off = cpu::with_fast_paths(false, || cpu::with_slice(&t, |v: &[f32]| v.len()));
//! assert_eq!(off, None); // the device form
//! ```

use std::cell::Cell;

use tch::kind::Element;
use tch::{Device, Tensor};

thread_local! {
    static FAST: Cell<bool> = const { Cell::new(true) };
}

/// Whether this thread takes the host fast paths on CPU tensors (default `true`).
pub fn fast_paths() -> bool {
    FAST.with(Cell::get)
}

/// Turns this thread's host fast paths on or off; returns the previous setting.
pub fn set_fast_paths(on: bool) -> bool {
    FAST.with(|f| f.replace(on))
}

/// `f()` with this thread's host fast paths set to `on`, restored afterwards (also when `f`
/// panics).
///
/// ```
/// use qat_autograd::cpu;
/// assert!(!cpu::with_fast_paths(false, cpu::fast_paths));
/// assert!(cpu::fast_paths());
/// ```
pub fn with_fast_paths<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_fast_paths(self.0);
        }
    }
    let _restore = Restore(set_fast_paths(on));
    f()
}

/// Whether `t` is a contiguous CPU tensor of `T`'s kind and the fast paths are on: whether
/// [`with_slice`] and [`with_slice_mut`] will give its values.
pub fn in_host_memory<T: Element>(t: &Tensor) -> bool {
    fast_paths()
        && t.device() == Device::Cpu
        && t.f_kind().is_ok_and(|k| k == T::KIND)
        && t.is_contiguous()
}

/// `f` of the values of `t` (row-major), read in place; `None` unless the fast paths are on and `t`
/// is a contiguous CPU tensor of kind `T` (then the caller takes the device form).
pub fn with_slice<T: Element, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    if !in_host_memory::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(f(&[]));
    }
    // SAFETY: `t` is a contiguous CPU tensor of `n` elements of kind `T` (checked above) starting at
    // `data_ptr()` (which includes the storage offset), borrowed for the whole call; the slice does
    // not outlive `f`.
    let s = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, n) };
    Some(f(s))
}

/// `f` of the values of `t`, writable in place; `None` as for [`with_slice`]. The write is not seen
/// by libtorch's version counter (the caller records what it wrote where it keeps copies).
pub fn with_slice_mut<T: Element, R>(t: &mut Tensor, f: impl FnOnce(&mut [T]) -> R) -> Option<R> {
    if !in_host_memory::<T>(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(f(&mut []));
    }
    // SAFETY: as in `with_slice`; `t` is borrowed mutably for the whole call, so no other slice made
    // through it is alive, and the slice does not outlive `f`.
    let s = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) };
    Some(f(s))
}
