//! What a training run is told: [`TrainConfig`] and [`DeviceChoice`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::{Augment, Normalize};
use crate::schedule::{OptimizerConfig, ScheduleConfig};

/// Where to train.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceChoice {
    /// `Device::cuda_if_available()` (sees a GPU only in a build with `QAT_LINK_CUDA=1`, which links
    /// libtorch's CUDA library).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device `n`.
    Cuda(usize),
}

impl DeviceChoice {
    /// The tch device.
    pub fn device(self) -> Device {
        match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(n) => Device::Cuda(n),
        }
    }
}

/// Everything a training run needs besides the model and the data (serde, so runs are described by files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Epochs to run (in total, counting those already done when resuming).
    pub epochs: usize,
    /// Cap on optimizer steps per epoch (`None`: the whole training set).
    pub steps_per_epoch: Option<usize>,
    /// Batch size (training and evaluation).
    pub batch_size: usize,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Normalization (default MNIST statistics; must match the channel count).
    pub normalize: Normalize,
    /// Training augmentation.
    pub augment: Augment,
    /// Batches prefetched by the background thread (0: none).
    pub prefetch: usize,
    /// Optimizer, LR schedule, weight decay.
    pub optimizer: OptimizerConfig,
    /// Phase schedule (step counts).
    pub schedule: ScheduleConfig,
    /// Cap on evaluation samples per epoch (`None`: the whole test set).
    pub eval_samples: Option<usize>,
    /// Checkpoint directory, written after every epoch (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume from `checkpoint_dir` when it holds a checkpoint.
    pub resume: bool,
    /// Draw progress bars (only when stderr is a terminal).
    pub progress: bool,
    /// Record every step's loss in [`History::steps`](super::History::steps).
    pub record_steps: bool,
    /// Where the caller should build the model (`models::build(&spec, cfg.device.device())`);
    /// [`train`](super::train) runs on the device of the model's variables and moves each batch there.
    pub device: DeviceChoice,
    /// Steps whose loss and accuracy stay on the device before the trainer reads them back, all
    /// in one transfer (`None`: 1 on the CPU, where a read costs nothing, and
    /// [`TrainConfig::GPU_SYNC_EVERY`] on a GPU, where each read waits for the device). Every step's
    /// loss is still checked and recorded; a non-finite loss stops training with its own step, but
    /// with a window of `n` up to `n − 1` later updates have been applied by then (with 1, none).
    pub sync_every: Option<usize>,
}

impl TrainConfig {
    /// The window of [`TrainConfig::sync_every`] on a GPU when it is `None`.
    pub const GPU_SYNC_EVERY: usize = 32;

    /// The steps per read on `device` ([`TrainConfig::sync_every`], at least 1).
    ///
    /// ```
    /// use qat_train::trainer::TrainConfig;
    /// let cfg = TrainConfig::default();
    /// assert_eq!(cfg.sync_every_on(tch::Device::Cpu), 1);
    /// assert_eq!(cfg.sync_every_on(tch::Device::Cuda(0)), TrainConfig::GPU_SYNC_EVERY);
    /// let cfg = TrainConfig { sync_every: Some(0), ..TrainConfig::default() };
    /// assert_eq!(cfg.sync_every_on(tch::Device::Cuda(0)), 1);
    /// ```
    pub fn sync_every_on(&self, device: tch::Device) -> usize {
        let auto = if device == tch::Device::Cpu {
            1
        } else {
            Self::GPU_SYNC_EVERY
        };
        self.sync_every.unwrap_or(auto).max(1)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            steps_per_epoch: None,
            batch_size: 64,
            seed: 0,
            normalize: Normalize::mnist(),
            augment: Augment::none(),
            prefetch: 2,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            eval_samples: None,
            checkpoint_dir: None,
            resume: false,
            progress: true,
            record_steps: true,
            device: DeviceChoice::Auto,
            sync_every: None,
        }
    }
}
