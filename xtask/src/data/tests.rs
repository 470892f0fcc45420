//! The dataset installer on tiny fake Debian packages built here (no apt, no network): extraction
//! for every data.tar compression, hash and length checks as typed errors naming the file, the
//! already-installed path, files put in place by hand, the lock, and the message without apt.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{DataError, DataFile, DatasetSpec, Outcome, Source, install_into, verify};
use crate::setup::Lock;

/// A 2×2×2 IDX image file and its 2 labels.
const IMAGES: [u8; 24] = [
    0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8,
];
const LABELS: [u8; 10] = [0, 0, 8, 1, 0, 0, 0, 2, 3, 7];

/// The hashes were computed with `sha256sum` from the bytes above.
const TINY: DatasetSpec = DatasetSpec {
    name: "tiny",
    about: "a tiny test dataset",
    package: "dataset-tiny",
    package_dir: "usr/share/datasets/tiny",
    files: &[
        DataFile {
            name: "tiny-images-idx3-ubyte",
            sha256: "d9be9456d266bf9e63081900c291ea5e559931f10a7f6ff1eb55901d3f6239eb",
            len: 24,
        },
        DataFile {
            name: "tiny-labels-idx1-ubyte",
            sha256: "ddd9537861f94c546318d21437b27126119cc7b5c61d378882b6a0776513a898",
            len: 10,
        },
    ],
};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A .deb with the images gzipped (as Debian ships them) and the labels raw, plus an unrelated
/// file; `ext` is the data member's compression ("", ".gz", ".xz", ".zst").
fn fake_deb(dir: &Path, ext: &str, labels: &[u8], with_labels: bool) -> PathBuf {
    let images_gz = gzip(&IMAGES);
    let mut files: Vec<(&str, &[u8])> = vec![
        ("./usr/share/doc/dataset-tiny/copyright", &b"MIT"[..]),
        (
            "./usr/share/datasets/tiny/tiny-images-idx3-ubyte.gz",
            images_gz.as_slice(),
        ),
    ];
    if with_labels {
        files.push(("./usr/share/datasets/tiny/tiny-labels-idx1-ubyte", labels));
    }
    let data = tar(&files);
    let data = match ext {
        "" => data,
        ".gz" => gzip(&data),
        ".xz" => {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut &data[..], &mut out).unwrap();
            out
        }
        ".zst" => ruzstd::encoding::compress_to_vec(
            &data[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
        _ => unreachable!(),
    };
    let control = gzip(&tar(&[("./control", &b"Package: dataset-tiny\n"[..])]));
    let path = dir.join(format!("dataset-tiny{}.deb", ext.replace('.', "_")));
    let mut ar = ar::Builder::new(std::fs::File::create(&path).unwrap());
    for (name, bytes) in [
        ("debian-binary".to_string(), b"2.0\n".to_vec()),
        ("control.tar.gz".to_string(), control),
        (format!("data.tar{ext}"), data),
    ] {
        let h = ar::Header::new(name.into_bytes(), bytes.len() as u64);
        ar.append(&h, &bytes[..]).unwrap();
    }
    path
}

fn read_gz(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// A second install into `dir` finds the dataset there (and does not touch `source`).
fn assert_already_installed(dir: &Path, source: &Source) {
    assert_eq!(
        install_into(dir, &TINY, source).unwrap(),
        Outcome::AlreadyInstalled
    );
}

#[test]
fn installs_from_a_fake_deb_with_every_compression() {
    for ext in ["", ".gz", ".xz", ".zst"] {
        let tmp = tempfile::tempdir().unwrap();
        let deb = fake_deb(tmp.path(), ext, &LABELS, true);
        let dir = tmp.path().join("cache/datasets/tiny");
        let src = Source::Deb(deb.clone());
        let out = install_into(&dir, &TINY, &src).unwrap();
        assert_eq!(out, Outcome::Installed(deb.display().to_string()), "{ext}");
        assert_eq!(read_gz(&dir.join("tiny-images-idx3-ubyte.gz")), IMAGES);
        assert_eq!(
            std::fs::read(dir.join("tiny-labels-idx1-ubyte")).unwrap(),
            LABELS
        );
        let ready = std::fs::read_to_string(dir.join("READY")).unwrap();
        assert!(ready.contains(TINY.files[0].sha256), "{ready}");
        // nothing else is left behind (no temporary directory, no lock)
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "READY",
                "tiny-images-idx3-ubyte.gz",
                "tiny-labels-idx1-ubyte"
            ]
        );
        // the second run finds it installed, without touching the source
        let gone = Source::Deb(tmp.path().join("no-such.deb"));
        assert_already_installed(&dir, &gone);
    }
}

#[test]
fn a_wrong_hash_is_a_typed_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bad = LABELS;
    bad[9] = 8; // same length, other content
    let deb = fake_deb(tmp.path(), ".xz", &bad, true);
    let dir = tmp.path().join("tiny");
    let err = install_into(&dir, &TINY, &Source::Deb(deb)).unwrap_err();
    match err.downcast_ref::<DataError>() {
        Some(DataError::HashMismatch {
            file,
            expected,
            got,
        }) => {
            assert!(file.ends_with("tiny-labels-idx1-ubyte"), "{file:?}");
            assert_eq!(expected, TINY.files[1].sha256);
            assert_ne!(got, expected);
        }
        other => panic!("expected HashMismatch, got {other:?}: {err:#}"),
    }
    assert!(format!("{err}").contains("tiny-labels-idx1-ubyte"));
    // nothing was installed
    assert!(!dir.join("READY").exists());
    assert!(!dir.join("tiny-images-idx3-ubyte.gz").exists());
}

#[test]
fn length_and_package_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    // a truncated label file: length mismatch (read stops at the pinned length + 1)
    let short = tmp.path().join("tiny-labels-idx1-ubyte");
    std::fs::write(&short, &LABELS[..9]).unwrap();
    let e = verify(&short, &TINY.files[1]).unwrap_err();
    assert!(
        matches!(&e, DataError::LengthMismatch { file, expected: 10, got: 9 } if *file == short),
        "{e:?}"
    );
    // a package without the label file
    let deb = fake_deb(tmp.path(), ".gz", &LABELS, false);
    let e = install_into(&tmp.path().join("a"), &TINY, &Source::Deb(deb)).unwrap_err();
    assert!(
        matches!(e.downcast_ref::<DataError>(), Some(DataError::MissingFile { path, .. }) if path.contains("tiny-labels-idx1-ubyte")),
        "{e:#}"
    );
    // not a package at all
    let junk = tmp.path().join("junk.deb");
    std::fs::write(&junk, b"!<arch>\nnot really").unwrap();
    let e = install_into(&tmp.path().join("b"), &TINY, &Source::Deb(junk)).unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<DataError>(),
            Some(DataError::BadPackage { .. })
        ),
        "{e:#}"
    );
}

#[test]
fn without_apt_the_message_says_where_the_files_go_and_hand_placed_files_install() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let no_apt = Source::Apt {
        program: tmp.path().join("no-apt-get").display().to_string(),
    };
    let msg = format!("{:#}", install_into(&dir, &TINY, &no_apt).unwrap_err());
    for needle in [
        dir.display().to_string(),
        "tiny-images-idx3-ubyte.gz".into(),
        "tiny-labels-idx1-ubyte.gz".into(),
        "--deb".into(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} not in: {msg}");
    }
    // the files put there by hand (one gzipped, one raw) are verified and accepted
    std::fs::write(dir.join("tiny-images-idx3-ubyte.gz"), gzip(&IMAGES)).unwrap();
    std::fs::write(dir.join("tiny-labels-idx1-ubyte"), LABELS).unwrap();
    let out = install_into(&dir, &TINY, &no_apt).unwrap();
    assert!(matches!(out, Outcome::Installed(ref from) if from.contains("already in")));
    assert_already_installed(&dir, &no_apt);
}

#[test]
fn a_concurrent_install_waits_for_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = fake_deb(tmp.path(), ".gz", &LABELS, true);
    let dir = tmp.path().join("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    let held = Lock::acquire(&dir.join("LOCK")).unwrap();
    let (d, s) = (dir.clone(), Source::Deb(deb));
    let t = std::thread::spawn(move || install_into(&d, &TINY, &s).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!t.is_finished(), "install ran while the lock was held");
    assert!(!dir.join("READY").exists());
    drop(held);
    assert!(matches!(t.join().unwrap(), Outcome::Installed(_)));
    assert!(dir.join("READY").exists());
}
