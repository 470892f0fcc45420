//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

use super::ScheduleError;

/// The shape of the learning rate over optimizer steps (after warmup).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// `lr(t) = base`.
    Constant,
    /// `lr(t) = base · gamma^⌊t / every⌋`.
    Step {
        /// Steps between decays (> 0).
        every: u64,
        /// Decay factor.
        gamma: f64,
    },
    /// `lr(t) = min + (base − min)·(1 + cos(π·min(t, total)/total))/2` (SGDR without restarts).
    Cosine {
        /// Steps of the half cosine (> 0).
        total: u64,
        /// Final learning rate.
        min_lr: f64,
    },
}

/// Learning rate: base value, schedule, optional linear warmup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrConfig {
    /// Base learning rate (> 0).
    pub base: f64,
    /// Schedule after warmup.
    pub schedule: LrSchedule,
    /// Linear warmup steps: `lr(t) = base·(t + 1)/warmup` for `t < warmup`, then the schedule at `t − warmup`.
    pub warmup: u64,
}

impl LrConfig {
    /// A constant learning rate without warmup.
    pub fn constant(base: f64) -> Self {
        Self {
            base,
            schedule: LrSchedule::Constant,
            warmup: 0,
        }
    }

    /// A half cosine from `base` down to `min_lr` over `total` steps ([`LrSchedule::Cosine`]),
    /// without warmup (add it with [`LrConfig::with_warmup`]).
    ///
    /// ```
    /// use qat_train::schedule::{LrConfig, LrSchedule};
    /// let c = LrConfig::cosine(0.1, 100, 0.0).with_warmup(10);
    /// assert_eq!(c, LrConfig { base: 0.1, schedule: LrSchedule::Cosine { total: 100, min_lr: 0.0 }, warmup: 10 });
    /// ```
    pub fn cosine(base: f64, total: u64, min_lr: f64) -> Self {
        Self {
            base,
            schedule: LrSchedule::Cosine { total, min_lr },
            warmup: 0,
        }
    }

    /// This schedule after `steps` linear warmup steps: `lr(t) = base·(t + 1)/steps` for
    /// `t < steps`.
    pub fn with_warmup(self, steps: u64) -> Self {
        Self {
            warmup: steps,
            ..self
        }
    }

    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let bad = |m: &str| Err(ScheduleError::Config(format!("learning rate: {m}")));
        if !(self.base.is_finite() && self.base > 0.0) {
            return bad("base must be finite and > 0");
        }
        match self.schedule {
            LrSchedule::Step { every: 0, .. } => bad("step schedule needs every > 0"),
            LrSchedule::Step { gamma, .. } if !(gamma.is_finite() && gamma > 0.0) => {
                bad("gamma must be > 0")
            }
            LrSchedule::Cosine { total: 0, .. } => bad("cosine schedule needs total > 0"),
            LrSchedule::Cosine { min_lr, .. } if !(min_lr >= 0.0 && min_lr <= self.base) => {
                bad("cosine min_lr must be in [0, base]")
            }
            _ => Ok(()),
        }
    }

    /// The learning rate at optimizer step `t` (0-based).
    ///
    /// ```
    /// use qat_train::schedule::{LrConfig, LrSchedule};
    /// let c = LrConfig { base: 0.1, schedule: LrSchedule::Cosine { total: 100, min_lr: 0.0 }, warmup: 10 };
    /// assert!((c.at(4) - 0.05).abs() < 1e-12);        // warmup: 0.1·5/10
    /// assert!((c.at(10) - 0.1).abs() < 1e-12);        // cosine start
    /// assert!((c.at(60) - 0.05).abs() < 1e-12);       // half way
    /// let s = LrConfig { base: 1.0, schedule: LrSchedule::Step { every: 10, gamma: 0.1 }, warmup: 0 };
    /// assert!((s.at(25) - 0.01).abs() < 1e-12);
    /// ```
    pub fn at(&self, t: u64) -> f64 {
        if t < self.warmup {
            return self.base * (t + 1) as f64 / self.warmup as f64;
        }
        let t = t - self.warmup;
        match self.schedule {
            LrSchedule::Constant => self.base,
            LrSchedule::Step { every, gamma } => {
                self.base * gamma.powi((t / every.max(1)).min(i32::MAX as u64) as i32)
            }
            LrSchedule::Cosine { total, min_lr } => {
                let p = t.min(total) as f64 / total.max(1) as f64;
                min_lr + (self.base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}
