//! ONNX import: a float graph written by `float_to_onnx` comes back with the same outputs; a
//! PyTorch-style NCHW model (separate batch norm, `Clip` with inputs, `Gemm` with alpha/beta,
//! `MatMul` + `Add`, a CHW flatten) equals an independent NCHW float forward; every unsupported
//! node is listed in one error; malformed bytes give typed errors.

mod common;

use common::{rng, uniform};
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use qat_export::interp;
use qat_export::ir::{Activation, BatchNorm, Conv2d, FloatGraph, Linear, Pool2d};
use qat_export::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
};
use qat_export::onnx::{
    ImportError, ImportOptions, InputLayout, float_to_onnx, import_onnx, tensor_value_info,
};

/// Deterministic pseudo-random values in [−1, 1).
fn vals(n: usize, seed: u64) -> Vec<f32> {
    uniform(&mut rng(seed), n, -1.0, 1.0)
}

/// `max |a − b|` over two sequences of equal length.
fn max_abs_diff<'a>(
    a: impl ExactSizeIterator<Item = &'a f32>,
    b: impl ExactSizeIterator<Item = &'a f32>,
) -> f32 {
    assert_eq!(a.len(), b.len());
    a.zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn float_graph_round_trips_through_onnx() {
    let mut g = FloatGraph::new("rt");
    let x = g.input("x", &[8, 8, 3]);
    let bn = |c: usize, s: u64| BatchNorm {
        gamma: vals(c, s).iter().map(|v| 1.0 + 0.5 * v).collect(),
        beta: vals(c, s + 1),
        mean: vals(c, s + 2),
        var: vals(c, s + 3).iter().map(|v| 1.0 + 0.5 * v).collect(),
        eps: 1e-3,
    };
    let c1 = g.conv2d(
        "c1",
        x,
        Conv2d::new(vals(8 * 27, 1), [8, 3, 3, 3])
            .with_padding([1, 1, 1, 1])
            .with_batch_norm(bn(8, 10))
            .with_activation(Activation::Relu6),
    );
    let dw = g.conv2d(
        "dw",
        c1,
        Conv2d::new(vals(8 * 9, 2), [8, 3, 3, 1])
            .with_groups(8)
            .with_stride([2, 2])
            .with_padding([0, 0, 1, 1])
            .with_batch_norm(bn(8, 20))
            .with_activation(Activation::Relu),
    );
    let pw = g.conv2d(
        "pw",
        dw,
        Conv2d::new(vals(8 * 8, 3), [8, 1, 1, 8]).with_bias(vals(8, 4)),
    );
    let sum = g.add("res", dw, pw, Activation::Relu);
    let mp = g.max_pool("mp", sum, Pool2d::square(2, 1));
    let ap = g.avg_pool(
        "ap",
        sum,
        Pool2d {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [0, 0, 0, 0],
        },
    );
    let cat = g.concat("cat", &[mp, ap]);
    let fl = g.flatten("flat", cat);
    let fc1 = g.linear(
        "fc1",
        fl,
        Linear::new(vals(6 * 144, 5), [6, 144])
            .with_bias(vals(6, 6))
            .with_activation(Activation::Relu),
    );
    let fc2 = g.linear("fc2", fc1, Linear::new(vals(12, 7), [2, 6]));
    g.output("logits", fc2);

    let file = float_to_onnx(&g).unwrap();
    let imp = import_onnx(&file.bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Nhwc);
    let input = ArrayD::from_shape_vec(IxDyn(&[4, 8, 8, 3]), vals(4 * 192, 9)).unwrap();
    let want = interp::run(&g, input.view(), None).unwrap();
    let got = interp::run(&imp.graph, input.view(), None).unwrap();
    let (want, got) = (want.last().unwrap(), got.last().unwrap());
    assert_eq!(want.shape(), got.shape());
    let d = max_abs_diff(want.iter(), got.iter());
    assert!(d <= 1e-4, "max |Δ| {d}");
}

// ---- a hand-written NCHW model, as PyTorch exports it ----

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}
fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}
fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}
fn init(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}
fn init_i64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![data.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}
fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dims: Vec<Option<i64>> = dims.iter().map(|&d| (d >= 0).then_some(d)).collect();
    tensor_value_info(name, DataType::Float, &dims)
}
fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    input: ValueInfoProto,
    output: ValueInfoProto,
    opset: i64,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("torch".into()),
            node: nodes,
            initializer: inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The weights of the hand-written model.
struct Torchish {
    w1: Vec<f32>,      // [4, 2, 3, 3]
    bn: [Vec<f32>; 4], // gamma, beta, mean, var (4)
    wd: Vec<f32>,      // [4, 1, 3, 3]
    bd: Vec<f32>,      // [4]
    wg: Vec<f32>,      // Gemm B [5, 16] (transB)
    cg: Vec<f32>,      // [5]
    wm: Vec<f32>,      // MatMul B [5, 3]
    bm: Vec<f32>,      // [3]
}

fn torchish() -> (Torchish, Vec<u8>) {
    let t = Torchish {
        w1: vals(72, 31),
        bn: [
            vals(4, 32).iter().map(|v| 1.0 + 0.3 * v).collect(),
            vals(4, 33),
            vals(4, 34),
            vals(4, 35).iter().map(|v| 1.2 + 0.5 * v).collect(),
        ],
        wd: vals(36, 36),
        bd: vals(4, 37),
        wg: vals(80, 38),
        cg: vals(5, 39),
        wm: vals(15, 40),
        bm: vals(3, 41),
    };
    let nodes = vec![
        node(
            "Conv",
            "conv1",
            &["x", "w1"],
            &["c1"],
            vec![
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("kernel_shape", &[3, 3]),
            ],
        ),
        node(
            "BatchNormalization",
            "bn1",
            &["c1", "g", "b", "m", "v"],
            &["n1"],
            vec![attr_f("epsilon", 1e-5)],
        ),
        node("Relu", "relu1", &["n1"], &["r1"], vec![]),
        node(
            "MaxPool",
            "pool1",
            &["r1"],
            &["p1"],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node(
            "Conv",
            "dw",
            &["p1", "wd", "bd"],
            &["d1"],
            vec![attr_i("group", 4), attr_s("auto_pad", "SAME_UPPER")],
        ),
        node("Clip", "relu6", &["d1", "lo", "hi"], &["d2"], vec![]),
        node("Add", "res", &["d2", "p1"], &["s1"], vec![]),
        node(
            "AveragePool",
            "pool2",
            &["s1"],
            &["p2"],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node("Flatten", "flat", &["p2"], &["f"], vec![attr_i("axis", 1)]),
        node(
            "Gemm",
            "fc1",
            &["f", "wg", "cg"],
            &["g1"],
            vec![
                attr_i("transB", 1),
                attr_f("alpha", 0.5),
                attr_f("beta", 2.0),
            ],
        ),
        node("Relu", "relu2", &["g1"], &["g2"], vec![]),
        node("Dropout", "drop", &["g2"], &["g3"], vec![]),
        node("MatMul", "fc2", &["g3", "wm"], &["mm"], vec![]),
        node("Add", "fc2_bias", &["mm", "bm"], &["y"], vec![]),
    ];
    let inits = vec![
        init("w1", &[4, 2, 3, 3], t.w1.clone()),
        init("g", &[4], t.bn[0].clone()),
        init("b", &[4], t.bn[1].clone()),
        init("m", &[4], t.bn[2].clone()),
        init("v", &[4], t.bn[3].clone()),
        init("wd", &[4, 1, 3, 3], t.wd.clone()),
        init("bd", &[4], t.bd.clone()),
        init("lo", &[], vec![0.0]),
        init("hi", &[], vec![6.0]),
        init("wg", &[5, 16], t.wg.clone()),
        init("cg", &[5], t.cg.clone()),
        init("wm", &[5, 3], t.wm.clone()),
        init("bm", &[3], t.bm.clone()),
    ];
    let bytes = model(
        nodes,
        inits,
        value("x", &[-1, 2, 8, 8]),
        value("y", &[-1, 3]),
        17,
    );
    (t, bytes)
}

/// Independent NCHW forward of the hand-written model for one sample `x` `[2, 8, 8]`.
fn torchish_forward(t: &Torchish, x: &[f32]) -> Vec<f32> {
    // conv1 3×3 pad 1, 2 → 4 channels, 8×8, then BN and ReLU
    let mut r1 = vec![0f32; 4 * 64];
    for o in 0..4 {
        let k = t.bn[0][o] / (t.bn[3][o] + 1e-5).sqrt();
        for y in 0..8 {
            for xx in 0..8 {
                let mut acc = 0f32;
                for i in 0..2 {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (iy, ix) = (y as i64 + dy as i64 - 1, xx as i64 + dx as i64 - 1);
                            if (0..8).contains(&iy) && (0..8).contains(&ix) {
                                acc += t.w1[((o * 2 + i) * 3 + dy) * 3 + dx]
                                    * x[(i * 8 + iy as usize) * 8 + ix as usize];
                            }
                        }
                    }
                }
                r1[(o * 8 + y) * 8 + xx] = ((acc - t.bn[2][o]) * k + t.bn[1][o]).max(0.0);
            }
        }
    }
    // max pool 2×2 s2 → 4×4
    let mut p1 = vec![0f32; 4 * 16];
    for c in 0..4 {
        for y in 0..4 {
            for xx in 0..4 {
                let mut m = f32::NEG_INFINITY;
                for dy in 0..2 {
                    for dx in 0..2 {
                        m = m.max(r1[(c * 8 + 2 * y + dy) * 8 + 2 * xx + dx]);
                    }
                }
                p1[(c * 4 + y) * 4 + xx] = m;
            }
        }
    }
    // depthwise 3×3 SAME (pad 1), bias, ReLU6, + p1
    let mut s1 = vec![0f32; 4 * 16];
    for c in 0..4 {
        for y in 0..4 {
            for xx in 0..4 {
                let mut acc = t.bd[c];
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (iy, ix) = (y as i64 + dy as i64 - 1, xx as i64 + dx as i64 - 1);
                        if (0..4).contains(&iy) && (0..4).contains(&ix) {
                            acc += t.wd[(c * 3 + dy) * 3 + dx]
                                * p1[(c * 4 + iy as usize) * 4 + ix as usize];
                        }
                    }
                }
                s1[(c * 4 + y) * 4 + xx] = acc.clamp(0.0, 6.0) + p1[(c * 4 + y) * 4 + xx];
            }
        }
    }
    // avg pool 2×2 s2 → [4, 2, 2], flattened in CHW order
    let mut f = [0f32; 16];
    for c in 0..4 {
        for y in 0..2 {
            for xx in 0..2 {
                let mut s = 0f32;
                for dy in 0..2 {
                    for dx in 0..2 {
                        s += s1[(c * 4 + 2 * y + dy) * 4 + 2 * xx + dx];
                    }
                }
                f[(c * 2 + y) * 2 + xx] = s / 4.0;
            }
        }
    }
    // Gemm: 0.5·f·Bᵀ + 2·C, ReLU; MatMul + bias
    let g: Vec<f32> = (0..5)
        .map(|o| {
            (0.5 * (0..16).map(|i| f[i] * t.wg[o * 16 + i]).sum::<f32>() + 2.0 * t.cg[o]).max(0.0)
        })
        .collect();
    (0..3)
        .map(|o| (0..5).map(|i| g[i] * t.wm[i * 3 + o]).sum::<f32>() + t.bm[o])
        .collect()
}

/// Runs the float graph on `n` samples of `[2, 8, 8]` given in NCHW order (the graph takes NHWC).
fn run_nchw(graph: &FloatGraph, n: usize, nchw: &[f32]) -> Vec<ArrayD<f32>> {
    let mut nhwc = vec![0f32; n * 128];
    for b in 0..n {
        for c in 0..2 {
            for p in 0..64 {
                nhwc[b * 128 + p * 2 + c] = nchw[b * 128 + c * 64 + p];
            }
        }
    }
    let input = ArrayD::from_shape_vec(IxDyn(&[n, 8, 8, 2]), nhwc).unwrap();
    interp::run(graph, input.view(), None).unwrap()
}

#[test]
fn pytorch_style_nchw_model_equals_an_independent_forward() {
    let (t, bytes) = torchish();
    let imp = import_onnx(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(imp.input_layout, InputLayout::Nchw);
    assert_eq!(imp.input_name, "x");
    // The batch norm is the conv's; the ReLU6 and the ReLU are fused; the bias joined fc2.
    let kinds: Vec<&str> = imp.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        kinds,
        [
            "Input",
            "Conv2d",
            "MaxPool",
            "DepthwiseConv2d",
            "Add",
            "AvgPool",
            "Flatten",
            "Linear",
            "Linear",
            "Output"
        ]
    );
    let n = 3;
    let nchw = vals(n * 128, 77);
    let got = run_nchw(&imp.graph, n, &nchw);
    let got = got.last().unwrap();
    for b in 0..n {
        let want = torchish_forward(&t, &nchw[b * 128..(b + 1) * 128]);
        for o in 0..3 {
            let d = (got[[b, o]] - want[o]).abs();
            assert!(
                d <= 1e-4,
                "sample {b} output {o}: {} vs {}",
                got[[b, o]],
                want[o]
            );
        }
    }
}

#[test]
fn every_unsupported_node_is_listed_in_one_error() {
    let nodes = vec![
        node(
            "Conv",
            "conv_autopad",
            &["x", "w"],
            &["c"],
            vec![attr_s("auto_pad", "SIDEWAYS")],
        ),
        node("Relu", "r", &["x"], &["r"], vec![]),
        node("Clip", "hardtanh", &["x", "lo", "hi"], &["h"], vec![]),
        node(
            "Softmax",
            "softmax",
            &["x"],
            &["s"],
            vec![attr_i("axis", 1)],
        ),
        node("Conv", "conv_after_bad", &["s", "w"], &["y"], vec![]),
    ];
    let inits = vec![
        init("w", &[1, 1, 1, 1], vec![1.0]),
        init("lo", &[], vec![-1.0]),
        init("hi", &[], vec![1.0]),
    ];
    let bytes = model(
        nodes,
        inits,
        value("x", &[-1, 1, 4, 4]),
        value("y", &[-1, 1, 4, 4]),
        13,
    );
    let err = import_onnx(&bytes, &ImportOptions::default()).unwrap_err();
    let ImportError::Unsupported(list) = &err else {
        panic!("expected Unsupported, got {err}");
    };
    let names: Vec<&str> = list.iter().map(|u| u.node.as_str()).collect();
    // The consumer of a failed node is not reported again.
    assert_eq!(names, ["conv_autopad", "r", "hardtanh", "softmax"], "{err}");
    let text = err.to_string();
    assert!(
        text.contains("SIDEWAYS") && text.contains("Softmax") && text.contains("[-1, 1]"),
        "{text}"
    );
}

#[test]
fn opset_and_malformed_input_give_typed_errors() {
    let nodes = vec![node("Relu", "r", &["x"], &["y"], vec![])];
    let bytes = model(
        nodes.clone(),
        vec![],
        value("x", &[-1, 4]),
        value("y", &[-1, 4]),
        9,
    );
    let err = import_onnx(&bytes, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("opset 9"), "{err}");
    // Truncated protobuf: a decode error, no panic.
    let good = model(
        nodes,
        vec![],
        value("x", &[-1, 4]),
        value("y", &[-1, 4]),
        13,
    );
    for cut in [1, good.len() / 2, good.len() - 1] {
        let r = import_onnx(&good[..cut], &ImportOptions::default());
        assert!(r.is_err(), "cut at {cut}");
    }
    // An initializer whose dims lie about its data, and one over the element limit.
    let lie = TensorProto {
        name: Some("w".into()),
        dims: vec![1 << 40, 1 << 40],
        data_type: Some(DataType::Float as i32),
        raw_data: Some(vec![0; 8]),
        ..Default::default()
    };
    let nodes = vec![node("Conv", "c", &["x", "w"], &["y"], vec![])];
    let bytes = model(
        nodes,
        vec![lie, init_i64("unused", &[1])],
        value("x", &[-1, 1, 4, 4]),
        value("y", &[-1, 1, 4, 4]),
        13,
    );
    let err = import_onnx(&bytes, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("exceed the limit"), "{err}");
    // A file over the byte limit.
    let small = ImportOptions {
        max_bytes: 4,
        ..ImportOptions::default()
    };
    assert!(matches!(
        import_onnx(&good, &small),
        Err(ImportError::TooLarge { .. })
    ));
}

/// onnxruntime's float run of the hand-written model equals the imported graph (≤ 1e-4) on random
/// inputs. Runs where `QAT_PEERS_PYTHON` names the peers' Python (`cargo xtask test` sets it).
#[test]
fn imported_graph_equals_onnxruntime_float_run() {
    let Some(python) = std::env::var_os("QAT_PEERS_PYTHON") else {
        eprintln!("skipped: QAT_PEERS_PYTHON is not set (cargo xtask setup --print-peers-python)");
        return;
    };
    let (_, bytes) = torchish();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.onnx"), &bytes).unwrap();
    let n = 16;
    let nchw = vals(n * 128, 99)
        .iter()
        .map(|v| 3.0 * v)
        .collect::<Vec<f32>>();
    let raw: Vec<u8> = nchw.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("x.f32"), raw).unwrap();
    let script = "import sys, numpy as np, onnxruntime as ort\n\
d = sys.argv[1]\n\
x = np.fromfile(d + '/x.f32', dtype='<f4').reshape(16, 2, 8, 8)\n\
s = ort.InferenceSession(d + '/m.onnx', providers=['CPUExecutionProvider'])\n\
y = s.run(None, {'x': x})[0].astype('<f4')\n\
y.tofile(d + '/y.f32')\n";
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y: Vec<f32> = std::fs::read(dir.path().join("y.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let imp = import_onnx(&bytes, &ImportOptions::default()).unwrap();
    let got = run_nchw(&imp.graph, n, &nchw);
    let d = max_abs_diff(got.last().unwrap().iter(), y.iter());
    eprintln!(
        "imported graph vs onnxruntime f32: max |Δ| {d:e} over {} outputs",
        y.len()
    );
    assert!(d <= 1e-4, "max |Δ| {d}");
}
