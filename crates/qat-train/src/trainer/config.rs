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
        }
    }
}
