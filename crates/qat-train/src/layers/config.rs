//! Per-layer quantization configuration and the run-time switches the schedule flips.

use qat_autograd::Ste;
use qat_core::Target;
use qat_export::ir::Activation;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::observer::{ActObserverConfig, Granularity, QuantScheme};

/// VarStore group for parameters that should not get weight decay (BN γ/β, biases, PACT α, LSQ
/// scales): [`crate::schedule::Optimizer`] decays only variables of group 0.
pub const NO_DECAY_GROUP: usize = 1;

/// Granularity of weight quantization; the channel axis is always the output-channel axis 0
/// (conv `OIHW`, depthwise `[C, 1, kh, kw]`, linear `[out, in]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WeightGranularity {
    /// One scale per output channel (default; whitepaper §3.1 per-channel).
    #[default]
    PerChannel,
    /// One scale for the whole weight tensor (the paper's original scheme).
    PerTensor,
}

impl WeightGranularity {
    /// As an observer granularity (axis 0 for per channel).
    pub fn observer(self) -> Granularity {
        match self {
            Self::PerChannel => Granularity::PerChannel { axis: 0 },
            Self::PerTensor => Granularity::PerTensor,
        }
    }
}

/// How the weight range is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WeightRange {
    /// Min/max of the current (folded) weights every step — the paper's method.
    #[default]
    MinMax,
    /// LSQ (Esser et al. 2020): a learned scale per channel (or per tensor), initialised on the
    /// first forward to `2·mean(|W|)/√qmax` (LSQ §2.1); symmetric weights only (`Z = 0`).
    Lsq,
}

/// How the activation range is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum ActRange {
    /// An observer (EMA by default) sets the range — the paper's method.
    #[default]
    Observed,
    /// PACT: a learnable clip `α` (initialised to `init_alpha`) sets the range `[0, α]`
    /// (Choi et al. 2018; only meaningful after ReLU/ReLU6). The observer still watches the output.
    Pact {
        /// Initial `α`.
        init_alpha: f32,
    },
}

/// Per-layer quantization configuration (set at construction).
///
/// Defaults are the paper's (with the whitepaper's per-channel weights): 8-bit symmetric
/// narrow-range per-channel weights, 8-bit
/// asymmetric activations observed by an EMA with decay 0.999, clipped STE, both quantizers enabled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Weight bit width (2..=8).
    pub weight_bits: u32,
    /// Activation bit width (2..=8), grid `[0, 2^b − 1]`.
    pub act_bits: u32,
    /// Per channel or per tensor weights.
    pub weight_granularity: WeightGranularity,
    /// Symmetric narrow range (default) or the paper's asymmetric uint8 weights.
    pub weight_scheme: QuantScheme,
    /// Straight-through estimator of both fake quants.
    pub ste: Ste,
    /// Weight range: min/max (paper) or LSQ.
    pub weight_range: WeightRange,
    /// Activation observer.
    pub act_observer: ActObserverConfig,
    /// Activation range: observed (paper) or PACT.
    pub act_range: ActRange,
    /// Whether this layer fake-quantizes its weights at all (when fake quant is switched on).
    pub quantize_weights: bool,
    /// Whether this layer fake-quantizes its output at all (when fake quant is switched on).
    pub quantize_output: bool,
    /// The deployment target QAT trains for (`None`: the paper's float fake-quant forward, which
    /// approximates the `qat` target). With `Some(T)`:
    /// * an average pool whose output `T` cannot rescale ([`Target::average_pool_rescales`]) keeps
    ///   its input's parameters (no output range of its own; export inherits them);
    /// * once the input grid is known (activation observers frozen), the forward *value* of a conv
    ///   or linear layer is its output requantized from the int32 accumulator in `T`'s arithmetic
    ///   (`M = S_in·S_w[c]/S_out` as `T` derives it, `T`'s rounding and fused clamp), and that of a
    ///   tied global average pool is `T`'s int8 average of the input codes; the backward is the
    ///   usual STE of the fake quant.
    #[serde(default)]
    pub target: Option<Target>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            weight_bits: 8,
            act_bits: 8,
            weight_granularity: WeightGranularity::PerChannel,
            weight_scheme: QuantScheme::SymmetricNarrow,
            ste: Ste::Clipped,
            weight_range: WeightRange::MinMax,
            act_observer: ActObserverConfig::default(),
            act_range: ActRange::Observed,
            quantize_weights: true,
            quantize_output: true,
            target: None,
        }
    }
}

/// `act(x)` for a tensor: identity, ReLU or ReLU6 (libtorch's `relu`, `relu6`).
pub(crate) fn activate(act: Activation, x: Tensor) -> Result<Tensor, tch::TchError> {
    match act {
        Activation::None => Ok(x),
        Activation::Relu => x.f_relu(),
        Activation::Relu6 => x.f_relu6(),
    }
}

/// Run-time switches of a layer, flipped by the schedule through [`QatControl`].
///
/// Default: fake quant on, not calibrating (a freshly built layer is in QAT mode; a schedule that
/// starts with float training or a quantization delay switches fake quant off first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantState {
    /// Weights (after BN folding) are fake-quantized, when the layer's config enables it; the bias
    /// is then simulated on the int32 grid once the input scale is known.
    pub fake_quant_weights: bool,
    /// The output is fake-quantized, when the layer's config enables it. Off during the
    /// quantization delay: observers still collect (TF `quant_delay` semantics).
    pub fake_quant_activations: bool,
    /// Observers collect in eval mode too (PTQ calibration); in training they always collect
    /// unless frozen.
    pub calibrate: bool,
}

impl Default for QuantState {
    fn default() -> Self {
        Self {
            fake_quant_weights: true,
            fake_quant_activations: true,
            calibrate: false,
        }
    }
}

impl QuantState {
    /// Applies a switch (the observer and BN switches do not concern this state).
    pub fn apply(&mut self, c: QatControl) {
        match c {
            QatControl::FakeQuant {
                weights,
                activations,
            } => {
                self.fake_quant_weights = weights;
                self.fake_quant_activations = activations;
            }
            QatControl::Calibrate(on) => self.calibrate = on,
            QatControl::FreezeObservers(_) | QatControl::FreezeBn(_) => {}
        }
    }
}

/// A switch sent to a layer by [`QatLayer::control`](super::QatLayer::control); a model sends the
/// switches of a schedule phase to every layer ([`crate::schedule::PhaseControl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QatControl {
    /// Fake quant of the weights and of the activations on/off (quantization delay, float mode).
    FakeQuant {
        /// Weights (after BN folding).
        weights: bool,
        /// Layer outputs.
        activations: bool,
    },
    /// Freeze (`true`) or unfreeze the activation observers (weight ranges always follow the
    /// weights: paper §3, and what export recomputes).
    FreezeObservers(bool),
    /// Observers collect in eval mode (PTQ calibration) or not.
    Calibrate(bool),
    /// Switch conv+BN layers to moving statistics and stop updating them (whitepaper §3.2.2);
    /// `false` undoes it.
    FreezeBn(bool),
}

impl QatControl {
    /// Fake quant of weights and activations both on or both off.
    ///
    /// ```
    /// use qat_train::layers::QatControl;
    /// assert_eq!(QatControl::fake_quant(false), QatControl::FakeQuant { weights: false, activations: false });
    /// ```
    pub const fn fake_quant(on: bool) -> Self {
        Self::FakeQuant {
            weights: on,
            activations: on,
        }
    }
}
