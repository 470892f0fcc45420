//! Structure-aware mutations: decode an input, edit one field of the decoded value (through its
//! JSON form, so every field of every op is reachable), and encode it again with a correct
//! header and checksum, so the edit reaches validation instead of failing at the checksum.

use qat_export::ir::FloatGraph;
use qat_int8_runtime::Int8Model;
use qat_int8_runtime::format::{FORMAT_VERSION, HEADER_LEN};
use serde_json::Value;

use crate::mutate::BOUNDARY;
use crate::rng::Rng;

/// Wraps `payload` in a `.qat8` header with its true length and CRC.
pub use qat_int8_runtime::format::wrap_payload as wrap_qat8;

/// Rewrites the header's length and CRC to match the (mutated) payload, keeping the version.
pub fn fix_header(bytes: &mut Vec<u8>) {
    if bytes.len() >= HEADER_LEN {
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        *bytes = wrap_qat8(&bytes[HEADER_LEN..], version);
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Mutates the `k`-th node (pre-order) of `v`; returns `true` once done.
fn edit(rng: &mut Rng, v: &mut Value, k: &mut usize) -> bool {
    if *k == 0 {
        mutate_value(rng, v);
        return true;
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| edit(rng, x, k)),
        Value::Object(o) => o.values_mut().any(|x| edit(rng, x, k)),
        _ => false,
    }
}

fn mutate_value(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            *v = match rng.below(6) {
                0 => Value::from(*rng.pick(&BOUNDARY)),
                1 => Value::from((x as i64).wrapping_add(rng.below(5) as i64 - 2)),
                2 => Value::from(-(rng.below(3) as i64) - 1),
                3 => serde_json::Number::from_f64(
                    *rng.pick(&[1e-45, 1e-38, 3.4e38, 1e39, -1e30, 0.5]),
                )
                .map_or(Value::Null, Value::Number),
                4 => serde_json::Number::from_f64(x * 2f64.powi(rng.below(64) as i32 - 32))
                    .map_or(Value::Null, Value::Number),
                _ => Value::from((x as i64).wrapping_mul(2)),
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            match rng.below(4) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let e = a[i].clone();
                    a.insert(i, e);
                }
                2 => a.truncate(i),
                _ => {
                    let e = a[rng.below(a.len())].clone();
                    a[i] = e;
                }
            }
        }
        Value::String(s) => {
            *s = match rng.below(3) {
                0 => String::new(),
                1 => format!("{s}{s}"),
                _ => "x".into(),
            }
        }
        Value::Bool(b) => *b = !*b,
        _ => *v = Value::from(rng.below(3)),
    }
}

/// Edits 1 to 3 random fields of `v`.
pub fn json_value(rng: &mut Rng, v: &mut Value) {
    for _ in 0..1 + rng.below(3) {
        let mut k = rng.below(count(v));
        edit(rng, v, &mut k);
    }
}

/// A structure-aware mutant of `.qat8` bytes, or `None` when the seed does not decode.
pub fn qat8(rng: &mut Rng, bytes: &[u8]) -> Option<Vec<u8>> {
    let model = Int8Model::from_bytes_with(
        bytes,
        &qat_int8_runtime::LoadOptions {
            limits: qat_int8_runtime::Limits::UNLIMITED,
        },
    )
    .ok()?;
    let mut v = serde_json::to_value(&model).ok()?;
    json_value(rng, &mut v);
    let mutant: Int8Model = serde_json::from_value(v).ok()?;
    let payload = bincode::serde::encode_to_vec(&mutant, bincode::config::standard()).ok()?;
    Some(wrap_qat8(&payload, FORMAT_VERSION))
}

/// A structure-aware mutant of a FloatGraph in JSON or bincode (`json` selects the output form).
pub fn graph(rng: &mut Rng, g: &FloatGraph, json: bool) -> Option<Vec<u8>> {
    let mut v = serde_json::to_value(g).ok()?;
    json_value(rng, &mut v);
    if json {
        return serde_json::to_vec(&v).ok();
    }
    let mutant: FloatGraph = serde_json::from_value(v).ok()?;
    mutant.to_bincode().ok()
}
