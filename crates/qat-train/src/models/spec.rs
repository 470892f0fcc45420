//! What defines a model of the zoo: its [`Architecture`] and the [`ModelSpec`] around it (serde,
//! recorded in reports and checkpoints).

use serde::{Deserialize, Serialize};

use crate::layers::{Activation, BnFoldMode, QuantConfig};

/// Architectures of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Architecture {
    /// Two 5×5 conv+BN+act blocks with max pooling, flatten, two linear layers (LeCun et al. 1998, with BN).
    LeNet,
    /// MobileNet-v1 (Howard et al. 2017): 3×3 stem then depthwise-separable blocks, global average pooling,
    /// linear classifier. `width` scales every channel count (α); `blocks` limits the number of
    /// depthwise-separable blocks (13 in the paper) for small inputs.
    MobileNetV1 {
        /// Width multiplier α.
        width: f64,
        /// Depthwise-separable blocks used (1..=13), from the start of the paper's list.
        blocks: usize,
    },
    /// MobileNet-v2-style (Sandler et al. 2018): inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1
    /// linear projection) with a quantized add when the shapes match.
    MobileNetV2 {
        /// Width multiplier α.
        width: f64,
        /// Expansion factor t.
        expansion: usize,
    },
    /// CIFAR ResNet (He et al. 2016, §4.2): `depth = 6n + 2` (8, 20, …), three stages of 16/32/64 channels,
    /// basic blocks with quantized adds, 1×1 conv+BN projection shortcuts on down-sampling.
    ResNet {
        /// 6n + 2.
        depth: usize,
    },
}

/// Everything that defines a model (serde, recorded in reports and checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Architecture,
    /// Input `[C, H, W]`.
    pub input: [usize; 3],
    /// Number of classes.
    pub num_classes: usize,
    /// Activation of the hidden layers (ReLU or ReLU6).
    pub activation: Activation,
    /// Quantization of every layer (bits, schemes, observers).
    pub quant: QuantConfig,
    /// Conv+BN folding variant.
    pub bn_fold: BnFoldMode,
    /// Whitepaper fold: gradient through the batch statistics
    /// ([`crate::layers::ConvBnConfig::stats_grad`]; default `false`, TF's fold).
    #[serde(default)]
    pub bn_stats_grad: bool,
    /// Mixed precision: per-layer weight and/or activation bit widths that replace `quant`'s for
    /// the named layers ([`crate::models::NetBuilder::layer_bits`]); empty: every layer at
    /// `quant`'s widths. Naming a layer the model does not have is a build error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_bits: Vec<LayerBitsOverride>,
}

/// One layer's bit widths in a mixed-precision [`ModelSpec`] (`None`: the model's default).
///
/// ```
/// use qat_train::models::{self, LayerBitsOverride, ModelSpec};
/// let spec = ModelSpec {
///     layer_bits: vec![LayerBitsOverride { layer: "fc2".into(), weight_bits: Some(4), act_bits: None }],
///     ..ModelSpec::lenet()
/// };
/// let net = models::build(&spec, tch::Device::Cpu)?;
/// assert!(net.nodes().iter().any(|n| n.name == "fc2"));
/// let bad = ModelSpec {
///     layer_bits: vec![LayerBitsOverride { layer: "nope".into(), weight_bits: Some(4), act_bits: None }],
///     ..ModelSpec::lenet()
/// };
/// assert!(models::build(&bad, tch::Device::Cpu).unwrap_err().to_string().contains("nope"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerBitsOverride {
    /// The layer's node name (as in [`crate::models::Net::nodes`] and the exported graph).
    pub layer: String,
    /// Weight bits (2..=8), or `None` for the model's.
    pub weight_bits: Option<u32>,
    /// Output activation bits (2..=8), or `None` for the model's.
    pub act_bits: Option<u32>,
}

impl ModelSpec {
    /// LeNet for 28×28×1 inputs, 10 classes, ReLU.
    pub fn lenet() -> Self {
        Self {
            arch: Architecture::LeNet,
            input: [1, 28, 28],
            num_classes: 10,
            activation: Activation::Relu,
            quant: QuantConfig::default(),
            bn_fold: BnFoldMode::Whitepaper,
            bn_stats_grad: false,
            layer_bits: Vec::new(),
        }
    }

    /// MobileNet-v1 for MNIST (28×28×1): α = 0.25, the first 5 blocks, ReLU6.
    pub fn mobilenet_v1_mnist() -> Self {
        Self {
            arch: Architecture::MobileNetV1 {
                width: 0.25,
                blocks: 5,
            },
            activation: Activation::Relu6,
            ..Self::lenet()
        }
    }

    /// MobileNet-v2-style for 32×32×3, α = 0.5, t = 6, ReLU6.
    pub fn mobilenet_v2_cifar() -> Self {
        Self {
            arch: Architecture::MobileNetV2 {
                width: 0.5,
                expansion: 6,
            },
            input: [3, 32, 32],
            activation: Activation::Relu6,
            ..Self::lenet()
        }
    }

    /// ResNet-`depth` for CIFAR-10 (32×32×3), ReLU.
    pub fn resnet_cifar(depth: usize) -> Self {
        Self {
            arch: Architecture::ResNet { depth },
            input: [3, 32, 32],
            ..Self::lenet()
        }
    }

    /// A short name, e.g. `mobilenet_v1_a0.25_b5_28x28x1`.
    pub fn name(&self) -> String {
        let [c, h, w] = self.input;
        let arch = match self.arch {
            Architecture::LeNet => "lenet".to_string(),
            Architecture::MobileNetV1 { width, blocks } => {
                format!("mobilenet_v1_a{width}_b{blocks}")
            }
            Architecture::MobileNetV2 { width, expansion } => {
                format!("mobilenet_v2_a{width}_t{expansion}")
            }
            Architecture::ResNet { depth } => format!("resnet{depth}"),
        };
        format!("{arch}_{h}x{w}x{c}")
    }
}
