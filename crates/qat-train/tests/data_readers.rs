//! Data readers: tiny generated IDX / CIFAR files, read back, and malformed files rejected with typed errors
//! that name the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use qat_train::data::{Augment, DataError, Dataset, Loader, LoaderConfig, Normalize};

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) -> PathBuf {
    let path = dir.join(if gz {
        format!("{name}.gz")
    } else {
        name.to_string()
    });
    let mut f = std::fs::File::create(&path).unwrap();
    if gz {
        let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
    path
}

fn mnist_dir(gz: bool) -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let labels = vec![3, 1, 4, 1, 5];
    write(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_images(5, 4, 3, &pixels),
        gz,
    );
    write(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx_labels(&labels),
        gz,
    );
    write(
        dir.path(),
        "t10k-images-idx3-ubyte",
        &idx_images(2, 4, 3, &pixels[..24]),
        gz,
    );
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_labels(&[9, 0]),
        gz,
    );
    (dir, pixels, labels)
}

#[test]
fn reads_idx_raw_and_gz() {
    for gz in [false, true] {
        let (dir, pixels, labels) = mnist_dir(gz);
        let tt = Dataset::load_mnist_dir(dir.path()).unwrap();
        assert_eq!(tt.train.images, pixels);
        assert_eq!(tt.train.labels, labels);
        assert_eq!(tt.train.image_shape(), [1, 4, 3]);
        assert_eq!(tt.test.labels, vec![9, 0]);
        assert_eq!(tt.test.image(1), &pixels[12..24]);
    }
}

#[test]
fn reads_shipped_mnist_10k() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-10k");
    let tt = Dataset::load_mnist_dir(&dir).unwrap();
    assert_eq!((tt.train.len(), tt.test.len()), (8000, 2000));
    assert_eq!(tt.train.image_shape(), [1, 28, 28]);
    assert_eq!(
        tt.train.class_counts(),
        vec![801, 902, 793, 826, 784, 690, 811, 856, 755, 782]
    );
    assert_eq!(
        tt.test.class_counts(),
        vec![200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
    );
    // Real digits: mostly background, mean intensity near MNIST's 0.13.
    let (mean, _) = tt.train.channel_stats();
    assert!((0.10..0.16).contains(&mean[0]), "mean {mean:?}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    match Dataset::load_mnist_dir(dir.path()) {
        Err(DataError::MissingFile { name, .. }) => assert_eq!(name, "train-images-idx3-ubyte"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    let e = Dataset::load_idx(dir.path().join("nope"), dir.path().join("nope2"), 10).unwrap_err();
    assert!(
        matches!(&e, DataError::Io { path, .. } if path.ends_with("nope")),
        "{e}"
    );
}

#[test]
fn truncated_idx_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_images(5, 4, 3, &[0; 60]);
    bytes.truncate(bytes.len() - 1);
    let images = write(dir.path(), "img", &bytes, true);
    let labels = write(dir.path(), "lab", &idx_labels(&[0; 5]), false);
    let err = Dataset::load_idx(&images, &labels, 10).unwrap_err();
    assert!(
        matches!(&err, DataError::Truncated { path, expected: 76, got: 75 } if *path == images),
        "expected Truncated at 75 of 76 bytes of {images:?}, got {err:?}"
    );
    // Header itself cut short.
    let short = write(dir.path(), "short", &[0, 0, 8], false);
    assert!(matches!(
        qat_train::data::read_idx_labels(&short),
        Err(DataError::Truncated { .. })
    ));
    // A corrupt gzip stream is an I/O error naming the file.
    let bad_gz = write(dir.path(), "badgz", &[0x1f, 0x8b, 8, 0, 1, 2, 3], false);
    assert!(
        matches!(qat_train::data::read_idx_labels(&bad_gz), Err(DataError::Io { path, .. }) if path == bad_gz)
    );
}

#[test]
fn bad_magic_trailing_bytes_and_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let images = write(dir.path(), "img", &idx_images(2, 2, 2, &[0; 8]), false);
    let labels = write(dir.path(), "lab", &idx_labels(&[0, 1]), false);
    // Swapped files: each has the other's magic.
    let err = Dataset::load_idx(&labels, &images, 10).unwrap_err();
    assert!(
        matches!(&err, DataError::BadMagic { path, expected: 0x803, got: 0x801 } if *path == labels),
        "expected BadMagic 0x803/0x801 in {labels:?}, got {err:?}"
    );
    let mut extra = idx_labels(&[0, 1]);
    extra.push(7);
    let extra = write(dir.path(), "extra", &extra, false);
    assert!(
        matches!(Dataset::load_idx(&images, &extra, 10), Err(DataError::Malformed { path, .. }) if path == extra)
    );
    let three = write(dir.path(), "three", &idx_labels(&[0, 1, 2]), false);
    match Dataset::load_idx(&images, &three, 10) {
        Err(DataError::CountMismatch {
            n_images, n_labels, ..
        }) => assert_eq!((n_images, n_labels), (2, 3)),
        other => panic!("expected CountMismatch, got {other:?}"),
    }
    let big = write(dir.path(), "big", &idx_labels(&[0, 10]), false);
    assert!(matches!(
        Dataset::load_idx(&images, &big, 10),
        Err(DataError::LabelOutOfRange {
            index: 1,
            label: 10,
            ..
        })
    ));
}

fn cifar_record(label: u8, fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut v = vec![label];
    v.extend((0..3072).map(fill));
    v
}

#[test]
fn reads_cifar10_and_rejects_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = cifar_record(7, |i| (i % 251) as u8);
    bytes.extend(cifar_record(2, |i| (i / 1024) as u8 * 100));
    let f = write(dir.path(), "data_batch_1.bin", &bytes, false);
    let ds = Dataset::load_cifar10_files(&[f, write(dir.path(), "b2.bin", &bytes, true)]).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.labels, vec![7, 2, 7, 2]);
    assert_eq!(ds.image_shape(), [3, 32, 32]);
    // Record 2 is CHW: red plane 0, green plane 100, blue plane 200.
    assert_eq!(
        (ds.image(1)[0], ds.image(1)[1024], ds.image(1)[3071]),
        (0, 100, 200)
    );

    let trunc = write(dir.path(), "trunc.bin", &bytes[..3073 + 10], false);
    assert!(matches!(
        Dataset::load_cifar10_files(std::slice::from_ref(&trunc)),
        Err(DataError::Truncated { path, expected: 6146, got: 3083 }) if path == trunc
    ));
    let bad = write(dir.path(), "bad.bin", &cifar_record(11, |_| 0), false);
    assert!(matches!(
        Dataset::load_cifar10_files(&[bad]),
        Err(DataError::LabelOutOfRange { label: 11, .. })
    ));
    assert!(
        matches!(Dataset::load_cifar10_dir(dir.path()), Err(DataError::MissingFile { name, .. }) if name == "data_batch_2.bin")
    );
}

#[test]
fn synthetic_refuses_zero_sized_images() {
    for [c, h, w] in [[0, 4, 4], [1, 0, 4], [1, 4, 0]] {
        let err = Dataset::synthetic(3, 2, c, h, w, 0).unwrap_err();
        assert!(
            matches!(&err, DataError::Config(m) if m.contains("zero-sized")),
            "{c}x{h}x{w}: {err:?}"
        );
    }
}

#[test]
fn split_and_shuffle_are_deterministic() {
    let ds = Dataset::synthetic(50, 5, 1, 4, 4, 3).unwrap();
    let (a1, b1) = ds.split(10, 9).unwrap();
    let (a2, b2) = ds.split(10, 9).unwrap();
    assert_eq!((a1.len(), b1.len()), (40, 10));
    assert_eq!(a1, a2);
    assert_eq!(b1, b2);
    let (_, b3) = ds.split(10, 10).unwrap();
    assert_ne!(
        b1.images, b3.images,
        "a different seed gives a different split"
    );
    assert!(ds.split(51, 0).is_err());

    let cfg = LoaderConfig {
        batch_size: 8,
        shuffle: true,
        seed: 5,
        ..Default::default()
    };
    let loader = Loader::new(ds.clone().into(), cfg).unwrap();
    assert_eq!(loader.order(0), loader.order(0));
    assert_ne!(loader.order(0), loader.order(1));
    let mut o = loader.order(3);
    o.sort_unstable();
    assert_eq!(o, (0..50).collect::<Vec<_>>());
}

fn collect(loader: &Loader, epoch: u64, start: usize) -> Vec<(Vec<f32>, Vec<i64>)> {
    loader
        .epoch(epoch, start)
        .map(|b| {
            let b = b.unwrap();
            (
                Vec::<f32>::try_from(b.images.flatten(0, -1)).unwrap(),
                Vec::<i64>::try_from(&b.labels).unwrap(),
            )
        })
        .collect()
}

#[test]
fn loader_prefetch_matches_inline_and_resumes_mid_epoch() {
    let ds = Dataset::synthetic(37, 3, 3, 6, 5, 1).unwrap();
    let base = LoaderConfig {
        batch_size: 8,
        shuffle: true,
        seed: 11,
        normalize: Normalize::cifar10(),
        augment: Augment { pad: 2, flip: true },
        prefetch: 0,
        ..Default::default()
    };
    let inline = Loader::new(ds.clone().into(), base.clone()).unwrap();
    let threaded = Loader::new(
        ds.clone().into(),
        LoaderConfig {
            prefetch: 2,
            ..base.clone()
        },
    )
    .unwrap();
    let a = collect(&inline, 4, 0);
    let b = collect(&threaded, 4, 0);
    assert_eq!(a.len(), 5);
    assert_eq!(a, b);
    assert_eq!(a[4].1.len(), 5, "last partial batch kept");
    assert_eq!(
        collect(&threaded, 4, 3),
        a[3..].to_vec(),
        "resume at batch 3 gives the same batches"
    );
    // Dropping an iterator early stops the worker cleanly.
    let mut it = threaded.epoch(0, 0);
    assert!(it.next().is_some());
    drop(it);
    let dl = Loader::new(
        ds.into(),
        LoaderConfig {
            drop_last: true,
            ..base
        },
    )
    .unwrap();
    assert_eq!((dl.num_batches(), dl.samples_per_epoch()), (4, 32));
}

#[test]
fn normalization_and_augmentation_values() {
    // One 1×2×3 image with pixels 0..6·40.
    let ds = Dataset::new(
        "tiny",
        (0..6).map(|i| i * 40).collect(),
        vec![0],
        [1, 2, 3],
        2,
    )
    .unwrap();
    let norm = Normalize {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let l = Loader::new(
        ds.clone().into(),
        LoaderConfig {
            batch_size: 1,
            normalize: norm.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let (x, y) = &collect(&l, 0, 0)[0];
    assert_eq!(y, &vec![0]);
    for (i, v) in x.iter().enumerate() {
        assert!((v - ((i as f32 * 40.0) / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }
    // Flip only: every epoch gives either the image or its mirror, and both occur.
    let lf = Loader::new(
        ds.into(),
        LoaderConfig {
            batch_size: 1,
            normalize: Normalize::unit(1),
            augment: Augment { pad: 0, flip: true },
            ..Default::default()
        },
    )
    .unwrap();
    let plain: Vec<f32> = (0..6).map(|i| (i * 40) as f32 / 255.0).collect();
    let mirror: Vec<f32> = [2, 1, 0, 5, 4, 3]
        .iter()
        .map(|&i| (i * 40) as f32 / 255.0)
        .collect();
    let seen: Vec<bool> = (0..16).map(|e| collect(&lf, e, 0)[0].0 == mirror).collect();
    for e in 0..16 {
        let x = &collect(&lf, e, 0)[0].0;
        assert!(x == &plain || x == &mirror);
    }
    assert!(seen.iter().any(|&s| s) && seen.iter().any(|&s| !s));
}

#[test]
fn loader_rejects_bad_config() {
    let ds: std::sync::Arc<Dataset> = Dataset::synthetic(4, 2, 3, 2, 2, 0).unwrap().into();
    assert!(
        Loader::new(
            ds.clone(),
            LoaderConfig {
                batch_size: 0,
                normalize: Normalize::cifar10(),
                ..Default::default()
            }
        )
        .is_err()
    );
    assert!(
        Loader::new(
            ds.clone(),
            LoaderConfig {
                normalize: Normalize::mnist(),
                ..Default::default()
            }
        )
        .is_err()
    );
    assert!(
        Loader::new(
            ds,
            LoaderConfig {
                normalize: Normalize {
                    mean: vec![0.0; 3],
                    std: vec![1.0, 0.0, 1.0]
                },
                ..Default::default()
            }
        )
        .is_err()
    );
}

#[test]
fn lying_headers_and_truncated_gzip_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The header claims (2^32 − 1)^3 pixels: refused from the header (the product overflows, or
    // exceeds the file), nothing allocated for the claim.
    let mut lie = idx_images(5, 4, 3, &[0; 60]);
    lie[4..16].copy_from_slice(&[0xFF; 12]);
    let lie = write(dir.path(), "lie", &lie, false);
    assert!(matches!(
        qat_train::data::read_idx_images(&lie),
        Err(DataError::Truncated { path, .. }) | Err(DataError::Malformed { path, .. }) if path == lie
    ));
    // 2^16 images of 4×3 pixels claimed, 5 present.
    let mut lie = idx_images(5, 4, 3, &[0; 60]);
    lie[4..8].copy_from_slice(&65536u32.to_be_bytes());
    let lie = write(dir.path(), "lie2", &lie, false);
    assert!(matches!(
        qat_train::data::read_idx_images(&lie),
        Err(DataError::Truncated { path, expected: 786448, got: 76 }) if path == lie
    ));
    // Labels: the header says 9, the file holds 5.
    let mut labels = idx_labels(&[1; 5]);
    labels[7] = 9;
    let labels = write(dir.path(), "labels9", &labels, false);
    assert!(matches!(
        qat_train::data::read_idx_labels(&labels),
        Err(DataError::Truncated { path, expected: 17, got: 13 }) if path == labels
    ));
    // A gzip stream cut in the middle (a valid prefix) names the file.
    let full = write(dir.path(), "full", &idx_images(50, 8, 8, &[7; 3200]), true);
    let gz = std::fs::read(&full).unwrap();
    for cut in [gz.len() - 4, gz.len() / 2, 12] {
        let part = write(dir.path(), &format!("cut{cut}"), &gz[..cut], false);
        match qat_train::data::read_idx_images(&part) {
            Err(DataError::Io { path, .. }) | Err(DataError::Truncated { path, .. }) => {
                assert_eq!(path, part)
            }
            other => panic!("cut at {cut}: expected a typed error, got {other:?}"),
        }
    }
    // A CIFAR batch whose gzip is cut.
    let rec: Vec<u8> = (0..2).flat_map(|_| cifar_record(3, |i| i as u8)).collect();
    let cif = write(dir.path(), "cifar", &rec, true);
    let gz = std::fs::read(&cif).unwrap();
    let part = write(dir.path(), "cifar_cut", &gz[..gz.len() / 2], false);
    assert!(matches!(
        qat_train::data::read_cifar10_batch(&part),
        Err(DataError::Io { path, .. }) | Err(DataError::Truncated { path, .. }) if path == part
    ));
}

/// Mutation fuzzing of the IDX and CIFAR readers: bit flips, boundary values in the header,
/// truncation and appended bytes, raw and gzipped. Every result is a dataset or a typed error
/// naming the file; nothing panics.
#[test]
fn mutated_idx_and_cifar_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds: [(u8, Vec<u8>); 3] = [
        (0, idx_images(6, 5, 4, &[9; 120])),
        (1, idx_labels(&[1, 2, 3, 4])),
        (
            2,
            (0..3).flat_map(|l| cifar_record(l, |i| i as u8)).collect(),
        ),
    ];
    for case in 0..600 {
        let (kind, seed) = &seeds[case % 3];
        let mut b = seed.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % b.len().max(1);
            match next() % 5 {
                0 if !b.is_empty() => b[at] ^= 1 << (next() % 8),
                1 if at + 4 <= b.len() => {
                    let v = [0u32, 1, 0xFF, 0xFFFF, 0x7FFF_FFFF, u32::MAX][(next() % 6) as usize];
                    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
                }
                2 => b.truncate(at),
                3 => b.extend((0..next() % 64).map(|_| next() as u8)),
                _ => {}
            }
        }
        let path = write(dir.path(), &format!("m{case}"), &b, case % 2 == 0);
        let named = |e: &DataError| format!("{e}").contains(&path.display().to_string());
        let ok = match kind {
            0 => qat_train::data::read_idx_images(&path).map(drop),
            1 => qat_train::data::read_idx_labels(&path).map(drop),
            _ => qat_train::data::read_cifar10_batch(&path).map(drop),
        };
        if let Err(e) = ok {
            assert!(named(&e), "case {case}: error does not name the file: {e}");
        }
    }
}

#[test]
fn shards_partition_the_epoch_with_the_same_batches() {
    let ds = Dataset::synthetic(83, 3, 3, 6, 5, 4).unwrap();
    for prefetch in [0, 2] {
        let loader = Loader::new(
            ds.clone().into(),
            LoaderConfig {
                batch_size: 8,
                shuffle: true,
                seed: 5,
                normalize: Normalize::cifar10(),
                augment: Augment { pad: 2, flip: true },
                prefetch,
                ..Default::default()
            },
        )
        .unwrap();
        let whole = collect(&loader, 2, 0);
        assert_eq!(whole.len(), 11);
        for world in [1, 2, 3, 4, 11, 12] {
            for start in [0, 1, 5] {
                let mut seen = vec![false; whole.len()];
                for rank in 0..world {
                    for b in loader.epoch_shard(2, start, rank, world) {
                        let b = b.unwrap();
                        assert_eq!(b.index % world, rank, "batch {} on rank {rank}", b.index);
                        assert!(b.index >= start);
                        assert!(!std::mem::replace(&mut seen[b.index], true));
                        let got = (
                            Vec::<f32>::try_from(b.images.flatten(0, -1)).unwrap(),
                            Vec::<i64>::try_from(&b.labels).unwrap(),
                        );
                        assert_eq!(got, whole[b.index], "batch {} differs in a shard", b.index);
                    }
                }
                let covered: Vec<usize> = (0..whole.len()).filter(|&b| seen[b]).collect();
                assert_eq!(covered, (start..whole.len()).collect::<Vec<_>>());
            }
        }
        assert_eq!(loader.epoch_shard(0, 0, 3, 3).count(), 0, "rank ≥ world");
        assert_eq!(loader.epoch_shard(0, 0, 0, 0).count(), 11, "world 0 is 1");
    }
}
