//! ONNX files exported by PyTorch from models that PyTorch defines (`data/torch-models`, made by
//! `xtask/py/make_torch_models.py`): a MobileNetV2 and a ResNet-18 in torchvision's layout and a
//! small CNN trained on MNIST, each at opset 13 (batch norms folded by the exporter) and opset 17
//! (`BatchNormalization` nodes kept).
//!
//! Each is imported (its op coverage printed), its float graph compared with onnxruntime's float
//! run on random inputs (max |Δ| ≤ 1e-4), quantized post-training at W8A8 per channel for the
//! `tflite`, `xnnpack` and `ort` targets, exported, and cross-checked in its target's runtime
//! (LiteRT's reference kernels, LiteRT's default XNNPACK delegate, onnxruntime): every tensor's
//! codes equal. The trained CNN keeps its MNIST accuracy after PTQ.
//!
//! The runtime checks need the peer runtimes (`QAT_PEERS_PYTHON`, set by `cargo xtask test`);
//! without it they print why they are skipped. `cargo test -p qat-export --test torch_models --
//! --nocapture` prints the figures.

mod common;
// Only part of the cross-check harness is used here (not its tallies).
#[allow(dead_code)]
#[path = "crosscheck/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use common::{rng, uniform};
use harness::{crosscheck, peers, random_model};
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use qat_core::Target;
use qat_export::ir::{FloatOp, WeightQuant, WeightScheme};
use qat_export::onnx::proto::ModelProto;
use qat_export::onnx::{ImportOptions, Imported, InputLayout, import_onnx_file};
use qat_export::{Format, PtqConfig, interp, ptq};
use qat_int8_runtime::Executor;

/// `(file stem, convs, linear layers, residual adds, [C, H, W])` of every model. The counts are
/// the architectures' (torchvision's MobileNetV2: 52 convs, 10 residual adds, and an 11th at
/// width 0.25, where the first block maps 8 channels to 8; ResNet-18: 20 convs with the 3
/// downsampling shortcuts, 8 adds).
const MODELS: [(&str, usize, usize, usize, [usize; 3]); 6] = [
    ("mnist_cnn-opset13", 3, 2, 0, [1, 28, 28]),
    ("mnist_cnn-opset17", 3, 2, 0, [1, 28, 28]),
    ("mobilenet_v2-opset13", 52, 1, 11, [3, 32, 32]),
    ("mobilenet_v2-opset17", 52, 1, 11, [3, 32, 32]),
    ("resnet18-opset13", 20, 1, 8, [3, 32, 32]),
    ("resnet18-opset17", 20, 1, 8, [3, 32, 32]),
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn model_path(stem: &str) -> PathBuf {
    data_dir().join("torch-models").join(format!("{stem}.onnx"))
}

fn import(stem: &str) -> Imported {
    import_onnx_file(model_path(stem), &ImportOptions::default())
        .unwrap_or_else(|e| panic!("{stem}: {e}"))
}

/// `[N, C, H, W]` → `[N, H, W, C]`.
fn to_nhwc(x: &ArrayD<f32>) -> ArrayD<f32> {
    x.view()
        .permuted_axes(IxDyn(&[0, 2, 3, 1]))
        .as_standard_layout()
        .to_owned()
}

#[test]
fn torch_models_import_with_every_layer() {
    for (stem, convs, linears, adds, [c, h, w]) in MODELS {
        let bytes = std::fs::read(model_path(stem)).unwrap();
        let proto = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = proto.graph.as_ref().unwrap();
        let mut ops = BTreeMap::<&str, usize>::new();
        for n in &graph.node {
            *ops.entry(n.op_type.as_deref().unwrap_or("?")).or_default() += 1;
        }
        let imp = import(stem);
        assert_eq!(imp.input_layout, InputLayout::Nchw, "{stem}");
        let shapes = imp.graph.validate().unwrap();
        assert_eq!(shapes[0], vec![h, w, c], "{stem}");
        let out = imp.graph.output_ids();
        assert_eq!(out.len(), 1, "{stem}");
        assert_eq!(shapes[out[0].0], vec![10], "{stem}");
        let (mut n_conv, mut n_bn, mut n_lin, mut n_add) = (0, 0, 0, 0);
        for node in &imp.graph.nodes {
            match &node.op {
                FloatOp::Conv2d(cv) => {
                    n_conv += 1;
                    n_bn += cv.batch_norm.is_some() as usize;
                }
                FloatOp::Linear(_) => n_lin += 1,
                FloatOp::Add { .. } => n_add += 1,
                _ => {}
            }
        }
        assert_eq!(
            (n_conv, n_lin, n_add),
            (convs, linears, adds),
            "{stem}: convs, linear layers, adds"
        );
        // The opset-17 files keep every batch norm as a node: each lands on its conv (every conv
        // has one but the MNIST CNN's 1×1 conv).
        let bn_nodes = ops.get("BatchNormalization").copied().unwrap_or(0);
        assert_eq!(n_bn, bn_nodes, "{stem}: batch norms carried by convs");
        if stem.ends_with("opset17") {
            assert!(bn_nodes >= convs - 1, "{stem}: {bn_nodes} batch norms");
        }
        eprintln!(
            "{stem}: ONNX ops {ops:?} → {n_conv} convs ({n_bn} with batch norm), {n_lin} linear, {n_add} adds, {} nodes",
            imp.graph.nodes.len()
        );
    }
}

/// onnxruntime's f32 run of every file against the imported graph in qat's float interpreter,
/// on 8 random NCHW inputs in [−2, 2).
#[test]
fn torch_models_equal_onnxruntime_float_run() {
    let Some((python, _)) = peers("torch_models_equal_onnxruntime_float_run") else {
        return;
    };
    let n = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (i, (stem, .., [c, h, w])) in MODELS.iter().enumerate() {
        let x = uniform(&mut rng(100 + i as u64), n * c * h * w, -2.0, 2.0);
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join(format!("{stem}.x")), raw).unwrap();
        inputs.push(ArrayD::from_shape_vec(IxDyn(&[n, *c, *h, *w]), x).unwrap());
    }
    let script = r#"import sys, numpy as np, onnxruntime as ort
d, n, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for a in sys.argv[4:]:
    stem, shape = a.split(':')
    x = np.fromfile(f'{d}/{stem}.x', dtype='<f4').reshape([n] + [int(v) for v in shape.split(',')])
    s = ort.InferenceSession(f'{src}/{stem}.onnx', providers=['CPUExecutionProvider'])
    s.run(None, {s.get_inputs()[0].name: x})[0].astype('<f4').tofile(f'{d}/{stem}.y')
"#;
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", script])
        .arg(dir.path())
        .arg(n.to_string())
        .arg(data_dir().join("torch-models"));
    for (stem, .., [c, h, w]) in MODELS {
        cmd.arg(format!("{stem}:{c},{h},{w}"));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ((stem, ..), x) in MODELS.iter().zip(&inputs) {
        let want: Vec<f32> = std::fs::read(dir.path().join(format!("{stem}.y")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let imp = import(stem);
        let got = interp::run(&imp.graph, to_nhwc(x).view(), None).unwrap();
        let got = got.last().unwrap();
        assert_eq!(got.len(), want.len(), "{stem}");
        let (d, scale) = got.iter().zip(&want).fold((0f32, 0f32), |(d, s), (a, b)| {
            (d.max((a - b).abs()), s.max(b.abs()))
        });
        eprintln!(
            "{stem}: imported graph vs onnxruntime f32: max |Δ| {d:.2e} (max |y| {scale:.2}) over {} logits",
            want.len()
        );
        assert!(d <= 1e-4, "{stem}: max |Δ| {d}");
    }
}

/// Every file quantized post-training (W8A8, weights per channel) for `tflite`, `xnnpack` and
/// `ort`, exported, and run in that target's runtime on inputs on the input grid: every tensor
/// the runtime exposes has our runtime's codes.
#[test]
fn torch_models_ptq_exports_equal_their_targets_runtimes() {
    let Some(peers) = peers("torch_models_ptq_exports_equal_their_targets_runtimes") else {
        return;
    };
    let cases = [
        (Target::Tflite, Format::Tflite, "litert_ref"),
        (Target::Xnnpack, Format::Tflite, "litert_xnnpack"),
        (Target::Ort, Format::Onnx, "onnxruntime"),
    ];
    for (i, (stem, ..)) in MODELS.iter().enumerate() {
        let imp = import(stem);
        for (target, format, runtime) in cases {
            let (mut model, x) = random_model(&imp.graph, i as u64, 8, target, false)
                .unwrap_or_else(|e| panic!("{stem} for {target}: {e}"));
            model.name = format!("{stem}-w8a8");
            let res = crosscheck(&model, &x, format, &peers);
            let r = &res.runtimes[runtime];
            let mut elements = 0;
            for (name, t) in &r.tensors {
                assert_eq!(
                    t.equal,
                    Some(1.0),
                    "{stem} ({target}): tensor {name} in {runtime}: {t:?}"
                );
                elements += t.elements.unwrap_or(0);
            }
            assert!(
                r.tensors.len() >= model.ops.len() / 2,
                "{stem}: {runtime} exposed {} tensors for {} ops",
                r.tensors.len(),
                model.ops.len()
            );
            eprintln!(
                "{stem} → {} for {target}: {} tensors ({elements} codes) equal in {runtime}",
                format.extension(),
                r.tensors.len()
            );
        }
    }
}

/// An IDX file (optionally gzipped) without its `header` bytes.
fn read_idx(name: &str, header: usize) -> Vec<u8> {
    let path = data_dir().join("mnist-10k").join(name);
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes.split_off(header)
}

/// The trained CNN, imported, classifies the MNIST test split as PyTorch does (92.75 % top-1 in
/// `make_torch_models.py`; the float interpreter may flip a borderline image), and PTQ W8A8 per
/// channel calibrated on 256 training images loses at most half a point.
#[test]
fn trained_mnist_cnn_keeps_its_accuracy_after_ptq() {
    let norm = |p: &u8| (f32::from(*p) / 255.0 - 0.1307) / 0.3081;
    let images = read_idx("t10k-images-idx3-ubyte.gz", 16);
    let labels = read_idx("t10k-labels-idx1-ubyte.gz", 8);
    let n = labels.len();
    let x =
        ArrayD::from_shape_vec(IxDyn(&[n, 28, 28, 1]), images.iter().map(norm).collect()).unwrap();
    let train = read_idx("train-images-idx3-ubyte.gz", 16);
    let cal = ArrayD::from_shape_vec(
        IxDyn(&[256, 28, 28, 1]),
        train[..256 * 784].iter().map(norm).collect(),
    )
    .unwrap();
    let top1 = |y: &ArrayD<f32>| {
        let y = y.view().into_dimensionality::<ndarray::Ix2>().unwrap();
        y.rows()
            .into_iter()
            .zip(&labels)
            .filter(|(row, l)| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    );
                best.0 == usize::from(**l)
            })
            .count() as f64
            / n as f64
    };
    for stem in ["mnist_cnn-opset13", "mnist_cnn-opset17"] {
        let imp = import(stem);
        let float = top1(
            interp::run(&imp.graph, x.view(), None)
                .unwrap()
                .last()
                .unwrap(),
        );
        let cfg = PtqConfig {
            weight_quant: Some(WeightQuant {
                scheme: WeightScheme::SymmetricPerChannel,
                bits: 8,
            }),
            activation_bits: Some(8),
            ..PtqConfig::default()
        };
        let plan = ptq(&imp.graph, [cal.view()], &cfg).unwrap();
        let model = plan.to_int8_model().unwrap();
        let int8 = Executor::new(&model).unwrap().run(x.view()).unwrap();
        let int8 = top1(&int8[0]);
        eprintln!(
            "{stem}: MNIST test top-1 float {:.2} %, PTQ W8A8 per channel {:.2} % ({n} images)",
            100.0 * float,
            100.0 * int8
        );
        assert!((float - 0.9275).abs() <= 0.002, "{stem}: float {float}");
        assert!(int8 >= float - 0.005, "{stem}: PTQ {int8} vs float {float}");
    }
}
