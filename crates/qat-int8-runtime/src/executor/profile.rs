//! Opt-in per-op timing of the executor's runs: which layer of a model takes the time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Executor;

/// Time spent in one op of the model since profiling was switched on.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// Index of the op in the model's op list.
    pub op: usize,
    /// [`Op::kind`](crate::model::Op::kind) of the op.
    pub kind: &'static str,
    /// The op's output tensor name.
    pub output: String,
    /// Seconds in the op, summed over the runs and over the threads that ran parts of the batch
    /// (with several threads this is thread time, not wall time).
    pub seconds: f64,
}

/// Per-op nanoseconds, added to by every thread of a run.
#[derive(Debug)]
pub(super) struct OpClock(Box<[AtomicU64]>);

impl OpClock {
    /// Runs `f` (op `i`) and adds its wall time to the op's total.
    #[inline]
    pub(super) fn time<R>(&self, i: usize, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0[i].fetch_add(ns, Ordering::Relaxed);
        r
    }
}

impl Executor<'_> {
    /// Switches per-op timing on (from zero) or off. While on, every run adds each op's wall
    /// time (`Instant` around the op, per tile of samples and per thread) to
    /// [`Executor::op_profile`]; while off (the default) a run does not read the clock.
    ///
    /// ```
    /// use qat_core::{QuantParams, QuantRange, target::Target};
    /// use qat_int8_runtime::{Executor, testing::models::qdq};
    /// let q = QuantParams::new(0.1, 128, QuantRange::unsigned(8)?)?;
    /// let model = qdq(&[4], q, Target::Qat); // Quantize, then Dequantize
    /// let mut exec = Executor::new(&model)?;
    /// exec.set_op_profiling(true);
    /// exec.run(ndarray::ArrayD::zeros(vec![3, 4]).view())?;
    /// let profile = exec.op_profile().expect("profiling is on");
    /// assert_eq!(profile.iter().map(|t| t.kind).collect::<Vec<_>>(), ["Quantize", "Dequantize"]);
    /// exec.set_op_profiling(false);
    /// assert!(exec.op_profile().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_op_profiling(&mut self, on: bool) {
        self.clock = on.then(|| {
            OpClock(
                (0..self.model.ops.len())
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            )
        });
    }

    /// The time of each op since [`Executor::set_op_profiling`] switched timing on, in model
    /// order; `None` while it is off.
    pub fn op_profile(&self) -> Option<Vec<OpTime>> {
        let clock = self.clock.as_ref()?;
        Some(
            self.model
                .ops
                .iter()
                .zip(clock.0.iter())
                .enumerate()
                .map(|(op, (o, ns))| OpTime {
                    op,
                    kind: o.kind(),
                    output: self.model.tensors[o.output()].name.clone(),
                    seconds: ns.load(Ordering::Relaxed) as f64 * 1e-9,
                })
                .collect(),
        )
    }
}
