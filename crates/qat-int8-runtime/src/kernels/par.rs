//! When an op splits its work across rayon's threads.
//!
//! An op splits only when its work (multiply-accumulates; elements for the elementwise ops) is at
//! least the calling thread's threshold, by default [`MIN_SPLIT_WORK`]: below it, waking another
//! thread and joining it costs more than the share of the work it takes. The executor runs a
//! batch split across threads (each thread takes whole samples through the whole model) with the
//! threshold at `usize::MAX` ([`with_min_split_work`]) when every thread has a chunk, so that no
//! op inside splits again. The
//! decision is taken on the thread that calls the op, before any task starts; whatever it is,
//! every output element is computed by the same code, so results never depend on it.

use std::cell::Cell;

use rayon::prelude::*;

/// Default work (multiply-accumulates) from which an op splits: about 2 µs of dense int8 work
/// on one core, several times the cost of waking a thread and joining it.
pub(crate) const MIN_SPLIT_WORK: usize = 1 << 20;

thread_local! {
    static MIN_WORK: Cell<usize> = const { Cell::new(MIN_SPLIT_WORK) };
}

/// Runs `f` with ops on this thread splitting from `min_work` (`usize::MAX`: never), then restores
/// the previous threshold (also when `f` panics).
pub(crate) fn with_min_split_work<R>(min_work: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            MIN_WORK.with(|m| m.set(self.0));
        }
    }
    let _restore = Restore(MIN_WORK.with(|m| m.replace(min_work)));
    f()
}

/// The threads an op of `work` units called on this thread may use: 1 below the threshold, else
/// rayon's thread count.
pub(crate) fn threads(work: usize) -> usize {
    if work < MIN_WORK.with(Cell::get) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `f(i, chunk_i)` for the consecutive chunks of `chunk` elements of `out` (the last one
/// shorter): in order on this thread when [`threads`]`(work)` is 1, else in parallel.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if chunk == 0 {
        return;
    }
    if threads(work) == 1 {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_decides_and_is_restored() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(threads(MIN_SPLIT_WORK - 1), 1);
            assert_eq!(threads(MIN_SPLIT_WORK), 3);
            with_min_split_work(usize::MAX, || assert_eq!(threads(usize::MAX - 1), 1));
            with_min_split_work(0, || assert_eq!(threads(0), 3));
            let caught = std::panic::catch_unwind(|| {
                with_min_split_work(usize::MAX, || panic!("inside"));
            });
            assert!(caught.is_err());
            assert_eq!(threads(MIN_SPLIT_WORK), 3);
        });
    }

    #[test]
    fn chunks_are_visited_once_whatever_the_split() {
        for min_work in [0, usize::MAX] {
            let mut v = vec![0usize; 10];
            with_min_split_work(min_work, || {
                for_each_chunk(&mut v, 3, 5, |i, o| o.iter_mut().for_each(|x| *x += i + 1))
            });
            assert_eq!(v, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
        }
    }
}
