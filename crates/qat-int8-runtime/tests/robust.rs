//! Hostile inputs: integer overflow in validation, bounded decoding and reading, resource limits
//! checked before any work, decode errors that name the section and offset.

use qat_core::QuantParams;
use qat_int8_runtime::format::{FORMAT_VERSION, HEADER_LEN, wrap_payload};
use qat_int8_runtime::limits::Limits;
use qat_int8_runtime::testing::models::{max_pool, qdq, quantize_then, tensor, unit_conv};
use qat_int8_runtime::{
    Int8Model, LoadError, LoadOptions, Op, Target, TensorInfo, ValidationError,
};

fn q() -> QuantParams {
    QuantParams::asymmetric(0.0, 2.55, 8).unwrap()
}

fn u8t(name: &str, shape: &[usize]) -> TensorInfo {
    tensor(name, shape, Some(q()))
}

/// `x (f32) → Quantize → xq → op → y`, the op reading tensor 1 and writing tensor 2.
fn model_with(x: &[usize], y: TensorInfo, op: Op) -> Int8Model {
    quantize_then("m", x, q(), y, op, Target::Qat)
}

fn wrap(payload: &[u8]) -> Vec<u8> {
    wrap_payload(payload, FORMAT_VERSION)
}

#[test]
fn conv_groups_times_weight_width_overflow_is_a_typed_error() {
    // wi·groups wraps to C_in = 2 in a wrapping build: 2^63·2 + 2 = 2 mod 2^64... with wi = 2^63 + 1.
    let wi = (1usize << (usize::BITS - 1)) + 1;
    let conv = unit_conv([2, 1, 1, wi], 2, 2, [0; 4]);
    let m = model_with(&[1, 1, 2], u8t("y", &[1, 1, 2]), Op::Conv2d(conv));
    match m.validate() {
        Err(ValidationError::Op {
            op: 1,
            field: "weight_shape",
            ..
        }) => {}
        other => panic!("expected a weight_shape error, got {other:?}"),
    }
}

#[test]
fn a_string_length_prefix_beyond_the_payload_is_refused_with_its_section_and_offset() {
    // name: varint 0xFC + u32 length 2^30, then nothing: must not allocate 1 GiB first.
    let mut payload = vec![0xFC];
    payload.extend_from_slice(&(1u32 << 30).to_le_bytes());
    match Int8Model::from_bytes(&wrap(&payload)) {
        Err(LoadError::Decode {
            section, offset, ..
        }) => {
            assert_eq!(section, "name");
            assert_eq!(offset, HEADER_LEN);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn decode_errors_name_the_element_and_its_offset() {
    let m = qdq(&[4], q(), Target::Qat);
    let bytes = m.to_bytes().unwrap();
    // Cut the payload's last 4 bytes (rounding, outputs, input): the error names the section
    // the payload ends in, at an offset inside the file.
    let payload = &bytes[HEADER_LEN..];
    let cut = &payload[..payload.len() - 4];
    match Int8Model::from_bytes(&wrap(cut)) {
        Err(LoadError::Decode {
            section, offset, ..
        }) => {
            assert!(
                ["ops[1]", "input", "outputs (count)", "outputs[0]"].contains(&section.as_str()),
                "{section}"
            );
            assert!(offset > HEADER_LEN && offset < bytes.len(), "{offset}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // A count that cannot fit in the bytes left is refused before reserving anything.
    let mut p = vec![1, b'm', 0xFC];
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    match Int8Model::from_bytes(&wrap(&p)) {
        Err(LoadError::Decode {
            section, offset, ..
        }) => assert_eq!(
            (section.as_str(), offset),
            ("tensors (count)", HEADER_LEN + 2)
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn payload_limit_is_checked_before_the_checksum_and_decoding() {
    let payload = vec![0u8; 64];
    let tight = LoadOptions {
        limits: Limits {
            max_payload_bytes: 63,
            ..Limits::default()
        },
    };
    assert!(matches!(
        Int8Model::from_bytes_with(&wrap(&payload), &tight),
        Err(LoadError::TooLarge { len: 64, limit: 63 })
    ));
}

#[cfg(unix)]
#[test]
fn loading_an_endless_device_reads_only_up_to_the_limit() {
    let tight = LoadOptions {
        limits: Limits {
            max_payload_bytes: 1 << 20,
            ..Limits::default()
        },
    };
    match Int8Model::load_with("/dev/zero", &tight) {
        Err(LoadError::TooLarge { limit, .. }) => assert_eq!(limit, 1 << 20),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn activation_memory_is_limited_before_any_work() {
    // 2^26 f32 elements = 256 MiB plus the 64 MiB U8 copy: over the default 256 MiB.
    let n = 1usize << 26;
    let m = qdq(&[n], q(), Target::Qat);
    assert_eq!(m.cost().activation_bytes, 4 * n as u64 * 2 + n as u64);
    let bytes = m.to_bytes().unwrap();
    assert!(bytes.len() < 100, "a {}-byte file", bytes.len());
    match Int8Model::from_bytes(&bytes) {
        Err(LoadError::Invalid(ValidationError::Limit { needed, limit, .. })) => {
            assert_eq!((needed, limit), (9 * n as u64, 256 << 20));
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    let raised = LoadOptions {
        limits: Limits {
            max_activation_bytes: 1 << 30,
            ..Limits::default()
        },
    };
    assert!(Int8Model::from_bytes_with(&bytes, &raised).is_ok());
}

#[test]
fn pool_window_work_is_limited_and_names_the_op() {
    // 4096×4096 input, a 2048×2048 window at stride 1: 2049²·2048² ≈ 1.8·10^13 cells.
    let pool = max_pool([1, 2], [2048, 2048], [1, 1], [0; 4]);
    let m = model_with(&[4096, 4096, 1], u8t("y", &[2049, 2049, 1]), pool);
    let want = 2049u64 * 2049 * 2048 * 2048;
    assert_eq!(m.cost().pool_work, want);
    let bytes = m.to_bytes().unwrap();
    match Int8Model::from_bytes(&bytes) {
        Err(LoadError::Invalid(ValidationError::Limit {
            needed,
            heaviest_op,
            ..
        })) => {
            assert_eq!(needed, want);
            assert_eq!(heaviest_op, Some((1, "MaxPool2d")));
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn conv_macs_are_limited() {
    let conv = unit_conv([8, 3, 3, 4], 8 * 9 * 4, 1, [1; 4]);
    let m = model_with(&[16, 16, 4], u8t("y", &[16, 16, 8]), Op::Conv2d(conv));
    let macs = 16 * 16 * 8 * 36;
    assert_eq!(m.cost().macs, macs);
    let bytes = m.to_bytes().unwrap();
    let at = |max_macs| {
        Int8Model::from_bytes_with(
            &bytes,
            &LoadOptions {
                limits: Limits {
                    max_macs,
                    ..Limits::default()
                },
            },
        )
    };
    assert!(at(macs).is_ok());
    assert!(matches!(
        at(macs - 1),
        Err(LoadError::Invalid(ValidationError::Limit {
            heaviest_op: Some((1, "Conv2d")),
            ..
        }))
    ));
}

#[test]
fn a_semantic_decode_failure_names_the_tensor() {
    let m = qdq(&[4], q(), Target::Qat);
    let bytes = m.to_bytes().unwrap();
    // The scale of tensor 1 ('xq') is the only f32 0.01 in the payload: make it NaN.
    let scale = q().scale().to_le_bytes();
    let mut payload = bytes[HEADER_LEN..].to_vec();
    let at = payload
        .windows(4)
        .position(|w| w == scale)
        .expect("the scale is in the payload");
    payload[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    match Int8Model::from_bytes(&wrap(&payload)) {
        Err(LoadError::Decode {
            section, message, ..
        }) => {
            assert_eq!(section, "tensors[1]", "{message}");
            assert!(message.contains("NaN"), "{message}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}
