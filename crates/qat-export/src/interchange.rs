//! What the interchange writers ([`crate::tflite`], [`crate::onnx`]) share: the typed refusal
//! [`ExportFormatError`], and the map from the runtime's tensors to the tensors of the written
//! file ([`Exported`], [`TensorMapping`]) that cross-checks use to compare codes.
//!
//! A writer either expresses the [`Int8Model`] *exactly* — the same
//! graph, the same parameters, every constant the file's runtime derives (multipliers from scales,
//! activation ranges) equal to ours — or refuses with an [`ExportFormatError`] naming the layer
//! and the reason. It never writes a silently different model. What it cannot control is the
//! runtime's arithmetic (how it rounds a requantization): that is the model's target, and the
//! cross-check ([`crate::crosscheck`]) measures it.

use qat_core::QuantParams;
use qat_int8_runtime::{
    Clamp, Conv2d, DType, FullyConnected, Int8Model, Op, Pool2d, TensorId, ValidationError,
};
use thiserror::Error;

/// An interchange format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TFLite flatbuffer (`.tflite`, file identifier `TFL3`), int8 activations.
    Tflite,
    /// ONNX protobuf (`.onnx`), QDQ form with uint8 activations, or the float model.
    Onnx,
}

impl Format {
    /// The conventional file extension (`tflite`, `onnx`).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Tflite => "tflite",
            Format::Onnx => "onnx",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Tflite => "TFLite",
            Format::Onnx => "ONNX",
        })
    }
}

/// Why a layer cannot be written exactly.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Unsupported {
    /// The model fails the runtime's validation.
    #[error("the model is invalid: {0}")]
    InvalidModel(String),
    /// Asymmetric uint8 weights where the format's integer kernels take symmetric int8.
    #[error(
        "asymmetric uint8 weights (the format's int8 kernels take symmetric int8 weights, zero point 0)"
    )]
    AsymmetricWeights,
    /// Per-channel uint8 weights whose zero points differ (onnxruntime's integer kernels take
    /// one weight zero point).
    #[error("uint8 weight zero points differ across channels ({first} and {other})")]
    MixedWeightZeroPoints {
        /// Zero point of channel 0.
        first: i32,
        /// A different zero point.
        other: i32,
    },
    /// A weight code of −128 (TFLite's int8 spec keeps weights in `[−127, 127]`).
    #[error("weight code −128 in output channel {channel} (TFLite's int8 weights are [−127, 127])")]
    WeightCodeOutOfRange {
        /// Output channel.
        channel: usize,
    },
    /// Per-channel weights on a fully connected layer, disabled by the writer's options.
    #[error("per-channel weights on a fully connected layer (disabled by the options)")]
    PerChannelFullyConnected,
    /// The multiplier the format's runtime derives from the written scales differs from the
    /// model's.
    #[error(
        "output channel {channel}: the runtime derives multiplier (M0 {theirs_m0}, shift {theirs_shift}) \
         from the scales, the model has (M0 {ours_m0}, shift {ours_shift})"
    )]
    Multiplier {
        /// Output channel.
        channel: usize,
        /// The model's `M0`.
        ours_m0: i32,
        /// The model's shift.
        ours_shift: i32,
        /// The format runtime's `M0`.
        theirs_m0: i32,
        /// The format runtime's shift.
        theirs_shift: i32,
    },
    /// Pooling padding the format computes differently.
    #[error(
        "padding {padding:?} is neither SAME nor VALID; the format's average pool counts a different window"
    )]
    PoolPadding {
        /// `[top, left, bottom, right]`.
        padding: [usize; 4],
    },
    /// An average pool whose output params differ from its input's.
    #[error(
        "average pool with output params (S {out_scale}, Z {out_zero_point}) different from its input's \
         (S {in_scale}, Z {in_zero_point}): the format's int8 pool averages codes and keeps the input's params"
    )]
    PoolRequantizes {
        /// `S_in`.
        in_scale: f32,
        /// `Z_in`.
        in_zero_point: i32,
        /// `S_out`.
        out_scale: f32,
        /// `Z_out`.
        out_zero_point: i32,
    },
    /// A shape or size the format cannot hold.
    #[error("{0}")]
    Shape(String),
}

/// A model or layer that cannot be written exactly in `format`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{format} export refused at layer '{layer}' ({op}): {reason}")]
pub struct ExportFormatError {
    /// The format.
    pub format: Format,
    /// The layer: the name of the op's output tensor (the float graph's node name), or the
    /// model's name for model-wide problems.
    pub layer: String,
    /// The op kind (`conv2d`, `fully_connected`, …) or `model`.
    pub op: &'static str,
    /// Why.
    pub reason: Unsupported,
}

impl ExportFormatError {
    /// The model failed validation.
    pub fn invalid(format: Format, model: &str, e: &ValidationError) -> Self {
        Self {
            format,
            layer: model.to_string(),
            op: "model",
            reason: Unsupported::InvalidModel(e.to_string()),
        }
    }
}

/// How a runtime tensor's per-sample shape is laid out in the file (batch first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// As in the runtime: `[N, H, W, C]` or `[N, C]`.
    Nhwc,
    /// A `[H, W, C]` tensor stored `[N, C, H, W]` (ONNX).
    Nchw,
}

/// The element type of a tensor in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CodeType {
    /// int8 codes (TFLite): file code = our uint8 code − 128.
    I8,
    /// uint8 codes (ONNX): file code = our code.
    U8,
    /// float32 (graph input and dequantized outputs).
    F32,
}

impl CodeType {
    /// `file code − our code`: −128 for int8, 0 otherwise.
    pub fn offset(self) -> i32 {
        match self {
            CodeType::I8 => -128,
            CodeType::U8 | CodeType::F32 => 0,
        }
    }

    /// `[min, max]` of the file's code type (`[−128, 127]` or `[0, 255]`).
    pub fn code_range(self) -> (i32, i32) {
        match self {
            CodeType::I8 => (-128, 127),
            CodeType::U8 | CodeType::F32 => (0, 255),
        }
    }
}

/// Where one runtime tensor went in the written file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorMapping {
    /// The runtime tensor ([`Int8Model::tensors`](qat_int8_runtime::Int8Model) index).
    pub tensor: TensorId,
    /// Its name in the file.
    pub name: String,
    /// Its layout in the file.
    pub layout: Layout,
    /// Its element type in the file.
    pub dtype: CodeType,
    /// Whether it is a graph output of the file.
    pub graph_output: bool,
}

/// A written model and its tensor map.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Every runtime tensor that has a counterpart in the file, in runtime order.
    pub tensors: Vec<TensorMapping>,
}

impl Exported {
    /// The mapping of runtime tensor `t`, if the file holds it.
    pub fn mapping(&self, t: TensorId) -> Option<&TensorMapping> {
        self.tensors.iter().find(|m| m.tensor == t)
    }
}

/// Where a writer is: the model, the format, and the layer (op output name and kind) that a
/// refusal names.
pub(crate) struct Site<'m> {
    pub(crate) model: &'m Int8Model,
    format: Format,
    pub(crate) layer: String,
    kind: &'static str,
}

impl<'m> Site<'m> {
    pub(crate) fn new(model: &'m Int8Model, format: Format) -> Self {
        Self {
            model,
            format,
            layer: String::new(),
            kind: "",
        }
    }

    /// Moves to `op` (its output tensor names the layer).
    pub(crate) fn enter(&mut self, op: &Op) {
        self.layer = self.model.tensors[op.output()].name.clone();
        self.kind = op.kind();
    }

    pub(crate) fn refuse(&self, reason: Unsupported) -> ExportFormatError {
        ExportFormatError {
            format: self.format,
            layer: self.layer.clone(),
            op: self.kind,
            reason,
        }
    }

    /// The params of a uint8 tensor of the (validated) model.
    pub(crate) fn params(&self, t: TensorId) -> QuantParams {
        self.model.tensors[t]
            .quant
            .unwrap_or_else(|| unreachable!("validated model: tensor {t} is U8"))
    }

    /// The graph outputs of the written file: the model's, and with `expose_all_tensors` every
    /// other uint8 tensor but the input.
    pub(crate) fn graph_outputs(&self, expose_all_tensors: bool) -> Vec<TensorId> {
        let m = self.model;
        let mut outputs = m.outputs.clone();
        if expose_all_tensors {
            let extra: Vec<TensorId> = (0..m.tensors.len())
                .filter(|&t| {
                    m.tensors[t].dtype == DType::U8 && !outputs.contains(&t) && t != m.input
                })
                .collect();
            outputs.extend(extra);
        }
        outputs
    }
}

/// What lowering one op gives: nothing, or the refusal.
pub(crate) type Lowered = Result<(), ExportFormatError>;

/// One writer's lowering of each kind of runtime op. [`lower_ops`] walks a model's ops, moves the
/// writer's [`Site`] to each one (so that a refusal names it) and calls the method of its kind: the
/// writers differ in what they emit per op, not in how they visit the model.
pub(crate) trait LowerOps<'m> {
    /// Where the writer is.
    fn site(&mut self) -> &mut Site<'m>;
    /// [`Op::Quantize`].
    fn quantize(&mut self, input: TensorId, output: TensorId) -> Lowered;
    /// [`Op::Dequantize`].
    fn dequantize(&mut self, input: TensorId, output: TensorId) -> Lowered;
    /// [`Op::Conv2d`].
    fn conv(&mut self, c: &Conv2d) -> Lowered;
    /// [`Op::FullyConnected`].
    fn fully_connected(&mut self, f: &FullyConnected) -> Lowered;
    /// [`Op::Add`].
    fn add(&mut self, a: TensorId, b: TensorId, output: TensorId, clamp: Clamp) -> Lowered;
    /// [`Op::Concat`].
    fn concat(&mut self, inputs: &[TensorId], output: TensorId) -> Lowered;
    /// [`Op::AvgPool2d`].
    fn avg_pool(&mut self, p: &Pool2d) -> Lowered;
    /// [`Op::GlobalAvgPool`].
    fn global_avg_pool(&mut self, input: TensorId, output: TensorId) -> Lowered;
    /// [`Op::MaxPool2d`].
    fn max_pool(&mut self, p: &Pool2d) -> Lowered;
    /// [`Op::Reshape`].
    fn reshape(&mut self, input: TensorId, output: TensorId) -> Lowered;
}

/// Lowers `ops` in order with `w`, stopping at the first refusal.
pub(crate) fn lower_ops<'m>(w: &mut impl LowerOps<'m>, ops: &[Op]) -> Lowered {
    for op in ops {
        w.site().enter(op);
        match op {
            Op::Quantize { input, output } => w.quantize(*input, *output),
            Op::Dequantize { input, output } => w.dequantize(*input, *output),
            Op::Conv2d(c) => w.conv(c),
            Op::FullyConnected(f) => w.fully_connected(f),
            &Op::Add {
                a,
                b,
                output,
                clamp,
            } => w.add(a, b, output, clamp),
            Op::Concat { inputs, output } => w.concat(inputs, *output),
            Op::AvgPool2d(p) => w.avg_pool(p),
            Op::GlobalAvgPool { input, output } => w.global_avg_pool(*input, *output),
            Op::MaxPool2d(p) => w.max_pool(p),
            Op::Reshape { input, output } => w.reshape(*input, *output),
        }?;
    }
    Ok(())
}

/// Unique, non-empty names for the values of a written graph (ONNX requires them; TFLite
/// tolerates duplicates, but reports and cross-checks address tensors by name).
#[derive(Debug, Default)]
pub(crate) struct Names(std::collections::HashSet<String>);

impl Names {
    /// `base` if unused, else `base_1`, `base_2`, …
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "t" } else { base };
        let mut name = base.to_string();
        let mut i = 0;
        while !self.0.insert(name.clone()) {
            i += 1;
            name = format!("{base}_{i}");
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_keep_the_first_spelling() {
        let mut n = Names::default();
        assert_eq!(n.fresh("conv"), "conv");
        assert_eq!(n.fresh("conv"), "conv_1");
        assert_eq!(n.fresh("conv"), "conv_2");
        assert_eq!(n.fresh(""), "t");
        assert_eq!(n.fresh("conv_1"), "conv_1_1");
    }

    #[test]
    fn refusal_names_format_layer_and_reason() {
        let e = ExportFormatError {
            format: Format::Tflite,
            layer: "fc".into(),
            op: "fully_connected",
            reason: Unsupported::PerChannelFullyConnected,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("TFLite export refused at layer 'fc' (fully_connected):"),
            "{s}"
        );
        assert_eq!(CodeType::I8.offset(), -128);
        assert_eq!(CodeType::U8.code_range(), (0, 255));
    }
}
