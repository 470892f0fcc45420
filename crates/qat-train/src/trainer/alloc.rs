//! Opt-in tuning of glibc's allocator for training loops.

/// Keeps the memory of freed tensors in the process between training steps: glibc `mallopt` with
/// `M_MMAP_THRESHOLD` = 32 MiB (its maximum; blocks below it come from the heap instead of a fresh
/// `mmap`) and `M_TRIM_THRESHOLD` = 1 GiB (the heap is not returned to the OS below that).
///
/// libtorch allocates and frees the same activation and gradient tensors every step; with glibc's
/// default (dynamic) thresholds many of them are `mmap`ed and unmapped each time and every page is
/// faulted in again. Measured with `bench_train` (MobileNet α 0.25, batch 64, 1 thread, medians of 40
/// interleaved steps): float step 51.3 → 47.5 ms, QAT step with the PyTorch fold 83.6 → 65.0 ms
/// (1.63× → 1.37× float), with the whitepaper fold 116.2 → 88.7 ms (2.12× → 1.74×). The cost is that
/// up to 1 GiB of freed heap stays mapped. Setting only the trim threshold is worse than nothing (it
/// turns the dynamic mmap threshold off at 128 KiB: 2.9× slower steps).
///
/// Process-wide and idempotent; returns whether glibc accepted both settings (always `false` on
/// other C libraries, where it does nothing). Opt-in: a library must not change the process's
/// allocator on its own, so [`train`](super::train) never calls it; binaries call it at start-up
/// (the pipeline binary and this crate's examples do).
///
/// ```
/// let tuned = qat_train::trainer::tune_allocator();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::OnceLock;
        static TUNED: OnceLock<bool> = OnceLock::new();
        *TUNED.get_or_init(|| {
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: mallopt only changes glibc's allocator parameters; both values are within the
            // documented ranges (M_MMAP_THRESHOLD ≤ 32 MiB on 64-bit), and it is called once.
            let ok = unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
            };
            tracing::debug!(
                ok,
                "glibc allocator: mmap threshold 32 MiB, trim threshold 1 GiB"
            );
            ok
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
