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
