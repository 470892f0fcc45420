//! Pipeline configuration (TOML). Every knob of the experiment is here; `configs/default.toml` is the
//! default run and `--quick` shrinks it for the smoke test.

use std::{fs, path::Path};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

/// The whole experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seed for weights, shuffling and augmentation.
    pub seed: u64,
    /// Dataset.
    pub data: DataConfig,
    /// Model.
    pub model: ModelConfig,
    /// Float pretraining.
    pub float: FloatConfig,
    /// QAT fine-tuning at 8 bits.
    pub qat: QatConfig,
    /// The low-bit run (W4A4 by default).
    pub low_bit: LowBitConfig,
    /// Ablations (`--ablations`).
    pub ablations: AblationConfig,
    /// Latency measurement.
    pub latency: LatencyConfig,
}

/// Dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Directory with `train-images-idx3-ubyte(.gz)` etc. Relative paths are from the workspace root.
    pub dir: String,
    /// Use at most this many training images.
    pub train_limit: Option<usize>,
    /// Use at most this many test images.
    pub test_limit: Option<usize>,
    /// Batches used for PTQ calibration.
    pub calibration_batches: usize,
    /// Batch size for training and evaluation.
    pub batch_size: usize,
    /// Training augmentation: random crop after zero padding by this many pixels (0: none).
    #[serde(default)]
    pub augment_pad: usize,
}

/// Model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `mobilenet_v1`, `mobilenet_v2`, `lenet`, `resnet8`, `resnet20`.
    pub arch: String,
    /// Width multiplier (MobileNets).
    pub width: f64,
    /// Depthwise-separable blocks (MobileNet-v1, 1..=13, from the start of the paper's list).
    pub blocks: usize,
    /// `relu6` or `relu`.
    pub activation: String,
}

/// Float training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatConfig {
    /// Epochs.
    pub epochs: usize,
    /// Peak learning rate (cosine decay).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay (not applied to BN and quantization parameters).
    pub weight_decay: f64,
}

/// QAT fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatConfig {
    /// Epochs.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// Per-channel weights (else per tensor).
    pub per_channel: bool,
    /// Steps with activation fake quant off (observers still collect), paper §3.
    pub quant_delay_steps: usize,
    /// Step at which BN switches to moving statistics (whitepaper §3.2.2).
    pub freeze_bn_steps: usize,
    /// Step at which observers stop updating.
    pub freeze_observers_steps: usize,
    /// EMA decay of activation observers.
    pub ema_decay: f64,
    /// Whitepaper σ_B/σ correction (else PyTorch's variant).
    pub bn_correction: bool,
    /// Whitepaper fold: gradient through the batch statistics (`ConvBnConfig::stats_grad`). Default
    /// `false`: constants of the backward pass, as TF's `fold_batch_norms`.
    #[serde(default)]
    pub bn_stats_grad: bool,
}

/// Low-bit experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowBitConfig {
    /// Weight bits.
    pub weight_bits: u32,
    /// Activation bits.
    pub act_bits: u32,
    /// QAT epochs.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
}

/// Ablations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationConfig {
    /// Bit widths swept for weights × activations.
    pub bits: Vec<u32>,
    /// QAT epochs per sweep point.
    pub qat_epochs: usize,
    /// Float epochs for the ReLU-vs-ReLU6 comparison model.
    pub float_epochs: usize,
}

/// Latency measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Images timed per measurement (batch 1).
    pub images: usize,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks ranges of every knob.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.data.batch_size > 0, "data.batch_size must be > 0");
        ensure!(
            self.data.calibration_batches > 0,
            "data.calibration_batches must be > 0"
        );
        for (what, b) in [
            ("qat.weight_bits", self.qat.weight_bits),
            ("qat.act_bits", self.qat.act_bits),
            ("low_bit.weight_bits", self.low_bit.weight_bits),
            ("low_bit.act_bits", self.low_bit.act_bits),
        ] {
            ensure!((2..=8).contains(&b), "{what} = {b}: supported 2..=8");
        }
        for &b in &self.ablations.bits {
            ensure!(
                (2..=8).contains(&b),
                "ablations.bits contains {b}: supported 2..=8"
            );
        }
        ensure!(self.model.width > 0.0, "model.width must be > 0");
        ensure!(
            (1..=13).contains(&self.model.blocks),
            "model.blocks must be in 1..=13"
        );
        ensure!(
            matches!(self.model.activation.as_str(), "relu" | "relu6"),
            "model.activation must be relu or relu6"
        );
        ensure!(
            self.float.lr > 0.0 && self.qat.lr > 0.0 && self.low_bit.lr > 0.0,
            "learning rates must be > 0"
        );
        ensure!(
            self.qat.ema_decay > 0.0 && self.qat.ema_decay < 1.0,
            "qat.ema_decay must be in (0, 1)"
        );
        ensure!(self.latency.images > 0, "latency.images must be > 0");
        Ok(())
    }

    /// The `--quick` variant: a tiny subset and a few steps, for the smoke test.
    pub fn quick(mut self) -> Self {
        self.data.train_limit = Some(512);
        self.data.test_limit = Some(256);
        self.data.calibration_batches = 2;
        self.model.width = self.model.width.min(0.25);
        self.float.epochs = 1;
        self.qat.epochs = 1;
        self.qat.quant_delay_steps = 2;
        self.qat.freeze_bn_steps = 4;
        self.qat.freeze_observers_steps = 6;
        self.low_bit.epochs = 1;
        self.ablations.bits = vec![8, 4];
        self.ablations.qat_epochs = 1;
        self.ablations.float_epochs = 1;
        self.latency.images = 20;
        self
    }
}
