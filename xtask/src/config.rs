//! Pipeline configuration (TOML). Every knob of the experiment is here; `configs/default.toml` is the
//! default run and `--quick` shrinks it for the smoke test.
//!
//! Every table rejects keys it does not know: a mistyped key is an error that names the key and its
//! line, never a silently ignored setting.

use std::{
    fs,
    path::{Path, PathBuf},
};

use qat_int8_runtime::Target;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds more than [`MAX_CONFIG_BYTES`] (or never ends, as a device).
    #[error("config {path} is larger than the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not valid UTF-8 TOML, or a key that is unknown, missing or of the wrong type.
    #[error("invalid config {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value (0: the error has no position).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value outside its range.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key and why.
        message: String,
    },
}

/// Most bytes [`Config::load`] reads: a configuration is a few kilobytes, and a device such as
/// `/dev/zero` is refused after this many bytes instead of being read forever.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

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

/// Dataset: either `dir` or `dataset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Directory with `train-images-idx3-ubyte(.gz)` etc. Relative paths are from the workspace root.
    #[serde(default)]
    pub dir: Option<String>,
    /// A dataset installed by `cargo xtask setup --data NAME` (`<cache>/datasets/NAME`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Per-channel `[mean, std]` of the training pixels in [0, 1] (default: MNIST's).
    #[serde(default)]
    pub normalize: Option<[f32; 2]>,
    /// Training images held out at the end of the training split (never trained on), for studies that
    /// need a validation split.
    #[serde(default)]
    pub validation: usize,
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
    /// The deployment target QAT trains for and the pipeline exports to: `qat`, `tflite`, `ort`
    /// or `xnnpack` (`--target` overrides it). Absent: the paper's float fake-quant forward,
    /// exported for `qat`. With a target, average pools that the target cannot rescale keep their
    /// input's parameters, and once the observers freeze every conv/linear output is requantized
    /// from its accumulator in the target's arithmetic (STE backward), so that the exported model
    /// is the one trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
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
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        fs::File::open(path)
            .map_err(read)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` (`path` names it in errors).
    ///
    /// ```
    /// use xtask::config::{Config, ConfigError};
    /// let text = "seed = 7\n[data]\nbatch_sise = 64\n";
    /// let err = Config::parse(text, "x.toml".as_ref()).unwrap_err();
    /// assert!(matches!(err, ConfigError::Parse { line: 3, .. }));
    /// assert!(err.to_string().contains("batch_sise"));
    /// ```
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks ranges of every knob; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ensure = |ok: bool, msg: &dyn Fn() -> String| if ok { Ok(()) } else { Err(msg()) };
        ensure(
            self.data.dir.is_some() != self.data.dataset.is_some(),
            &|| "[data] needs exactly one of `dir` and `dataset`".into(),
        )?;
        ensure(self.data.batch_size > 0, &|| {
            "data.batch_size must be > 0".into()
        })?;
        ensure(self.data.calibration_batches > 0, &|| {
            "data.calibration_batches must be > 0".into()
        })?;
        if let Some([mean, std]) = self.data.normalize {
            ensure(mean.is_finite() && std.is_finite() && std > 0.0, &|| {
                format!("data.normalize = [{mean}, {std}]: need a finite mean and a std > 0")
            })?;
        }
        for (what, b) in [
            ("qat.weight_bits", self.qat.weight_bits),
            ("qat.act_bits", self.qat.act_bits),
            ("low_bit.weight_bits", self.low_bit.weight_bits),
            ("low_bit.act_bits", self.low_bit.act_bits),
        ] {
            ensure((2..=8).contains(&b), &|| {
                format!("{what} = {b}: supported 2..=8")
            })?;
        }
        for &b in &self.ablations.bits {
            ensure((2..=8).contains(&b), &|| {
                format!("ablations.bits contains {b}: supported 2..=8")
            })?;
        }
        ensure(self.model.width > 0.0, &|| "model.width must be > 0".into())?;
        ensure((1..=13).contains(&self.model.blocks), &|| {
            "model.blocks must be in 1..=13".into()
        })?;
        ensure(
            matches!(self.model.activation.as_str(), "relu" | "relu6"),
            &|| "model.activation must be relu or relu6".into(),
        )?;
        ensure(
            self.float.lr > 0.0 && self.qat.lr > 0.0 && self.low_bit.lr > 0.0,
            &|| "learning rates must be > 0".into(),
        )?;
        ensure(
            self.qat.ema_decay > 0.0 && self.qat.ema_decay < 1.0,
            &|| "qat.ema_decay must be in (0, 1)".into(),
        )?;
        ensure(self.latency.images > 0, &|| {
            "latency.images must be > 0".into()
        })
    }

    /// The `--quick` variant: a tiny subset and a few steps, for the smoke test.
    pub fn quick(mut self) -> Self {
        self.data.train_limit = Some(512);
        self.data.test_limit = Some(256);
        self.data.calibration_batches = 2;
        self.data.validation = self.data.validation.min(128);
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

#[cfg(feature = "torch")]
impl FloatConfig {
    /// The optimizer of a training run of `total` steps at peak learning rate `lr`: SGD with this
    /// section's momentum (Nesterov) and weight decay, the learning rate cosine-annealed to 0.
    pub fn optimizer(&self, lr: f64, total: u64) -> qat_train::schedule::OptimizerConfig {
        use qat_train::schedule::{LrConfig, OptimizerConfig, OptimizerKind};
        OptimizerConfig {
            kind: OptimizerKind::nesterov(self.momentum),
            lr: LrConfig::cosine(lr, total, 0.0),
            weight_decay: self.weight_decay,
        }
    }
}

#[cfg(feature = "torch")]
impl QatConfig {
    /// The layers' fake quant of a QAT run at `weight_bits`/`act_bits`: weights per channel or
    /// per tensor, activations observed by an EMA with this section's decay, trained for this
    /// section's target; the rest [`QuantConfig::default`](qat_train::layers::QuantConfig).
    pub fn quant(
        &self,
        weight_bits: u32,
        act_bits: u32,
        per_channel: bool,
    ) -> qat_train::layers::QuantConfig {
        use qat_train::layers::{QuantConfig, WeightGranularity};
        QuantConfig {
            weight_bits,
            act_bits,
            weight_granularity: if per_channel {
                WeightGranularity::PerChannel
            } else {
                WeightGranularity::PerTensor
            },
            act_observer: qat_train::observer::ActObserverConfig::Ema {
                decay: self.ema_decay as f32,
            },
            target: self.target,
            ..QuantConfig::default()
        }
    }

    /// The batch-norm fold: the whitepaper's σ_B/σ correction with `bn_correction`, else
    /// PyTorch's.
    pub fn bn_fold(&self) -> qat_train::layers::BnFoldMode {
        use qat_train::layers::BnFoldMode;
        if self.bn_correction {
            BnFoldMode::Whitepaper
        } else {
            BnFoldMode::PyTorch
        }
    }

    /// This section's QAT phases after `calibration_batches` calibration batches (each run clamps
    /// them into its length: [`qat_train::finetune::QatPhases::delays`]).
    pub fn phases(&self, calibration_batches: usize) -> qat_train::finetune::QatPhases {
        qat_train::finetune::QatPhases {
            calibration_batches: calibration_batches as u64,
            quant_delay: self.quant_delay_steps as u64,
            freeze_bn: self.freeze_bn_steps as u64,
            freeze_observers: self.freeze_observers_steps as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_text() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/default.toml");
        fs::read_to_string(path).expect("configs/default.toml is readable")
    }

    #[cfg(feature = "torch")]
    #[test]
    fn the_qat_section_gives_the_layers_fake_quant_and_fold() {
        use qat_train::layers::{BnFoldMode, WeightGranularity};
        use qat_train::observer::ActObserverConfig;
        let mut q = Config::parse(&default_text(), Path::new("default.toml"))
            .unwrap()
            .qat;
        q.ema_decay = 0.99;
        q.target = Some(Target::Tflite);
        q.bn_correction = true;
        let c = q.quant(4, 6, false);
        assert_eq!((c.weight_bits, c.act_bits), (4, 6));
        assert_eq!(c.weight_granularity, WeightGranularity::PerTensor);
        assert_eq!(c.act_observer, ActObserverConfig::Ema { decay: 0.99 });
        assert_eq!(c.target, Some(Target::Tflite));
        assert_eq!(
            q.quant(8, 8, true).weight_granularity,
            WeightGranularity::PerChannel
        );
        assert_eq!(q.bn_fold(), BnFoldMode::Whitepaper);
        q.bn_correction = false;
        assert_eq!(q.bn_fold(), BnFoldMode::PyTorch);
    }

    #[test]
    fn shipped_configs_parse() {
        for name in ["default.toml", "fashion-mnist.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            if let Err(e) = Config::load(&path) {
                panic!("{name}: {e}");
            }
        }
    }

    /// `text` fails to parse with an error located at the first line that starts with
    /// `line_start`, whose message names `mention`.
    fn assert_parse_error_at(text: &str, line_start: &str, mention: Option<&str>) {
        let line = 1 + text
            .lines()
            .position(|l| l.starts_with(line_start))
            .expect("the edited line is in the text");
        match Config::parse(text, Path::new("x.toml")) {
            Err(ConfigError::Parse {
                line: l, message, ..
            }) => {
                assert_eq!(l, line, "{message}");
                if let Some(m) = mention {
                    assert!(message.contains(m), "{message}");
                }
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn mistyped_key_names_key_and_line() {
        let text = default_text().replace("calibration_batches = 16", "calibration_batch = 16");
        assert_parse_error_at(&text, "calibration_batch ", Some("calibration_batch"));
    }

    #[test]
    fn unknown_table_and_wrong_type_are_located() {
        let text = format!("{}\n[qatt]\nepochs = 1\n", default_text());
        assert_parse_error_at(&text, "[qatt]", Some("qatt"));
        let text = default_text().replace("epochs = 15", "epochs = \"15\"");
        assert_parse_error_at(&text, "epochs = \"15\"", None);
    }

    #[test]
    fn out_of_range_value_names_the_key() {
        let text = default_text().replace("weight_bits = 4", "weight_bits = 9");
        let e = Config::parse(&text, Path::new("x.toml")).expect_err("9 bits is refused");
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("low_bit.weight_bits = 9"), "{e}");
    }

    #[test]
    fn an_endless_file_is_refused_after_the_limit() {
        let path = Path::new("/dev/zero");
        if path.exists() {
            let e = Config::load(path).expect_err("/dev/zero is not a config");
            assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let bad = dir.path().join("latin1.toml");
        fs::write(&bad, b"seed = 7 # \xe9\n").expect("written");
        let e = Config::load(&bad).expect_err("not UTF-8");
        assert!(
            matches!(&e, ConfigError::Read { path, .. } if path == &bad),
            "{e}"
        );
    }

    #[test]
    fn qat_target_parses_and_an_unknown_one_is_located() {
        let base = default_text();
        assert_eq!(
            Config::parse(&base, Path::new("x.toml"))
                .map(|c| c.qat.target)
                .ok(),
            Some(None)
        );
        let with = |t: &str| base.replace("[qat]\n", &format!("[qat]\ntarget = \"{t}\"\n"));
        let cfg = Config::parse(&with("tflite"), Path::new("x.toml")).expect("tflite parses");
        assert_eq!(cfg.qat.target, Some(Target::Tflite));
        assert_parse_error_at(&with("tflight"), "target = ", Some("tflight"));
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_column("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_column("a\nbc\nd", 5), (3, 1));
    }
}
