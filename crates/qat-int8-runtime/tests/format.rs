//! The `.qat8` file: round trip, golden file, typed errors, and random corruption never panics.

mod common;

use common::{Rng, zoo_model};
use qat_int8_runtime::format::{FORMAT_VERSION, HEADER_LEN, MAGIC, crc32, wrap_payload};
use qat_int8_runtime::{
    Conv2d, Executor, Int8Model, KernelPath, LoadError, Op, Pool2d, SaveError, Target,
    ValidationError, Weights,
};

/// Written by the version-1 format (before `Int8Model::rounding`), from `zoo_model()`.
const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/zoo_v1.qat8");
/// Written by the version-2 format from `zoo_model()` with `Target::Qat` (the old `Rounding::Single`).
const GOLDEN_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/zoo_v2.qat8");

fn zoo_single() -> Int8Model {
    Int8Model {
        rounding: Target::Qat,
        ..zoo_model()
    }
}

/// Rewrites the current version's golden file from the builder. Run once, on purpose, when the
/// format version changes (and add a new file for the new version, keeping the old ones):
/// `cargo test -p qat-int8-runtime --test format -- --ignored write_golden`.
#[test]
#[ignore = "writes tests/data/zoo_v2.qat8"]
fn write_golden() {
    zoo_single().save(GOLDEN_V2).unwrap();
}

fn runs(model: &Int8Model) {
    let mut exec = Executor::with_path(model, KernelPath::Reference).unwrap();
    let x = ndarray::ArrayD::from_shape_vec(vec![1, 8, 8, 3], Rng(3).f32s(192, -1.0, 1.0)).unwrap();
    let y = exec.run(x.view()).unwrap();
    assert_eq!(y[0].shape(), &[1, 5]);
    assert_eq!(y[1].shape(), &[1, 16]);
}

#[test]
fn golden_v1_file_still_loads_as_gemmlowp_and_runs() {
    let bytes = std::fs::read(GOLDEN_V1).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    let model = Int8Model::load(GOLDEN_V1).expect("golden v1 file must keep loading");
    assert_eq!(model.rounding, Target::Tflite);
    assert_eq!(
        model,
        zoo_model(),
        "golden file decodes to the model it was written from"
    );
    runs(&model);
}

#[test]
fn golden_v2_file_loads_and_runs() {
    let bytes = std::fs::read(GOLDEN_V2).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    let model = Int8Model::load(GOLDEN_V2).expect("golden v2 file must keep loading");
    assert_eq!(model, zoo_single());
    // The writer is deterministic: today's bytes are the golden bytes.
    assert_eq!(zoo_single().to_bytes().unwrap(), bytes);
    runs(&model);
}

#[test]
fn both_roundings_round_trip() {
    for rounding in Target::ALL {
        let model = Int8Model {
            rounding,
            ..zoo_model()
        };
        let bytes = model.to_bytes().unwrap();
        assert_eq!(Int8Model::from_bytes(&bytes).unwrap(), model, "{rounding}");
    }
    // The field is the payload's last byte (bincode enum index): 0 Gemmlowp, 1 Single.
    let g = zoo_model().to_bytes().unwrap();
    let s = zoo_single().to_bytes().unwrap();
    assert_eq!((g.last(), s.last()), (Some(&0), Some(&1)));
    // A v2 header over a v1 payload (field missing) is a typed decode error, not a panic.
    let v1_payload = &g[HEADER_LEN..g.len() - 1];
    assert!(matches!(
        Int8Model::from_bytes(&rewrap(v1_payload)),
        Err(LoadError::Decode { .. })
    ));
    // An unknown rounding index is a decode error too.
    let mut bad = s[HEADER_LEN..].to_vec();
    *bad.last_mut().unwrap() = 7;
    assert!(matches!(
        Int8Model::from_bytes(&rewrap(&bad)),
        Err(LoadError::Decode { .. })
    ));
}

#[test]
fn round_trip_bytes_and_file() {
    let model = zoo_model();
    let bytes = model.to_bytes().unwrap();
    assert_eq!(&bytes[..8], &MAGIC);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        FORMAT_VERSION
    );
    assert_eq!(Int8Model::from_bytes(&bytes).unwrap(), model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.qat8");
    model.save(&path).unwrap();
    assert_eq!(Int8Model::load(&path).unwrap(), model);
}

#[test]
fn crc32_check_value() {
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}

fn rewrap(payload: &[u8]) -> Vec<u8> {
    wrap_payload(payload, FORMAT_VERSION)
}

#[test]
fn header_errors_are_typed() {
    let bytes = zoo_model().to_bytes().unwrap();
    assert!(matches!(
        Int8Model::from_bytes(&bytes[..10]),
        Err(LoadError::TooShort { len: 10 })
    ));
    let mut b = bytes.clone();
    b[0] = b'P';
    assert!(matches!(
        Int8Model::from_bytes(&b),
        Err(LoadError::BadMagic { .. })
    ));
    let mut b = bytes.clone();
    b[8] = 3;
    assert!(matches!(
        Int8Model::from_bytes(&b),
        Err(LoadError::UnsupportedVersion { found: 3 })
    ));
    b[8] = 0;
    assert!(matches!(
        Int8Model::from_bytes(&b),
        Err(LoadError::UnsupportedVersion { found: 0 })
    ));
    let mut b = bytes.clone();
    b[12] = 1;
    assert!(matches!(
        Int8Model::from_bytes(&b),
        Err(LoadError::UnsupportedFlags { flags: 1 })
    ));
    assert!(matches!(
        Int8Model::from_bytes(&bytes[..bytes.len() - 1]),
        Err(LoadError::LengthMismatch { .. })
    ));
    let mut b = bytes.clone();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    assert!(matches!(
        Int8Model::from_bytes(&b),
        Err(LoadError::ChecksumMismatch { .. })
    ));
    let mut payload = bytes[HEADER_LEN..].to_vec();
    payload.push(0);
    assert!(matches!(
        Int8Model::from_bytes(&rewrap(&payload)),
        Err(LoadError::TrailingBytes { trailing: 1 })
    ));
    let garbage = rewrap(&[0xff; 40]);
    assert!(matches!(
        Int8Model::from_bytes(&garbage),
        Err(LoadError::Decode { .. })
    ));
    let missing = Int8Model::load("/nonexistent/dir/m.qat8");
    assert!(matches!(missing, Err(LoadError::Io { .. })));
}

#[test]
fn validation_names_op_and_field() {
    let mut m = zoo_model();
    conv_mut(&mut m, 2).bias.pop();
    let err = m.validate().unwrap_err();
    assert!(
        matches!(
            err,
            ValidationError::Op {
                op: 2,
                kind: "Conv2d",
                field: "bias",
                ..
            }
        ),
        "{err}"
    );
    // to_bytes refuses, and a file carrying it (re-encoded by hand) is refused on load.
    assert!(matches!(m.to_bytes(), Err(SaveError::Invalid(_))));
    let payload = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
    let err = Int8Model::from_bytes(&rewrap(&payload)).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Invalid(ValidationError::Op {
                op: 2,
                field: "bias",
                ..
            })
        ),
        "{err}"
    );

    // Each edit of the zoo model, and what the validation error names (see `named`).
    type Case = (fn(&mut Int8Model), (&'static str, usize, &'static str));
    let cases: [Case; 6] = [
        (|m| m.ops.swap(1, 2), ("Conv2d", 1, "input")),
        (|m| conv_mut(m, 1).stride = [2, 2], ("Conv2d", 1, "output")),
        (
            |m| {
                let Weights::Uint8 { zero_points, .. } = &mut conv_mut(m, 4).weights else {
                    panic!("op 4 has uint8 weights")
                };
                zero_points[0] = 300;
            },
            ("Conv2d", 4, "weights.zero_points"),
        ),
        (|m| m.outputs.push(999), ("output", 2, "999")),
        (|m| m.tensors[3].quant = None, ("tensor", 3, "quant")),
        (
            |m| {
                let Op::MaxPool2d(Pool2d { padding, .. }) = &mut m.ops[6] else {
                    panic!("op 6 is the max pool")
                };
                *padding = [2, 0, 0, 0];
            },
            ("MaxPool2d", 6, "padding"),
        ),
    ];
    for (edit, (what, index, field)) in cases {
        let mut m = zoo_model();
        edit(&mut m);
        let err = m.validate().unwrap_err();
        assert_eq!(named(&err), (what, index, field.to_string()), "{err}");
    }
}

/// What a validation error names: an op's kind, index and field; `output`, the output's index
/// and its tensor; or `tensor`, the tensor's index and field.
fn named(e: &ValidationError) -> (&'static str, usize, String) {
    match e {
        ValidationError::Op {
            op, kind, field, ..
        } => (kind, *op, field.to_string()),
        ValidationError::Output { index, tensor, .. } => ("output", *index, tensor.to_string()),
        ValidationError::Tensor { tensor, field, .. } => ("tensor", *tensor, field.to_string()),
        other => panic!("unexpected error {other}"),
    }
}

/// Op `i` of `m`, a conv.
fn conv_mut(m: &mut Int8Model, i: usize) -> &mut Conv2d {
    let Op::Conv2d(c) = &mut m.ops[i] else {
        panic!("op {i} is a conv")
    };
    c
}

/// Random corruptions of a valid file: always `Err` or a valid model, never a panic. With the
/// checksum refreshed, corruptions reach the decoder and the validator.
#[test]
fn random_corruptions_never_panic() {
    let bytes = zoo_model().to_bytes().unwrap();
    let payload = &bytes[HEADER_LEN..];
    let mut rng = Rng(42);
    let (mut errors, mut ok) = (0, 0);
    for i in 0..3000 {
        let mut p = payload.to_vec();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(p.len() as u64) as usize;
                    p[at] = rng.below(256) as u8;
                }
            }
            1 => {
                let at = rng.below(p.len() as u64) as usize;
                p.truncate(at);
            }
            2 => {
                let at = rng.below(p.len() as u64) as usize;
                p[at] ^= 1 << rng.below(8);
            }
            _ => {
                let at = rng.below(p.len() as u64) as usize;
                let len = (1 + rng.below(16) as usize).min(p.len() - at);
                let fill = rng.below(256) as u8;
                p[at..at + len].fill(fill);
            }
        }
        // Half with a fresh checksum (exercises decode + validate), half with the stale one.
        let file = if i % 2 == 0 {
            rewrap(&p)
        } else {
            let mut f = bytes[..HEADER_LEN].to_vec();
            f[16..24].copy_from_slice(&(p.len() as u64).to_le_bytes());
            f.extend_from_slice(&p);
            f
        };
        match Int8Model::from_bytes(&file) {
            Ok(m) => {
                // A corruption can land on a value that is still valid (a weight code): the
                // result must then be a fully valid, runnable model.
                m.validate().unwrap();
                Executor::with_path(&m, KernelPath::Reference).unwrap();
                ok += 1;
            }
            Err(_) => errors += 1,
        }
    }
    assert!(
        errors > 2000,
        "most corruptions must be refused ({errors} errors, {ok} accepted)"
    );
}
