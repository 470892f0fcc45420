//! The inputs behind each robustness finding, built here so the corpus files can be regenerated:
//! `cargo test -p qat-fuzz --test findings -- --ignored` writes them into `tests/data/fuzz/`.
//! The corpus replay (`tests/corpus.rs`) runs them on every `cargo test`; this file checks each
//! is refused with the typed error it should get.

use qat_core::{QuantParams, QuantRange};
use qat_export::FloatGraph;
use qat_export::ir::{Conv2d, Pool2d};
use qat_fuzz::structure::wrap_qat8;
use qat_fuzz::targets::Target;
use qat_int8_runtime::format::FORMAT_VERSION;
use qat_int8_runtime::testing::models::{max_pool, qdq, quantize_then, tensor, unit_conv};
use qat_int8_runtime::{Int8Model, Op, TensorInfo};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/fuzz");

fn raw_qat8(m: &Int8Model) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(m, bincode::config::standard()).unwrap();
    wrap_qat8(&payload, FORMAT_VERSION)
}

/// `x (f32) → Quantize (q) → xq → op → y`, the op reading tensor 1 and writing tensor 2.
fn model(x: &[usize], y: TensorInfo, op: Op, q: QuantParams) -> Int8Model {
    quantize_then("f", x, q, y, op, qat_int8_runtime::Target::Qat)
}

fn graph_with_conv(conv: Conv2d) -> FloatGraph {
    let mut g = FloatGraph::new("f");
    let x = g.input("x", &[1, 1, 1]);
    let c = g.conv2d("conv", x, conv);
    g.output("y", c);
    g
}

/// Every finding's input, with its target and a name.
fn findings() -> Vec<(&'static str, Target, Vec<u8>)> {
    let q = QuantParams::asymmetric(0.0, 2.55, 8).unwrap();
    let qat8 = |name, m: &Int8Model| (name, Target::Qat8, raw_qat8(m));
    let qdq_f = |shape: &[usize], q| Int8Model {
        name: "f".into(),
        ..qdq(shape, q, qat_int8_runtime::Target::Qat)
    };
    let mut out = Vec::new();
    // Quantize with a tiny scale and Z > 0: every positive input overflowed `x + Z`.
    let tiny = QuantParams::new(1e-45, 200, QuantRange::unsigned(8).unwrap()).unwrap();
    out.push(qat8("quantize-tiny-scale", &qdq_f(&[4], tiny)));
    // wi·groups overflow.
    let conv = unit_conv([2, 1, 1, (1usize << (usize::BITS - 1)) + 1], 2, 2, [0; 4]);
    let y = tensor("y", &[1, 1, 2], Some(q));
    out.push(qat8(
        "groups-overflow",
        &model(&[1, 1, 2], y, Op::Conv2d(conv), q),
    ));
    // A max pool whose windows cost ~1.8·10^13 cells.
    let pool = max_pool([1, 2], [2048, 2048], [1, 1], [0; 4]);
    let y = tensor("y", &[2049, 2049, 1], Some(q));
    out.push(qat8("pool-work", &model(&[4096, 4096, 1], y, pool, q)));
    // 2^26-element tensors: 320 MiB of activations from a tiny file.
    out.push(qat8("activation-memory", &qdq_f(&[1 << 26], q)));
    // A payload whose name claims 1 GiB.
    let mut payload = vec![0xFD];
    payload.extend_from_slice(&(1u64 << 30).to_le_bytes());
    out.push((
        "name-length",
        Target::Qat8,
        wrap_qat8(&payload, FORMAT_VERSION),
    ));
    // FloatGraph bincode: a 9-byte input whose name claims 2^40 bytes.
    let mut b = vec![0xFC];
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    out.push(("graph-name-length", Target::GraphBincode, b));
    // JSON conv padding 2^20, stride 65537, an overflowing weight shape.
    for (name, conv) in [
        (
            "graph-padding",
            Conv2d::new(vec![1.0], [1, 1, 1, 1]).with_padding([1 << 20; 4]),
        ),
        (
            "graph-stride",
            Conv2d::new(vec![1.0], [1, 1, 1, 1]).with_stride([65537, 1]),
        ),
        (
            "graph-weight-shape",
            Conv2d::new(vec![], [1 << 32, 1 << 32, 1, 1]),
        ),
    ] {
        out.push((
            name,
            Target::GraphJson,
            graph_with_conv(conv).to_json().unwrap().into_bytes(),
        ));
    }
    // A pool graph over the work limit.
    let mut g = FloatGraph::new("f");
    let x = g.input("x", &[512, 512, 4]);
    let p = g.avg_pool("pool", x, Pool2d::square(256, 1));
    g.output("y", p);
    out.push((
        "graph-pool-work",
        Target::GraphJson,
        g.to_json().unwrap().into_bytes(),
    ));
    out
}

#[test]
fn each_finding_is_refused_or_runs() {
    for (name, target, bytes) in findings() {
        let r = qat_fuzz::targets::run(&mut qat_fuzz::rng::Rng::new(0), target, &bytes);
        if name == "quantize-tiny-scale" {
            assert_eq!(r, Ok(()), "{name}");
        } else {
            let e = r.expect_err(name);
            assert!(!e.starts_with(qat_fuzz::targets::BUG), "{name}: {e}");
        }
    }
}

#[test]
fn the_tiny_scale_quantize_saturates() {
    let tiny = QuantParams::new(1e-45, 200, QuantRange::unsigned(8).unwrap()).unwrap();
    assert_eq!(tiny.quantize(1.0), 255);
    assert_eq!(tiny.quantize(f32::INFINITY), 255);
    assert_eq!(tiny.quantize(-1.0), 0);
    assert_eq!(tiny.quantize(f32::NAN), 200);
}

#[test]
#[ignore = "writes tests/data/fuzz/finding-*"]
fn write_findings() {
    for (name, target, bytes) in findings() {
        let path = format!("{CORPUS}/finding-{name}.{}", target.extension());
        std::fs::write(path, bytes).unwrap();
    }
}
