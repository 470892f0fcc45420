//! QAT layers (paper §3, whitepaper arXiv 1806.08342 §3.2.2).
//!
//! Every layer runs in float mode (fake quant off) and QAT mode (fake quant on, the default); the
//! schedule flips the modes of a whole model through [`QatModel`] (or [`QatLayer::control`] with a
//! [`QatControl`] per layer). [`QatSequential`] chains single-input layers. Each layer
//! carries its own [`QuantConfig`] (bits, granularity, scheme, STE, observer, enable flags) and
//! exposes what export needs through [`QatLayer::export`] ([`LayerExport`]) — float weights, BN
//! statistics and ε, the folded weights/bias exactly as the eval forward uses them, activation,
//! observed output range and its qat-core parameters — so conversion never re-derives anything.
//!
//! | layer | paper | output range |
//! |---|---|---|
//! | [`QatConvBn2d`] | conv + BN folded with the σ_B/σ correction (whitepaper eq. 22–31), or PyTorch's variant | own (EMA) |
//! | [`QatConv2d`] | conv with bias, incl. depthwise (`groups`) | own |
//! | [`QatLinear`] | fully connected | own |
//! | [`QatAdd`], [`QatConcat`] | "quantize after bypass add/concat" (paper §3) | own |
//! | [`QatAvgPool2d`], [`QatGlobalAvgPool`] | average pooling (runtime requantizes) | own |
//! | [`QatMaxPool2d`] | max pooling | shares the input's |
//! | [`OutputQuantizer`] | stand-alone activation fake quant (e.g. the model input) | own |
//!
//! Forward order inside a layer (paper §2.4/§3): `FQ_w(weights after BN folding)` → conv/matmul →
//! bias → fused activation (None/ReLU/ReLU6) → observer → `FQ_a`.
//! Observers collect in training from the first step (TF: EMA runs during `quant_delay`); fake quant
//! starts when the schedule sends `QatControl::FakeQuant(true)`.

mod config;
mod conv;
mod conv_bn;
mod error;
mod export;
mod linear;
mod merge;
mod pool;
mod quantizer;
mod sequential;

pub use config::{
    ActRange, Activation, NO_DECAY_GROUP, QatControl, QuantConfig, QuantState, WeightGranularity,
    WeightRange,
};
pub use conv::{Conv2dConfig, QatConv2d};
pub use conv_bn::{BnFoldMode, ConvBnConfig, QatConvBn2d};
pub use error::LayerError;
pub use export::{
    BnExport, ConvExport, ExportTensor, LayerExport, LinearExport, MergeExport, OutputExport,
    PoolExport, PoolKind,
};
pub use linear::QatLinear;
pub use merge::{QatAdd, QatConcat};
pub use pool::{QatAvgPool2d, QatGlobalAvgPool, QatMaxPool2d};
pub use quantizer::{OutputQuantizer, WeightQuantizer};
pub use sequential::{QatModel, QatSequential};

use tch::Tensor;

/// What every QAT layer offers: a name, the whole-model switches, and its export view.
pub trait QatLayer: std::fmt::Debug {
    /// The layer's name (its VarStore path), used in errors and export.
    fn name(&self) -> &str;
    /// Applies a whole-model switch (layers ignore the ones that do not concern them).
    fn control(&mut self, c: QatControl);
    /// Everything export needs, read-only.
    fn export(&self) -> Result<LayerExport, LayerError>;
    /// The scale `S_in` of the grid this layer's input lies on (set by the model once activation
    /// ranges are frozen, `None` otherwise). Layers with a bias then fake-quantize it on the int32
    /// grid `S_in·S_w[c]` as the integer model does ([`WeightQuantizer::fake_quant_bias`]); others
    /// ignore it.
    fn set_input_scale(&mut self, _s_in: Option<f32>) {}
}

/// A single-input QAT layer.
pub trait QatModule: QatLayer {
    /// Forward pass; `train` selects batch statistics/observer updates as in `nn::ModuleT`.
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError>;
}

#[cfg(test)]
mod tests;
