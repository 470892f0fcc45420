//! The `.tflite` and ONNX writers without the runtimes: what they write (read back with the
//! generated schema code) and what they refuse, by layer and reason.

mod common;

use common::{GenOptions, batch, one_op_model, random_cnn, rng};
use prost::Message;
use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::{QuantParams, QuantRange};
use qat_export::onnx::proto::ModelProto;
use qat_export::onnx::{OnnxOptions, float_to_onnx, to_onnx_qdq};
use qat_export::tflite::schema::{ActivationFunctionType, BuiltinOperator, BuiltinOptions};
use qat_export::tflite::{TfliteOptions, read, to_tflite};
use qat_export::{ExportFormatError, Format, PtqConfig, Unsupported, ptq};
use qat_int8_runtime::{Clamp, Conv2d, FullyConnected, Int8Model, Op, Pool2d, Weights};

fn params(scale: f32, zp: i32, bits: u32) -> QuantParams {
    QuantParams::new(scale, zp, QuantRange::unsigned(bits).unwrap()).unwrap()
}

/// x[C_in] → quantize → fully connected (`weights`, clamp) → dequantize → y.
fn fc_model(weights: Weights, cout: usize, cin: usize, qo: QuantParams, clamp: Clamp) -> Int8Model {
    let qi = params(0.02, 128, 8);
    let scales = match &weights {
        Weights::Int8 { scales, .. } | Weights::Uint8 { scales, .. } => scales.clone(),
    };
    let multipliers = scales
        .iter()
        .map(|&s| {
            QuantizedMultiplier::from_f64(qi.scale() as f64 * s as f64 / qo.scale() as f64).unwrap()
        })
        .collect();
    let fc = Op::FullyConnected(FullyConnected {
        input: 1,
        output: 2,
        weights,
        weight_shape: [cout, cin],
        bias: vec![10; cout],
        multipliers,
        clamp,
    });
    one_op_model(fc, &[cin], qi, "fc", &[cout], qo)
}

fn int8(data: Vec<i8>, scales: Vec<f32>) -> Weights {
    Weights::Int8 { data, scales }
}

const FULL: Clamp = Clamp { lo: 0, hi: 255 };

fn refusal(e: ExportFormatError) -> (Format, String, Unsupported) {
    (e.format, e.layer, e.reason)
}

#[test]
fn asymmetric_and_out_of_range_weights_are_refused_naming_the_layer() {
    let uint8 = Weights::Uint8 {
        data: vec![1, 2, 3, 4],
        scales: vec![0.1],
        zero_points: vec![2],
    };
    let m = fc_model(uint8, 2, 2, params(0.05, 10, 8), FULL);
    let e = to_tflite(&m, &TfliteOptions::default()).unwrap_err();
    assert_eq!(
        refusal(e),
        (Format::Tflite, "fc".into(), Unsupported::AsymmetricWeights)
    );
    // ONNX takes one uint8 zero point, not several.
    let mixed = Weights::Uint8 {
        data: vec![1, 2, 3, 4],
        scales: vec![0.1, 0.2],
        zero_points: vec![2, 3],
    };
    let m = fc_model(mixed, 2, 2, params(0.05, 10, 8), FULL);
    let e = to_onnx_qdq(&m, &OnnxOptions::default()).unwrap_err();
    assert_eq!(
        e.reason,
        Unsupported::MixedWeightZeroPoints { first: 2, other: 3 }
    );
    let m = fc_model(
        int8(vec![5, -128, 3, 4], vec![0.1]),
        2,
        2,
        params(0.05, 10, 8),
        FULL,
    );
    let e = to_tflite(&m, &TfliteOptions::default()).unwrap_err();
    assert_eq!(e.reason, Unsupported::WeightCodeOutOfRange { channel: 0 });
    assert!(e.to_string().contains("'fc'"), "{e}");
}

#[test]
fn per_channel_fully_connected_is_written_per_axis_or_refused_by_option() {
    let m = fc_model(
        int8(vec![5, -7, 3, 4], vec![0.1, 0.05]),
        2,
        2,
        params(0.05, 10, 8),
        FULL,
    );
    let file = to_tflite(&m, &TfliteOptions::default()).unwrap();
    let model = read(&file.bytes).unwrap();
    let g = &model.subgraphs.unwrap()[0];
    let tensors = g.tensors.as_ref().unwrap();
    let w = tensors
        .iter()
        .find(|t| t.name.as_deref() == Some("fc/weights"))
        .unwrap();
    let q = w.quantization.as_ref().unwrap();
    assert_eq!(q.scale.as_deref(), Some(&[0.1f32, 0.05][..]));
    assert_eq!(
        (q.zero_point.as_deref(), q.quantized_dimension),
        (Some(&[0i64, 0][..]), 0)
    );
    let opts = TfliteOptions {
        per_channel_fully_connected: false,
        ..TfliteOptions::default()
    };
    assert_eq!(
        to_tflite(&m, &opts).unwrap_err().reason,
        Unsupported::PerChannelFullyConnected
    );
}

#[test]
fn a_multiplier_tflite_would_derive_differently_is_refused() {
    let mut m = fc_model(
        int8(vec![5, -7, 3, 4], vec![0.1, 0.05]),
        2,
        2,
        params(0.05, 10, 8),
        FULL,
    );
    let Op::FullyConnected(f) = &mut m.ops[1] else {
        unreachable!()
    };
    let theirs = f.multipliers[1];
    f.multipliers[1] =
        QuantizedMultiplier::from_parts(theirs.multiplier() + 1, theirs.shift()).unwrap();
    let e = to_tflite(&m, &TfliteOptions::default()).unwrap_err();
    assert_eq!(
        e.reason,
        Unsupported::Multiplier {
            channel: 1,
            ours_m0: theirs.multiplier() + 1,
            ours_shift: theirs.shift(),
            theirs_m0: theirs.multiplier(),
            theirs_shift: theirs.shift(),
        }
    );
}

/// x[5, 5, 1] → quantize → average pool 2×2 → dequantize.
fn pool_model(padding: [usize; 4], stride: usize, qo: QuantParams, out_hw: usize) -> Int8Model {
    let pool = Op::AvgPool2d(Pool2d {
        input: 1,
        output: 2,
        kernel: [2, 2],
        stride: [stride, stride],
        padding,
    });
    one_op_model(
        pool,
        &[5, 5, 1],
        params(0.1, 0, 8),
        "avg",
        &[out_hw, out_hw, 1],
        qo,
    )
}

#[test]
fn average_pools_tflite_computes_differently_are_refused() {
    let q = params(0.1, 0, 8);
    // 5 → 3 with stride 2 and one trailing pad: TFLite SAME (pads 0 before, 1 after).
    assert!(
        to_tflite(
            &pool_model([0, 0, 1, 1], 2, q, 3),
            &TfliteOptions::default()
        )
        .is_ok()
    );
    // one leading pad: neither SAME nor VALID.
    let e = to_tflite(
        &pool_model([1, 1, 0, 0], 2, q, 3),
        &TfliteOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        refusal(e),
        (
            Format::Tflite,
            "avg".into(),
            Unsupported::PoolPadding {
                padding: [1, 1, 0, 0]
            }
        )
    );
    // own output params
    let e = to_tflite(
        &pool_model([0; 4], 1, params(0.2, 3, 8), 4),
        &TfliteOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e.reason,
            Unsupported::PoolRequantizes {
                out_zero_point: 3,
                ..
            }
        ),
        "{e}"
    );
    // ONNX expresses both (explicit pads, QuantizeLinear to the output's params).
    assert!(to_onnx_qdq(&pool_model([1, 1, 0, 0], 2, q, 3), &OnnxOptions::default()).is_ok());
}

fn ops_of(bytes: &[u8]) -> Vec<(BuiltinOperator, i32, Option<BuiltinOptions>)> {
    let m = read(bytes).unwrap();
    let codes = m.operator_codes.unwrap();
    m.subgraphs.unwrap()[0]
        .operators
        .clone()
        .unwrap()
        .into_iter()
        .map(|op| {
            let c = &codes[op.opcode_index as usize];
            (c.builtin_code, c.version, op.builtin_options)
        })
        .collect()
}

#[test]
fn clamps_become_fused_activations_or_min_max_ops() {
    let w = || int8(vec![5, -7, 3, 4], vec![0.1]);
    // ReLU on Z = 10 (int8 −118): fused RELU, nothing else.
    let m = fc_model(w(), 2, 2, params(0.05, 10, 8), Clamp { lo: 10, hi: 255 });
    let ops = ops_of(&to_tflite(&m, &TfliteOptions::default()).unwrap().bytes);
    let Some(BuiltinOptions::FullyConnectedOptions(o)) = &ops[1].2 else {
        panic!("{ops:?}")
    };
    assert_eq!((ops[1].0, ops[1].1), (BuiltinOperator::FullyConnected, 4));
    assert_eq!(o.fused_activation_function, ActivationFunctionType::Relu);
    assert_eq!(ops.len(), 3);
    // a 4-bit grid [0, 15] without activation: NONE plus MINIMUM(·, −113), after QUANTIZE too.
    let m = fc_model(w(), 2, 2, params(0.5, 3, 4), Clamp { lo: 0, hi: 15 });
    let ops: Vec<_> = ops_of(&to_tflite(&m, &TfliteOptions::default()).unwrap().bytes)
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(
        ops,
        [
            BuiltinOperator::Quantize,
            BuiltinOperator::FullyConnected,
            BuiltinOperator::Minimum,
            BuiltinOperator::Dequantize
        ]
    );
    // ONNX: a Clip of the codes after QuantizeLinear.
    let onnx = ModelProto::decode(
        to_onnx_qdq(&m, &OnnxOptions::default())
            .unwrap()
            .bytes
            .as_slice(),
    )
    .unwrap();
    let types: Vec<String> = onnx
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.clone().unwrap())
        .collect();
    assert!(
        types.windows(2).any(|w| w == ["QuantizeLinear", "Clip"]),
        "{types:?}"
    );
}

/// x → quantize → conv 3×3 stride 2 pad 1 (PyTorch style) on an 8×8 input → dequantize.
#[test]
fn pytorch_style_strided_padding_gets_an_explicit_pad() {
    let q = params(0.1, 7, 8);
    let conv = Op::Conv2d(Conv2d {
        input: 1,
        output: 2,
        weights: int8(
            (0..54).map(|i| (i % 11) as i8 - 5).collect(),
            vec![0.01, 0.02, 0.03],
        ),
        weight_shape: [3, 3, 3, 2],
        bias: vec![0, 5, -5],
        stride: [2, 2],
        padding: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
        multipliers: [0.01f32, 0.02, 0.03]
            .iter()
            .map(|&s| {
                QuantizedMultiplier::from_f64(0.1f32 as f64 * s as f64 / 0.1f32 as f64).unwrap()
            })
            .collect(),
        clamp: FULL,
    });
    let m = one_op_model(conv, &[8, 8, 2], q, "conv", &[4, 4, 3], q);
    let ops = ops_of(&to_tflite(&m, &TfliteOptions::default()).unwrap().bytes);
    let kinds: Vec<_> = ops.iter().map(|o| o.0).collect();
    assert_eq!(
        kinds,
        [
            BuiltinOperator::Quantize,
            BuiltinOperator::Pad,
            BuiltinOperator::Conv2d,
            BuiltinOperator::Dequantize
        ]
    );
    let Some(BuiltinOptions::Conv2DOptions(o)) = &ops[2].2 else {
        panic!()
    };
    assert_eq!((o.stride_h, o.stride_w, ops[2].1), (2, 2, 3));
}

#[test]
fn random_models_export_with_a_complete_tensor_map() {
    for seed in 0..6 {
        let g = random_cnn(seed, &GenOptions::default());
        let shape = g.validate().unwrap()[0].clone();
        let r = &mut rng(seed);
        let plan = ptq(&g, [batch(r, 4, &shape).view()], &PtqConfig::default()).unwrap();
        let m = plan.to_int8_model().unwrap();
        let onnx = to_onnx_qdq(&m, &OnnxOptions::default()).unwrap();
        assert_eq!(
            onnx.tensors.len(),
            m.tensors.len(),
            "seed {seed}: every tensor is in the ONNX graph"
        );
        let decoded = ModelProto::decode(onnx.bytes.as_slice()).unwrap();
        assert_eq!(decoded.opset_import[0].version, Some(13));
        if let Ok(t) = to_tflite(&m, &TfliteOptions::default()) {
            assert_eq!(&t.bytes[4..8], b"TFL3");
            assert_eq!(t.tensors.len(), m.tensors.len(), "seed {seed}");
            let names: std::collections::HashSet<_> = t.tensors.iter().map(|m| &m.name).collect();
            assert_eq!(
                names.len(),
                t.tensors.len(),
                "seed {seed}: names are unique"
            );
        }
        let f = float_to_onnx(&g).unwrap();
        let decoded = ModelProto::decode(f.bytes.as_slice()).unwrap();
        assert_eq!(
            decoded.graph.unwrap().input[0].name.as_deref(),
            Some(f.input.as_str())
        );
    }
}
