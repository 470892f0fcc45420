//! The `Int8Model` graph: what qat-export writes and the executor runs.
//!
//! Tensors are activations only (weights live inside their op). Every activation tensor has a
//! per-sample shape — `[H, W, C]` (NHWC without the batch dimension) or `[C]` for flat features —
//! and, when it is `U8`, per-tensor affine parameters `r = S·(q − Z)` on `[0, 255]`.
//! The batch dimension is dynamic and supplied at run time.
//!
//! Weight layouts: conv `OHWI` = `[out_ch, kh, kw, in_ch / groups]`; fully connected `[out, in]`.
//! Depthwise conv is a `Conv2d` with `groups == in_ch == out_ch / multiplier`.

pub use qat_core::fixed_point::Rounding;
pub use qat_core::target::Target;
use qat_core::{QuantParams, fixed_point::QuantizedMultiplier};
use serde::{Deserialize, Serialize};

/// Deserializes a string through `deserialize_str` (for `#[serde(deserialize_with)]`): a
/// zero-copy decoder (bincode from a slice) hands out a slice of its input, so a length prefix is
/// checked against the bytes present before anything is allocated, where an owned `String` would
/// be preallocated at the claimed length. Other formats (JSON) work as for `String`.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct N(#[serde(deserialize_with = "qat_int8_runtime::model::borrowed_string")] String);
/// let mut bytes = vec![0xFC];                           // varint: a u32 length follows
/// bytes.extend_from_slice(&(1u32 << 30).to_le_bytes()); // 1 GiB claimed, 0 bytes present
/// let r = bincode::serde::decode_from_slice::<N, _>(&bytes, bincode::config::standard());
/// assert!(r.is_err());
/// ```
pub fn borrowed_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_str(V)
}

/// Index of a tensor in [`Int8Model::tensors`].
pub type TensorId = usize;

/// Element type of an activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// Real-valued (graph input before `Quantize`, output after `Dequantize`).
    F32,
    /// Quantized uint8 with per-tensor [`QuantParams`] on `[0, 255]`.
    U8,
}

/// One activation tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Human-readable name (the float graph's node name), used in errors and reports.
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    /// Per-sample shape: `[H, W, C]` or `[C]`.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Quantization parameters; `Some` exactly when `dtype == U8`.
    pub quant: Option<QuantParams>,
}

/// Quantized weights of a conv or fully-connected op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Weights {
    /// Symmetric int8 (zero point 0), narrow range `[−127, 127]` by default. `scales` has one entry
    /// (per tensor) or one per output channel.
    Int8 {
        /// Weight codes in the op's layout.
        data: Vec<i8>,
        /// `S_w`, length 1 or `out_ch`.
        scales: Vec<f32>,
    },
    /// The paper's asymmetric uint8 weights `r = S_w·(q − Z_w)` (§2.3 zero-point trick handles
    /// `Z_w ≠ 0`). `scales` and `zero_points` have one entry or one per output channel.
    Uint8 {
        /// Weight codes in the op's layout.
        data: Vec<u8>,
        /// `S_w`, length 1 or `out_ch`.
        scales: Vec<f32>,
        /// `Z_w`, same length as `scales`.
        zero_points: Vec<i32>,
    },
}

/// Fused activation, applied as the requantization clamp `[lo, hi] ⊆ [0, 255]` (paper §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clamp {
    /// Lowest code (ReLU/ReLU6: `Z_out`; none: 0).
    pub lo: u8,
    /// Highest code (ReLU6: `min(255, Z_out + round(6/S_out))`; otherwise 255).
    pub hi: u8,
}

/// 2-D convolution over NHWC uint8 input, with int32 bias and per-channel requantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input tensor `[H, W, C_in]`.
    pub input: TensorId,
    /// Output tensor `[H_out, W_out, C_out]`.
    pub output: TensorId,
    /// Weights in OHWI layout `[C_out, kh, kw, C_in / groups]`.
    pub weights: Weights,
    /// `[C_out, kh, kw, C_in / groups]`.
    pub weight_shape: [usize; 4],
    /// int32 bias, one per output channel, scale `S_in·S_w[c]`, zero point 0.
    pub bias: Vec<i32>,
    /// `[stride_h, stride_w]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`; padded positions hold the input zero point (real 0.0).
    pub padding: [usize; 4],
    /// `[dilation_h, dilation_w]`.
    pub dilation: [usize; 2],
    /// Groups; `groups == C_in` is depthwise.
    pub groups: usize,
    /// `M[c] = S_in·S_w[c]/S_out`, one per output channel (or one shared).
    pub multipliers: Vec<QuantizedMultiplier>,
    /// Fused activation clamp.
    pub clamp: Clamp,
}

/// Fully connected layer `[C_in] → [C_out]` (paper eq. 7–10), weights `[C_out, C_in]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullyConnected {
    /// Input tensor `[C_in]` (flatten first).
    pub input: TensorId,
    /// Output tensor `[C_out]`.
    pub output: TensorId,
    /// Weights `[C_out, C_in]`.
    pub weights: Weights,
    /// `[C_out, C_in]`.
    pub weight_shape: [usize; 2],
    /// int32 bias, scale `S_in·S_w[c]`.
    pub bias: Vec<i32>,
    /// Per output channel (or one shared).
    pub multipliers: Vec<QuantizedMultiplier>,
    /// Fused activation clamp.
    pub clamp: Clamp,
}

/// A 2-D pool's tensors and window: the fields of [`Op::AvgPool2d`] and [`Op::MaxPool2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Input `[H, W, C]`.
    pub input: TensorId,
    /// Output `[Ho, Wo, C]`.
    pub output: TensorId,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl Pool2d {
    /// The window alone (kernel, stride, padding).
    pub fn window(&self) -> PoolWindow {
        PoolWindow {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// One op of the graph. Ops are stored in topological order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// f32 → u8 with the output tensor's params.
    Quantize {
        /// F32 input.
        input: TensorId,
        /// U8 output.
        output: TensorId,
    },
    /// u8 → f32 with the input tensor's params.
    Dequantize {
        /// U8 input.
        input: TensorId,
        /// F32 output.
        output: TensorId,
    },
    /// Convolution (incl. depthwise).
    Conv2d(Conv2d),
    /// Fully connected.
    FullyConnected(FullyConnected),
    /// Elementwise add of two tensors with different scales, rescaled in fixed point as TFLite's
    /// integer add (the runtime derives the multipliers from the three tensors' params).
    Add {
        /// First input.
        a: TensorId,
        /// Second input.
        b: TensorId,
        /// Output.
        output: TensorId,
        /// Fused activation clamp.
        clamp: Clamp,
    },
    /// Concatenation along channels (last axis); each input is requantized to the output's params.
    Concat {
        /// Inputs, same spatial shape.
        inputs: Vec<TensorId>,
        /// Output.
        output: TensorId,
    },
    /// Average pooling; the output may have different params (requantized); padded cells are
    /// excluded from the average (TFLite).
    AvgPool2d(Pool2d),
    /// Global average pool `[H, W, C] → [C]`; the output may have different params (requantized).
    GlobalAvgPool {
        /// Input `[H, W, C]`.
        input: TensorId,
        /// Output `[C]`.
        output: TensorId,
    },
    /// Max pooling; input and output share params; padded cells are ignored.
    MaxPool2d(Pool2d),
    /// Reshape/flatten; same element count and params, data unchanged (NHWC order).
    Reshape {
        /// Input.
        input: TensorId,
        /// Output.
        output: TensorId,
    },
}

/// An integer-only model: tensors, ops in topological order, one input and one or more outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Model {
    /// Model name.
    #[serde(deserialize_with = "borrowed_string")]
    pub name: String,
    /// All activation tensors.
    pub tensors: Vec<TensorInfo>,
    /// Ops in execution order.
    pub ops: Vec<Op>,
    /// The graph input (normally F32, followed by a `Quantize` op).
    pub input: TensorId,
    /// Graph outputs.
    pub outputs: Vec<TensorId>,
    /// The deployment target whose arithmetic every integer op follows (qat-core's
    /// [`Target`]): the conv / fully-connected output stage ([`Target::requantize`], and
    /// `requantize_real` for `tflite`'s fully connected layers), the add (`AddStage`), the concat
    /// rescale (`RescaleStage`), the average pools (`AverageStage`) and the input's quantization
    /// ([`Target::quantize`]). The field keeps its historical name: files and code written when it
    /// was a [`Rounding`] still read (bincode variant 0 = `tflite` = old `Gemmlowp`, 1 = `qat` =
    /// old `Single`; a `Target` compares equal to its [`Rounding`]). Version-1 `.qat8` files
    /// predate the field and load as `tflite`.
    pub rounding: Target,
}

impl Op {
    /// A 2-D pool's tensors and window (`AvgPool2d` and `MaxPool2d`); `None` for every other op.
    ///
    /// ```
    /// use qat_int8_runtime::{Op, Pool2d};
    /// let p = Pool2d { input: 0, output: 1, kernel: [2, 2], stride: [2, 2], padding: [0; 4] };
    /// assert_eq!(Op::MaxPool2d(p).pool(), Some(&p));
    /// assert!(Op::Reshape { input: 0, output: 1 }.pool().is_none());
    /// ```
    pub fn pool(&self) -> Option<&Pool2d> {
        match self {
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => Some(p),
            _ => None,
        }
    }

    /// The op's kind as a static name (`"Conv2d"`, `"Add"`, …), used in errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Quantize { .. } => "Quantize",
            Op::Dequantize { .. } => "Dequantize",
            Op::Conv2d(_) => "Conv2d",
            Op::FullyConnected(_) => "FullyConnected",
            Op::Add { .. } => "Add",
            Op::Concat { .. } => "Concat",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::GlobalAvgPool { .. } => "GlobalAvgPool",
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::Reshape { .. } => "Reshape",
        }
    }

    /// The tensors this op reads, in order.
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            Op::Quantize { input, .. }
            | Op::Dequantize { input, .. }
            | Op::GlobalAvgPool { input, .. }
            | Op::Reshape { input, .. } => vec![*input],
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => vec![p.input],
            Op::Conv2d(c) => vec![c.input],
            Op::FullyConnected(f) => vec![f.input],
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Concat { inputs, .. } => inputs.clone(),
        }
    }

    /// The tensor this op writes.
    pub fn output(&self) -> TensorId {
        match self {
            Op::Quantize { output, .. }
            | Op::Dequantize { output, .. }
            | Op::Add { output, .. }
            | Op::Concat { output, .. }
            | Op::GlobalAvgPool { output, .. }
            | Op::Reshape { output, .. } => *output,
            Op::AvgPool2d(p) | Op::MaxPool2d(p) => p.output,
            Op::Conv2d(c) => c.output,
            Op::FullyConnected(f) => f.output,
        }
    }
}

/// The window of a 2-D pool ([`Pool2d::window`]) or of a convolution's receptive field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}
