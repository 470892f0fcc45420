//! Fault injection: an op that panics half-way (its output buffer taken) must not leave the
//! executor unusable once the caller catches the panic.

use std::cell::Cell;

use ndarray::ArrayD;
use qat_core::QuantParams;

use crate::{Executor, Int8Model, Target};

thread_local! {
    static PANIC_AT_OP: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Called before each op runs: panics once at the op armed by [`arm`].
pub(super) fn fault_point(op: usize) {
    if PANIC_AT_OP.with(|p| p.get()) == Some(op) {
        PANIC_AT_OP.with(|p| p.set(None));
        panic!("injected fault at op {op}");
    }
}

fn arm(op: usize) {
    PANIC_AT_OP.with(|p| p.set(Some(op)));
}

fn model() -> Int8Model {
    let q = QuantParams::asymmetric(0.0, 2.55, 8).unwrap();
    crate::testing::models::qdq(&[3], q, Target::Qat)
}

#[test]
fn executor_recovers_after_a_caught_panic_in_any_op() {
    // One thread: the ops run on the thread that armed the fault.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(recovers);
}

fn recovers() {
    let model = model();
    let x = ArrayD::from_shape_vec(vec![2, 3], vec![0.0f32, 0.5, 1.0, 2.0, 0.01, 9.0]).unwrap();
    let mut exec = Executor::new(&model).unwrap();
    let want = exec.run(x.view()).unwrap();
    assert_eq!(
        want[0].as_slice().unwrap(),
        &[0.0, 0.5, 1.0, 2.0, 0.01, 2.55]
    );
    for op in 0..model.ops.len() {
        arm(op);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = exec.run(x.view());
        }));
        assert!(caught.is_err(), "the fault at op {op} fired");
        // Same batch size: the buffers must be replanned, not reused half-taken.
        assert_eq!(
            exec.run(x.view()).unwrap(),
            want,
            "after a panic at op {op}"
        );
        assert_eq!(exec.run_u8(x.view()).unwrap()[0].len(), 6);
    }
}
