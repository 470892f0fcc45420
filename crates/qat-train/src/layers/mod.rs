//! QAT layers (paper §3, whitepaper arXiv 1806.08342 §3.2.2).
//!
//! Every layer runs in float mode (fake quant off) and QAT mode (fake quant on, the default). Each
//! layer is built around one [`QuantHarness`]: its [`QuantConfig`] (bits, granularity, scheme,
//! STE, observer, enable flags), its [`WeightQuantizer`] and [`OutputQuantizer`], the run-time
//! [`QuantState`] and the scale of its input grid. The switches reach a layer through
//! [`QatLayer::control`] ([`QatControl`]); a model sends those of a schedule phase to all its
//! layers ([`crate::schedule::PhaseControl`], implemented by [`crate::models::Net`]). Each layer
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
//! | [`QatQuantize`] | stand-alone activation fake quant (the model input) | own |
//!
//! Forward order inside a layer (paper §2.4/§3): `FQ_w(weights after BN folding)` → conv/matmul →
//! bias → fused activation (None/ReLU/ReLU6) → observer → `FQ_a`.
//! Observers collect in training from the first step (TF: EMA runs during `quant_delay`); fake quant
//! starts when the schedule switches it on ([`QatControl::FakeQuant`], weights and activations
//! separately).

/// The [`QatLayer::harness`] and [`QatLayer::harness_mut`] of a layer whose harness is its field
/// `harness`.
macro_rules! harness_field {
    () => {
        fn harness(&self) -> &QuantHarness {
            &self.harness
        }

        fn harness_mut(&mut self) -> &mut QuantHarness {
            &mut self.harness
        }
    };
}

mod config;
mod conv;
mod conv_bn;
mod error;
mod export;
mod harness;
mod linear;
mod merge;
mod output_quantizer;
mod pool;
mod quantize;
mod target_stage;
mod weight_quantizer;

pub use config::{
    ActRange, NO_DECAY_GROUP, QatControl, QuantConfig, QuantState, WeightGranularity, WeightRange,
};
pub use conv::{Conv2dConfig, QatConv2d};
pub use conv_bn::{BnFoldMode, ConvBnConfig, QatConvBn2d};
pub use error::{LayerError, LayerErrorKind};
pub use export::{
    BnExport, ConvExport, ExportTensor, LayerExport, LinearExport, MergeExport, OutputExport,
    PoolExport, PoolKind, WeightExport,
};
pub use harness::QuantHarness;
pub use linear::{LinearConfig, QatLinear};
pub use merge::{QatAdd, QatConcat};
pub use output_quantizer::OutputQuantizer;
pub use pool::{Pool2dConfig, QatAvgPool2d, QatGlobalAvgPool, QatMaxPool2d};
/// The activation fused into a layer (None, ReLU, ReLU6), applied before the output fake quant
/// (paper §2.4, §3): qat-export's IR type, so a layer's activation is the exported node's.
pub use qat_export::ir::Activation;
pub use quantize::QatQuantize;
pub use weight_quantizer::WeightQuantizer;

use tch::Tensor;

/// What every QAT layer offers: its quantization harness, through which it takes the run-time
/// switches, and its export view. The switches are implemented once, by [`QuantHarness`]; a
/// layer with state of its own beyond it (conv+BN: the BN freeze) extends [`QatLayer::control`].
pub trait QatLayer: std::fmt::Debug {
    /// The layer's quantizers and switches.
    fn harness(&self) -> &QuantHarness;
    /// The layer's quantizers and switches, mutably.
    fn harness_mut(&mut self) -> &mut QuantHarness;
    /// Everything export needs, read-only.
    fn export(&self) -> Result<LayerExport, LayerError>;

    /// The layer's name (its VarStore path), used in errors and export.
    fn name(&self) -> &str {
        self.harness().name()
    }

    /// Applies a switch (layers ignore the ones that do not concern them).
    fn control(&mut self, c: QatControl) {
        self.harness_mut().control(c);
    }

    /// Sets the scale `S_in` of the grid this layer's input lies on (set by the model once
    /// activation ranges are frozen, `None` otherwise). Layers with a bias then fake-quantize it on
    /// the int32 grid `S_in·S_w[c]` as the integer model does
    /// ([`WeightQuantizer::fake_quant_bias`]); others ignore it.
    fn set_input_scale(&mut self, s_in: Option<f32>) {
        self.harness_mut().set_input_scale(s_in);
    }

    /// Sets the parameters (scale and zero point) of the grid this layer's input lies on, as
    /// [`QatLayer::set_input_scale`] does the scale; average pools tied to their input's parameters
    /// for a target ([`QuantConfig::target`]) fake-quantize on them.
    fn set_input_params(&mut self, p: Option<qat_core::QuantParams>) {
        self.harness_mut().set_input_params(p);
    }

    /// The layer's own output quantizer (`None` for layers that keep their input's grid, e.g.
    /// max pooling).
    fn output_quantizer(&self) -> Option<&OutputQuantizer> {
        self.harness().output_quantizer()
    }

    /// The export view of the layer's own output quantizer (`None` for layers that keep their
    /// input's grid).
    fn output_export(&self) -> Result<Option<OutputExport>, LayerError> {
        self.harness().output_export()
    }
}

/// A single-input QAT layer.
pub trait QatModule: QatLayer {
    /// Forward pass; `train` selects batch statistics/observer updates as in `nn::ModuleT`.
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError>;
}

#[cfg(test)]
mod tests;
