//! The executor runs a batch in tiles of samples: every tiling gives the results of the whole
//! batch at once, on every path and for every target.

mod common;

use common::{Rng, zoo_model};
use ndarray::ArrayD;
use qat_core::target::Target;
use qat_int8_runtime::{Executor, Int8Model, KernelPath};

#[test]
fn every_tiling_gives_the_same_values() {
    for rounding in [Target::Qat, Target::Tflite, Target::Ort] {
        let m = Int8Model {
            rounding,
            ..zoo_model()
        };
        let n = 7;
        let x = ArrayD::from_shape_vec(vec![n, 8, 8, 3], Rng(5).f32s(n * 192, -1.2, 1.2)).unwrap();
        for path in KernelPath::supported() {
            let want = Executor::with_path(&m, path)
                .unwrap()
                .with_tile_samples(n)
                .run_all(x.view())
                .unwrap();
            for tile in [1, 2, 3, 6] {
                let mut e = Executor::with_path(&m, path)
                    .unwrap()
                    .with_tile_samples(tile);
                assert_eq!(
                    e.run_all(x.view()).unwrap(),
                    want,
                    "{path} {rounding} tile {tile}"
                );
                // a second run reuses the buffers
                assert_eq!(
                    e.run_all(x.view()).unwrap(),
                    want,
                    "{path} {rounding} tile {tile}"
                );
            }
        }
    }
}

/// `run` and `run_u8` keep only the batch's inputs and outputs whole: every other tensor holds one
/// tile per chunk, reused tile after tile. Every tiling and thread count gives the outputs of the
/// whole batch at once, also when `run_all` (every tensor whole) alternates with them on one
/// executor.
#[test]
fn tile_sized_intermediates_give_the_batch_results() {
    let m = zoo_model();
    let n = 11;
    let x = ArrayD::from_shape_vec(vec![n, 8, 8, 3], Rng(9).f32s(n * 192, -1.2, 1.2)).unwrap();
    for path in KernelPath::supported() {
        let mut whole = Executor::with_path(&m, path).unwrap().with_tile_samples(n);
        let (want, want_u8) = (
            whole.run(x.view()).unwrap(),
            whole.run_u8(x.view()).unwrap(),
        );
        let all = whole.run_all(x.view()).unwrap();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for tile in [1, 2, 4, 5] {
                let mut e = Executor::with_path(&m, path)
                    .unwrap()
                    .with_tile_samples(tile);
                pool.install(|| {
                    for _ in 0..2 {
                        let what = format!("{path} threads {threads} tile {tile}");
                        assert_eq!(e.run(x.view()).unwrap(), want, "{what}");
                        assert_eq!(e.run_u8(x.view()).unwrap(), want_u8, "{what}");
                        assert_eq!(e.run_all(x.view()).unwrap(), all, "{what}");
                    }
                });
            }
        }
    }
}
