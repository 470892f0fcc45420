//! Shared by the examples: the MNIST training recipe (one float epoch, then QAT).

use qat_train::data::Normalize;
use qat_train::schedule::{LrConfig, OptimizerConfig, OptimizerKind, QatDelays, ScheduleConfig};
use qat_train::trainer::TrainConfig;

/// `epochs` epochs of `per_epoch` steps at batch 64: the first in float, then 4 calibration batches and QAT
/// with the quantization delay at 1/8, the BN freeze at 1/2 and the observer freeze at 3/4 of the QAT steps
/// (so the run ends export-ready); SGD with Nesterov momentum, cosine LR from 0.05, weight decay 5e-4.
pub fn mnist_float_then_qat(epochs: usize, per_epoch: u64) -> TrainConfig {
    let qat_steps = per_epoch * (epochs as u64 - 1);
    TrainConfig {
        epochs,
        batch_size: 64,
        normalize: Normalize::mnist(),
        optimizer: OptimizerConfig {
            kind: OptimizerKind::nesterov(0.9),
            lr: LrConfig::cosine(0.05, per_epoch * epochs as u64, 5e-4).with_warmup(20),
            weight_decay: 5e-4,
        },
        schedule: ScheduleConfig {
            float_steps: per_epoch,
            calibration_batches: 4,
            qat: Some(QatDelays {
                quant_delay: qat_steps / 8,
                freeze_bn_delay: qat_steps / 2,
                freeze_observers_delay: 3 * qat_steps / 4,
            }),
        },
        ..TrainConfig::default()
    }
}
