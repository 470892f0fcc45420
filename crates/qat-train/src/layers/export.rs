//! The read-only view of a trained layer that conversion (qat-train `convert`, then qat-export)
//! consumes. Plain data (serde), no tensors: it is a snapshot.

use qat_autograd::TensorQParams;
use qat_autograd::host_read;
use qat_core::QuantParams;
use serde::{Deserialize, Serialize};
use tch::{Kind, TchError, Tensor};

use super::{Activation, BnFoldMode, WeightGranularity, WeightRange};
use crate::observer::QuantScheme;

/// A dense f32 tensor: shape and row-major (C-order) data, in the layer's tch layout
/// (conv weights `OIHW`, linear weights `[out, in]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Data, row-major.
    pub data: Vec<f32>,
}

impl ExportTensor {
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Self, TchError> {
        let t = t.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let data = host_read::vec_f32(&t, "export tensor")?;
        Ok(Self { shape, data })
    }
}

pub(crate) fn vec_of(t: &Tensor) -> Result<Vec<f32>, TchError> {
    host_read::vec_f32(t, "export values")
}

/// Batch-norm parameters and statistics of a conv+BN layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BnExport {
    /// γ per channel.
    pub gamma: Vec<f32>,
    /// β per channel.
    pub beta: Vec<f32>,
    /// Moving mean μ.
    pub mean: Vec<f32>,
    /// Moving variance σ² (unbiased batch variances averaged, PyTorch convention).
    pub var: Vec<f32>,
    /// ε in `σ = √(var + ε)`.
    pub eps: f64,
    /// Whether the statistics are frozen (moving averages used, not updated).
    pub frozen: bool,
    /// Which folding the layer trained with.
    pub fold_mode: BnFoldMode,
}

/// The output (activation) quantizer of a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputExport {
    /// Name of the observer (VarStore path).
    pub name: String,
    /// Whether the layer fake-quantizes its output (config flag).
    pub enabled: bool,
    /// Bit width, grid `[0, 2^b − 1]`.
    pub bits: u32,
    /// The range the parameters come from (observed, or `[0, α]` for PACT); `None` while
    /// uncalibrated.
    pub range: Option<(f32, f32)>,
    /// qat-core's parameters for `range` (exactly what QAT's fake quant uses); `None` while
    /// uncalibrated.
    pub qparams: Option<QuantParams>,
    /// Whether the observer is frozen.
    pub observer_frozen: bool,
    /// Whether the range is learned (PACT) rather than observed.
    pub learned: bool,
}

/// How a layer's weights are quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightExport {
    /// Parameters of the final weights the eval forward quantizes (for conv+BN the folded ones):
    /// their own min/max, as export recomputes them, or the learned LSQ scales.
    pub qparams: TensorQParams,
    /// Bit width.
    pub bits: u32,
    /// Grid scheme.
    pub scheme: QuantScheme,
    /// Granularity.
    pub granularity: WeightGranularity,
    /// Whether the weights are fake-quantized in QAT (config flag).
    pub enabled: bool,
    /// How QAT obtained the range (min/max, or learned LSQ scales).
    pub range: WeightRange,
}

/// A conv layer (plain, depthwise, or conv+BN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvExport {
    /// Layer name.
    pub name: String,
    /// Float weights as trained (`OIHW`, `[C, 1, kh, kw]` for depthwise), not folded.
    pub weight: ExportTensor,
    /// Conv bias, if the conv has one.
    pub bias: Option<Vec<f32>>,
    /// BN parameters/statistics for conv+BN layers.
    pub bn: Option<BnExport>,
    /// The weights the eval forward fake-quantizes: `γ·W/σ` with moving σ for conv+BN
    /// (whitepaper eq. for inference folding), `W` otherwise.
    pub folded_weight: ExportTensor,
    /// The bias the eval forward adds: `β − γ·μ/σ` (+ `γ·b/σ`) for conv+BN, `b` (or zeros) otherwise.
    pub folded_bias: Vec<f32>,
    /// Quantization of `folded_weight`.
    pub weight_quant: WeightExport,
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Symmetric zero padding `[h, w]`.
    pub padding: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Groups (= channels for depthwise).
    pub groups: usize,
    /// Fused activation.
    pub activation: Activation,
    /// Output quantizer.
    pub output: OutputExport,
}

/// A fully connected layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearExport {
    /// Layer name.
    pub name: String,
    /// Float weights `[out, in]`.
    pub weight: ExportTensor,
    /// Bias `[out]`.
    pub bias: Vec<f32>,
    /// Quantization of `weight`.
    pub weight_quant: WeightExport,
    /// Fused activation.
    pub activation: Activation,
    /// Output quantizer.
    pub output: OutputExport,
}

/// An elementwise add or a channel concat, with its own output range (paper §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeExport {
    /// Layer name.
    pub name: String,
    /// Number of inputs.
    pub inputs: usize,
    /// Fused activation (add only; `None` for concat).
    pub activation: Activation,
    /// Output quantizer.
    pub output: OutputExport,
}

/// Pooling kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolKind {
    /// Max pooling (output shares the input's parameters).
    Max,
    /// Average pooling (own output range; the runtime requantizes).
    Avg,
    /// Global average pooling `[N, C, H, W] → [N, C]` (own output range).
    GlobalAvg,
}

/// A pooling layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolExport {
    /// Layer name.
    pub name: String,
    /// Kind.
    pub kind: PoolKind,
    /// Kernel `[h, w]` (zeros for global).
    pub kernel: [usize; 2],
    /// Stride `[h, w]` (zeros for global).
    pub stride: [usize; 2],
    /// Symmetric padding `[h, w]`; padded cells are excluded from averages and maxima.
    pub padding: [usize; 2],
    /// Output quantizer (`None` for max pooling).
    pub output: Option<OutputExport>,
}

/// The export view of any layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LayerExport {
    /// Conv, depthwise conv, conv+BN (boxed: it is by far the largest variant).
    Conv(Box<ConvExport>),
    /// Fully connected.
    Linear(LinearExport),
    /// Elementwise add.
    Add(MergeExport),
    /// Channel concat.
    Concat(MergeExport),
    /// Pooling.
    Pool(PoolExport),
    /// A stand-alone output quantizer (e.g. the model input's).
    Quantize(OutputExport),
}
