//! What the tests of qat-autograd, qat-train and the cross-crate tests share (not a stable API):
//! deterministic data that does not touch libtorch's global RNG (tests run in parallel), tensor
//! copies and comparisons, libtorch's process-global thread count taken in turns, and qat-core's
//! per-channel symmetric parameters as the reference of weight fake quant.

use std::sync::Mutex;

use ndarray::ArrayViewD;
use qat_core::{PerChannelParams, QuantParams, QuantRange, array};
use tch::Tensor;

/// One step of the 64-bit LCG (Knuth's MMIX constants).
fn step(s: u64) -> u64 {
    s.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
}

/// `n` values in `[lo, hi)` from the LCG started at `state`: each `lo + u·(hi − lo)` with `u` the
/// top 24 bits of the next state over 2²⁴.
fn uniform(mut state: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state = step(state);
            lo + ((state >> 40) as f32 / (1u64 << 24) as f32) * (hi - lo)
        })
        .collect()
}

/// `n` deterministic values in `[lo, hi)`, the LCG started at `seed·φ₆₄ + 1`.
///
/// ```
/// let a = qat_autograd::testing::lcg(3, 4, -1.0, 1.0);
/// assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
/// assert_eq!(a, qat_autograd::testing::lcg(3, 4, -1.0, 1.0));
/// ```
pub fn lcg(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    uniform(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1),
        n,
        lo,
        hi,
    )
}

/// `n` deterministic values in `[lo, hi)`, the LCG started one step after `seed` (another stream
/// than [`lcg`] for the same seed).
pub fn lcg_stepped(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    uniform(step(seed), n, lo, hi)
}

/// Four per-tensor grids the fake-quant tests run on: asymmetric 8-bit with zero inside the range,
/// at its lower end (ReLU6's `[0, 6]`), 4-bit with a fractional range, and symmetric narrow 8-bit.
pub fn per_tensor_cases() -> [QuantParams; 4] {
    [
        QuantParams::asymmetric(-1.0, 3.0, 8).expect("valid range"),
        QuantParams::asymmetric(0.0, 6.0, 8).expect("valid range"),
        QuantParams::asymmetric(-0.37, 0.91, 4).expect("valid range"),
        QuantParams::symmetric(0.8, QuantRange::signed_narrow(8).expect("8 bits"))
            .expect("valid range"),
    ]
}

/// A tensor of shape `shape` filled from [`lcg`].
pub fn rand(seed: u64, shape: &[i64], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    Tensor::from_slice(&lcg(seed, n, lo, hi)).view(shape)
}

/// Copies `v` into `t` in place, outside autograd (a parameter's value).
pub fn set(t: &Tensor, v: &Tensor) {
    let mut t = t.shallow_clone();
    tch::no_grad(|| t.copy_(v));
}

/// The values of `t`, flattened.
pub fn vecf(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().flatten(0, -1)).expect("an f32 tensor")
}

/// The bit patterns of the values of `t`, flattened (for exact comparisons, signed zeros and NaN
/// payloads included).
pub fn bits(t: &Tensor) -> Vec<u32> {
    vecf(t).iter().map(|v| v.to_bits()).collect()
}

/// `max |a − b|`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// libtorch's batch norm of `x` (NCHW) with PyTorch's defaults, momentum 0.1 and ε = 1e-5: with
/// the batch statistics, moving `rm` and `rv` in place, when `train`; else with `rm` and `rv`.
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    rm: &Tensor,
    rv: &Tensor,
    train: bool,
) -> Tensor {
    x.batch_norm(
        Some(gamma),
        Some(beta),
        Some(rm),
        Some(rv),
        train,
        0.1,
        1e-5,
        false,
    )
}

/// libtorch's thread count is process-global: [`with_threads`] holds this while it is changed.
pub static THREADS: Mutex<()> = Mutex::new(());

/// Runs `f` with `n` libtorch threads (under [`THREADS`]) and restores the count.
pub fn with_threads<T>(n: i32, f: impl FnOnce() -> T) -> T {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let before = tch::get_num_threads();
    tch::set_num_threads(n);
    let out = f();
    tch::set_num_threads(before);
    out
}

/// qat-core's per-channel symmetric narrow `bits`-bit parameters of `x` along `axis`: each
/// channel's scale from its `max(|min|, |max|)`.
pub fn symmetric_narrow_per_channel(
    x: ArrayViewD<'_, f32>,
    bits: u32,
    axis: usize,
) -> PerChannelParams {
    let (mins, maxs) = array::min_max_per_channel(x, axis).expect("axis within the rank");
    let max_abs: Vec<f32> = mins
        .iter()
        .zip(&maxs)
        .map(|(a, b)| a.abs().max(b.abs()))
        .collect();
    let range = QuantRange::signed_narrow(bits).expect("2 to 16 bits");
    PerChannelParams::symmetric(&max_abs, range, axis).expect("finite channel ranges")
}
