//! The state every range observer keeps, in one struct of VarStore buffers.
//!
//! The buffers are non-trainable VarStore variables, so `VarStore::save`/`load` (and checkpoints)
//! round-trip them. They live on the model's device and a training step updates them there
//! ([`RangeBuffers::update`]: no read back to the host). Reads go through `qat_autograd::host_read`
//! and happen outside the training step: [`RangeBuffers::count`], [`RangeBuffers::read`],
//! [`RangeBuffers::state`], and once each for the two host copies ([`HostCopy`]) — whether the
//! observer is frozen (set by the schedule's switches, which the host decides) and whether it has
//! seen data (a positive count stays positive through [`RangeBuffers::update`]). A write behind the
//! observer's back (a `VarStore::load`) bumps the buffers' version counters and invalidates the
//! copies: the next use reads them once.

use qat_autograd::host_read::{self, HostCopy};
use tch::{Kind, Tensor, nn};

use super::{ObserverError, ObserverErrorKind, ObserverState};

/// The VarStore buffers every observer keeps: `min`, `max` (`f32[channels]`), `count` (`f64[1]`),
/// `frozen` (`f32[1]`, 0 or 1), and the observer's name (its VarStore path).
#[derive(Debug)]
pub(crate) struct RangeBuffers {
    pub(crate) name: String,
    min: Tensor,
    max: Tensor,
    count: Tensor,
    frozen: Tensor,
    /// Host copy of `frozen`.
    frozen_host: HostCopy,
    /// Host copy of the count, kept valid across [`RangeBuffers::update`] once positive.
    calibrated_host: HostCopy,
}

impl RangeBuffers {
    /// Creates the buffers under `path` for `channels` ranges.
    pub(crate) fn new(path: &nn::Path<'_>, channels: i64) -> Result<Self, ObserverError> {
        let name = path.components().collect::<Vec<_>>().join(".");
        let (min, max, count, frozen) = {
            let torch = ObserverError::torch(&name);
            let device = path.device();
            let min = path.f_zeros_no_train("min", &[channels]).map_err(&torch)?;
            let max = path.f_zeros_no_train("max", &[channels]).map_err(&torch)?;
            let count = path.add(
                "count",
                Tensor::f_zeros([1], (Kind::Double, device)).map_err(&torch)?,
                false,
            );
            let frozen = path.f_zeros_no_train("frozen", &[1]).map_err(&torch)?;
            (min, max, count, frozen)
        };
        Ok(Self {
            name,
            min,
            max,
            count,
            frozen,
            frozen_host: HostCopy::default(),
            calibrated_host: HostCopy::default(),
        })
    }

    /// Number of ranges (channels) kept.
    pub(crate) fn channels(&self) -> usize {
        self.min.size()[0] as usize
    }

    /// An error of this observer.
    pub(crate) fn err(&self, kind: ObserverErrorKind) -> ObserverError {
        ObserverError::new(&self.name, kind)
    }

    /// Batches observed. *Host read.*
    pub(crate) fn count(&self) -> u64 {
        host_read::scalar_f64(&self.count, "observer count").map_or(0, |v| v as u64)
    }

    /// Whether data has been observed (`count > 0`). Reads the count until it is positive, then
    /// answers from the host cache.
    pub(crate) fn is_calibrated(&self) -> bool {
        self.calibrated_host
            .get(&self.count, "observer count")
            .is_ok_and(|n| n > 0.0)
    }

    pub(crate) fn set_count(&mut self, n: u64) {
        tch::no_grad(|| {
            let _ = self.count.fill_(n as f64);
        });
        self.calibrated_host.set(&self.count, n as f64);
    }

    /// Whether frozen: the host cache (read from the buffer once if unknown).
    pub(crate) fn frozen(&self) -> bool {
        self.frozen_host
            .get(&self.frozen, "observer frozen")
            .is_ok_and(|v| v != 0.0)
    }

    pub(crate) fn set_frozen(&mut self, f: bool) {
        tch::no_grad(|| {
            let _ = self.frozen.fill_(if f { 1.0 } else { 0.0 });
        });
        self.frozen_host
            .set(&self.frozen, if f { 1.0 } else { 0.0 });
    }

    /// The stored `(min, max)` tensors (`f32[channels]`, on the device).
    pub(crate) fn range_tensors(&self) -> (&Tensor, &Tensor) {
        (&self.min, &self.max)
    }

    /// Records a batch range `(lo, hi)` (`f32[channels]`, on the device) without reading anything
    /// back: the new range is `(lo, hi)` for the first batch (`count = 0`), else `fold` of the
    /// stored and the batch range; the count goes up by one. A batch whose range is not finite
    /// leaves the state unchanged (as the host path, which rejects it with an error).
    pub(crate) fn update(
        &mut self,
        lo: &Tensor,
        hi: &Tensor,
        fold: RangeFold,
    ) -> Result<(), ObserverError> {
        let calibrated = self.calibrated_host.peek(&self.count);
        let r = tch::no_grad(|| -> Result<(), tch::TchError> {
            let ok = lo
                .f_isfinite()?
                .f_all()?
                .f_logical_and(&hi.f_isfinite()?.f_all()?)?;
            let first = self.count.f_eq(0.0)?;
            let clo = fold.apply_tensors(&self.min, lo, true)?;
            let chi = fold.apply_tensors(&self.max, hi, false)?;
            let nlo = lo.f_where_self(&first, &clo)?;
            let nhi = hi.f_where_self(&first, &chi)?;
            let nlo = nlo.f_where_self(&ok, &self.min)?;
            let nhi = nhi.f_where_self(&ok, &self.max)?;
            self.min.f_copy_(&nlo)?;
            self.max.f_copy_(&nhi)?;
            let _ = self.count.f_add_(&ok)?;
            Ok(())
        });
        // The count only grows here: a positive count stays positive (the copy keeps that fact,
        // not the exact count).
        if let Some(n) = calibrated.filter(|&n| n > 0.0) {
            self.calibrated_host.set(&self.count, n);
        }
        r.map_err(ObserverError::torch(&self.name))
    }

    /// [`RangeBuffers::update`] on the host, for buffers in CPU memory (`false`, nothing written,
    /// otherwise: the caller takes the device form): channel `i` becomes `(lo[i], hi[i])` for the
    /// first batch, else `fold` of the stored and the batch range; the count goes up by one. The
    /// caller passes a finite batch range (the device form skips a non-finite one).
    pub(crate) fn update_host(&mut self, lo: &[f32], hi: &[f32], fold: RangeFold) -> bool {
        use qat_autograd::cpu::in_host_memory;
        let n = self.channels();
        if lo.len() != n
            || hi.len() != n
            || !in_host_memory::<f32>(&self.min)
            || !in_host_memory::<f32>(&self.max)
        {
            return false;
        }
        let Some(count) =
            qat_autograd::cpu::with_slice(&self.count, |c: &[f64]| c.first().copied()).flatten()
        else {
            return false;
        };
        let first = count == 0.0;
        let write = |t: &mut Tensor, batch: &[f32], low: bool| {
            qat_autograd::cpu::with_slice_mut(t, |m: &mut [f32]| {
                for (m, &b) in m.iter_mut().zip(batch) {
                    *m = if first { b } else { fold.apply(*m, b, low) };
                }
            })
        };
        write(&mut self.min, lo, true);
        write(&mut self.max, hi, false);
        qat_autograd::cpu::with_slice_mut(&mut self.count, |c: &mut [f64]| c[0] = count + 1.0);
        self.calibrated_host.set(&self.count, count + 1.0);
        true
    }

    /// `f(min, max)` of the stored range read in place from CPU memory (no transfer, no count);
    /// `None` for buffers elsewhere or with the host fast paths off.
    pub(crate) fn with_range_host<R>(&self, f: impl FnOnce(&[f32], &[f32]) -> R) -> Option<R> {
        qat_autograd::cpu::with_slice(&self.min, |lo: &[f32]| {
            qat_autograd::cpu::with_slice(&self.max, |hi: &[f32]| f(lo, hi))
        })
        .flatten()
    }

    /// The stored `(min, max)` per channel; [`ObserverErrorKind::Uncalibrated`] before any data.
    /// *Host read.*
    pub(crate) fn read(&self) -> Result<(Vec<f32>, Vec<f32>), ObserverError> {
        if !self.is_calibrated() {
            return Err(self.err(ObserverErrorKind::Uncalibrated));
        }
        Ok((
            read_f32(&self.min, &self.name)?,
            read_f32(&self.max, &self.name)?,
        ))
    }

    /// Stores `(min, max)` per channel and the batch count `count`.
    pub(crate) fn store(
        &mut self,
        min: &[f32],
        max: &[f32],
        count: u64,
    ) -> Result<(), ObserverError> {
        write_f32(&mut self.min, min, &self.name)?;
        write_f32(&mut self.max, max, &self.name)?;
        self.set_count(count);
        Ok(())
    }

    /// The serializable state, with the histogram `histogram` (empty for other observers).
    /// *Host read.*
    pub(crate) fn state(&self, histogram: Vec<f64>) -> Result<ObserverState, ObserverError> {
        Ok(ObserverState {
            min: read_f32(&self.min, &self.name)?,
            max: read_f32(&self.max, &self.name)?,
            count: self.count(),
            frozen: self.frozen(),
            histogram,
        })
    }

    /// Restores min, max, count and the frozen flag from `s`.
    pub(crate) fn load_state(&mut self, s: &ObserverState) -> Result<(), ObserverError> {
        let n = self.channels();
        if s.min.len() != n || s.max.len() != n {
            return Err(self.err(ObserverErrorKind::State(format!(
                "{} channels expected, state has min {} / max {}",
                n,
                s.min.len(),
                s.max.len()
            ))));
        }
        self.store(&s.min, &s.max, s.count)?;
        self.set_frozen(s.frozen);
        Ok(())
    }
}

/// How an observer folds a batch range into its stored range: one rule, in its host form
/// ([`RangeFold::apply`], on CPU memory) and its device form ([`RangeFold::apply_tensors`]), the same
/// f32/f64 operations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RangeFold {
    /// The batch range replaces the stored one.
    Replace,
    /// The stored range widens to cover the batch range (`min`/`max`).
    Widen,
    /// `m ← f32(f64(m)·d + f64(b)·(1 − d))` with decay `d`.
    Ema(f64),
}

impl RangeFold {
    /// The new stored bound from the stored `m` and the batch bound `b` (`low`: the lower bound).
    pub(crate) fn apply(self, m: f32, b: f32, low: bool) -> f32 {
        match self {
            Self::Replace => b,
            Self::Widen if low => m.min(b),
            Self::Widen => m.max(b),
            Self::Ema(d) => (f64::from(m) * d + f64::from(b) * (1.0 - d)) as f32,
        }
    }

    /// [`RangeFold::apply`] on `f32[channels]` tensors, on their device.
    pub(crate) fn apply_tensors(
        self,
        m: &Tensor,
        b: &Tensor,
        low: bool,
    ) -> Result<Tensor, tch::TchError> {
        match self {
            Self::Replace => Ok(b.shallow_clone()),
            Self::Widen if low => m.f_minimum(b),
            Self::Widen => m.f_maximum(b),
            Self::Ema(d) => m
                .f_to_kind(Kind::Double)?
                .f_mul_scalar(d)?
                .f_add(&b.f_to_kind(Kind::Double)?.f_mul_scalar(1.0 - d)?)?
                .f_to_kind(Kind::Float),
        }
    }
}

/// The values of `t` as f32 on the host. *Host read.*
pub(crate) fn read_f32(t: &Tensor, name: &str) -> Result<Vec<f32>, ObserverError> {
    host_read::vec_f32(t, "observer range").map_err(ObserverError::torch(name))
}

/// Copies `v` into `t` (on `t`'s device).
pub(crate) fn write_f32(t: &mut Tensor, v: &[f32], name: &str) -> Result<(), ObserverError> {
    let device = t.device();
    tch::no_grad(|| {
        let src = Tensor::f_from_slice(v)?.f_to_device(device)?;
        t.f_copy_(&src)
    })
    .map_err(ObserverError::torch(name))
}

/// The [`Observer`](super::Observer) methods every range observer delegates to its
/// [`RangeBuffers`] `buf` unchanged: name, calibration flag, freeze/unfreeze; `with_state` adds the
/// plain state save/restore, `recorder` (a [`super::RangeRecorder`]) also `observe` as
/// `observe_clamped(x, None)` and `qparams` as `stored_qparams()`.
macro_rules! range_buffer_methods {
    () => {
        fn name(&self) -> &str {
            &self.buf.name
        }

        fn is_calibrated(&self) -> bool {
            self.buf.is_calibrated()
        }

        fn freeze(&mut self) {
            self.buf.set_frozen(true);
        }

        fn unfreeze(&mut self) {
            self.buf.set_frozen(false);
        }

        fn is_frozen(&self) -> bool {
            self.buf.frozen()
        }
    };
    (recorder) => {
        range_buffer_methods!(with_state);

        fn observe(&mut self, x: &Tensor) -> Result<(), $crate::observer::ObserverError> {
            self.observe_clamped(x, None)
        }

        fn qparams(&self) -> Result<qat_autograd::TensorQParams, $crate::observer::ObserverError> {
            self.stored_qparams()
        }
    };
    (with_state) => {
        range_buffer_methods!();

        fn state(
            &self,
        ) -> Result<$crate::observer::ObserverState, $crate::observer::ObserverError> {
            self.buf.state(Vec::new())
        }

        fn load_state(
            &mut self,
            state: &$crate::observer::ObserverState,
        ) -> Result<(), $crate::observer::ObserverError> {
            self.buf.load_state(state)
        }
    };
}

pub(crate) use range_buffer_methods;
