//! Per-layer quantization configuration and the run-time switches the schedule flips.

use qat_autograd::Ste;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::observer::{ActObserverConfig, Granularity, QuantScheme};

/// VarStore group for parameters that should not get weight decay (BN γ/β, biases, PACT α).
/// Trainers call `opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0)` (TCH.md §5).
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
/// Defaults are the paper's/DESIGN.md's: 8-bit symmetric narrow-range per-channel weights, 8-bit
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
        }
    }
}

/// Activation fused into a layer, applied before the output fake quant (paper §2.4, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// The activation as a clamp `[lo, hi]` (`None` for the identity): ReLU `[0, ∞]`, ReLU6 `[0, 6]`.
    ///
    /// ```
    /// use qat_train::layers::Activation;
    /// assert_eq!(Activation::Relu6.clamp_range(), Some((0.0, 6.0)));
    /// assert_eq!(Activation::None.clamp_range(), None);
    /// ```
    pub fn clamp_range(self) -> Option<(f32, f32)> {
        match self {
            Self::None => None,
            Self::Relu => Some((0.0, f32::INFINITY)),
            Self::Relu6 => Some((0.0, 6.0)),
        }
    }

    pub(crate) fn apply(self, x: Tensor) -> Result<Tensor, tch::TchError> {
        match self {
            Self::None => Ok(x),
            Self::Relu => x.f_relu(),
            Self::Relu6 => x.f_relu6(),
        }
    }
}

/// Run-time switches of a layer, flipped by the schedule through [`QatControl`].
///
/// Default: fake quant on, not calibrating (a freshly built layer is in QAT mode; a schedule that
/// starts with float training or a quantization delay sends `QatControl::FakeQuant(false)` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantState {
    /// Fake quantization on (weights and output, each further gated by its config flag).
    /// Off during the quantization delay: observers still collect (TF `quant_delay` semantics).
    pub fake_quant: bool,
    /// Observers collect in eval mode too (PTQ calibration); in training they always collect
    /// unless frozen.
    pub calibrate: bool,
}

impl Default for QuantState {
    fn default() -> Self {
        Self {
            fake_quant: true,
            calibrate: false,
        }
    }
}

/// A whole-model switch, sent to every layer by [`QatLayer::control`](super::QatLayer::control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QatControl {
    /// Fake quant on/off (quantization delay, float mode).
    FakeQuant(bool),
    /// Freeze (`true`) or unfreeze the activation observers (weight ranges always follow the
    /// weights: paper §3, and what export recomputes).
    FreezeObservers(bool),
    /// Observers collect in eval mode (PTQ calibration) or not.
    Calibrate(bool),
    /// Switch conv+BN layers to moving statistics and stop updating them (whitepaper §3.2.2);
    /// `false` undoes it.
    FreezeBn(bool),
}
