//! Optimizers written on tensors, so that their state (momentum, Adam moments, step count) is ours to
//! checkpoint: libtorch's C++ optimizers behind `tch::nn::Optimizer` do not expose their buffers, and exact
//! resume needs them.
//!
//! Update rules (PyTorch's `torch.optim` semantics), for gradient `g`, parameter `p`, learning rate `η`,
//! weight decay `λ` (only on decayed parameters, see [`Optimizer::new`]):
//! * SGD: `d = g + λp`; `b = μb + d` (`b = d` at the first step); `d = d + μb` (Nesterov) or `d = b`; `p −= ηd`.
//! * Adam: `g += λp`; `m = β₁m + (1−β₁)g`; `v = β₂v + (1−β₂)g²`;
//!   `p −= η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`.
//! * AdamW: as Adam without the `λp` term, and `p *= 1 − ηλ` first (decoupled decay, Loshchilov & Hutter).

use qat_autograd::host_read;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use super::{LrConfig, ScheduleError};

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// SGD with momentum `μ` (0 disables it), optionally Nesterov.
    Sgd {
        /// Momentum μ.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam with L2 weight decay folded into the gradient.
    Adam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// AdamW: Adam with decoupled weight decay.
    AdamW {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

impl OptimizerKind {
    /// SGD, momentum 0.9, Nesterov.
    pub fn sgd_nesterov() -> Self {
        Self::nesterov(0.9)
    }

    /// SGD with Nesterov momentum `μ`.
    ///
    /// ```
    /// use qat_train::schedule::OptimizerKind;
    /// assert_eq!(OptimizerKind::nesterov(0.9), OptimizerKind::Sgd { momentum: 0.9, nesterov: true });
    /// ```
    pub fn nesterov(momentum: f64) -> Self {
        Self::Sgd {
            momentum,
            nesterov: true,
        }
    }

    /// Adam with PyTorch's defaults (0.9, 0.999, 1e-8).
    pub fn adam() -> Self {
        Self::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// AdamW with PyTorch's defaults.
    pub fn adamw() -> Self {
        Self::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Optimizer, learning-rate schedule and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Learning rate over steps.
    pub lr: LrConfig,
    /// Weight decay λ, applied to conv/linear weights only.
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::sgd_nesterov(),
            lr: LrConfig::constant(0.05),
            weight_decay: 5e-4,
        }
    }
}

struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
    buf1: Option<Tensor>,
    buf2: Option<Tensor>,
}

/// A first-order optimizer over a VarStore's trainable variables, with checkpointable state.
pub struct Optimizer {
    cfg: OptimizerConfig,
    variables: Arc<Mutex<nn::Variables>>,
    params: Vec<Param>,
    step: u64,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("cfg", &self.cfg)
            .field("params", &self.params.len())
            .field("step", &self.step)
            .finish()
    }
}

impl Optimizer {
    /// Collects the trainable variables of `vs`, sorted by name. Weight decay applies to a variable iff it has
    /// at least two dimensions (conv and linear weights) **and** lives in VarStore group 0: BN γ/β, biases,
    /// quantization scales and clipping parameters (1-D, or put in a group ≥ 1 with `Path::set_group` by the
    /// layers) are never decayed.
    pub fn new(vs: &nn::VarStore, cfg: OptimizerConfig) -> Result<Self, ScheduleError> {
        cfg.lr.validate()?;
        if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
            return Err(ScheduleError::Config(format!(
                "weight decay {} must be ≥ 0",
                cfg.weight_decay
            )));
        }
        match cfg.kind {
            OptimizerKind::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => {
                return Err(ScheduleError::Config(format!(
                    "SGD momentum {momentum} not in [0, 1)"
                )));
            }
            OptimizerKind::Adam { beta1, beta2, eps }
            | OptimizerKind::AdamW { beta1, beta2, eps }
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0) =>
            {
                return Err(ScheduleError::Config(format!(
                    "Adam betas ({beta1}, {beta2}) / eps {eps} invalid"
                )));
            }
            _ => {}
        }
        let mut opt = Self {
            cfg,
            variables: Arc::clone(&vs.variables_),
            params: Vec::new(),
            step: 0,
        };
        opt.refresh();
        Ok(opt)
    }

    /// Picks up variables created after construction (keeps existing state).
    fn refresh(&mut self) {
        let vars = match self.variables.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if vars.trainable_variables.len() == self.params.len() {
            return;
        }
        let group: HashMap<usize, usize> = vars
            .trainable_variables
            .iter()
            .map(|v| (v.tensor.data_ptr() as usize, v.group))
            .collect();
        let mut old: HashMap<String, Param> =
            self.params.drain(..).map(|p| (p.name.clone(), p)).collect();
        let mut named: Vec<(&String, &Tensor)> = vars
            .named_variables
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        self.params = named
            .into_iter()
            .map(|(name, t)| {
                old.remove(name).unwrap_or_else(|| Param {
                    name: name.clone(),
                    tensor: t.shallow_clone(),
                    decay: t.dim() >= 2
                        && group.get(&(t.data_ptr() as usize)).copied().unwrap_or(0) == 0,
                    buf1: None,
                    buf2: None,
                })
            })
            .collect();
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Names of the variables that receive weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Names of all optimized variables.
    pub fn optimized(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// The learning rate the next [`Optimizer::step`] will use.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr.at(self.step)
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        self.refresh();
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update with the scheduled learning rate; returns the rate used.
    pub fn step(&mut self) -> f64 {
        self.refresh();
        let lr = self.current_lr();
        self.step += 1;
        let t = self.step as i32;
        let wd = self.cfg.weight_decay;
        let kind = self.cfg.kind;
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let decay = p.decay && wd > 0.0;
                match kind {
                    OptimizerKind::Sgd { momentum, nesterov } => {
                        let mut d = if decay {
                            &g + &p.tensor * wd
                        } else {
                            g.shallow_clone()
                        };
                        if momentum > 0.0 {
                            let b = match p.buf1.take() {
                                None => d.copy(),
                                Some(b) => b * momentum + &d,
                            };
                            d = if nesterov {
                                d + &b * momentum
                            } else {
                                b.shallow_clone()
                            };
                            p.buf1 = Some(b);
                        }
                        let _ = p.tensor.g_sub_(&(d * lr));
                    }
                    OptimizerKind::Adam { beta1, beta2, eps }
                    | OptimizerKind::AdamW { beta1, beta2, eps } => {
                        let adamw = matches!(kind, OptimizerKind::AdamW { .. });
                        let g = if decay && !adamw {
                            &g + &p.tensor * wd
                        } else {
                            g.shallow_clone()
                        };
                        if decay && adamw {
                            let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let m = match p.buf1.take() {
                            None => &g * (1.0 - beta1),
                            Some(m) => m * beta1 + &g * (1.0 - beta1),
                        };
                        let v = match p.buf2.take() {
                            None => &g * &g * (1.0 - beta2),
                            Some(v) => v * beta2 + &g * &g * (1.0 - beta2),
                        };
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = (&v / bc2).sqrt() + eps;
                        let _ = p.tensor.g_sub_(&(&m / denom * (lr / bc1)));
                        p.buf1 = Some(m);
                        p.buf2 = Some(v);
                    }
                }
            }
        });
        lr
    }

    /// The optimizer state as named tensors (`<var>#1`, `<var>#2` buffers and `#step`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("#step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for p in &self.params {
            if let Some(b) = &p.buf1 {
                out.push((format!("{}#1", p.name), b.shallow_clone()));
            }
            if let Some(b) = &p.buf2 {
                out.push((format!("{}#2", p.name), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`]; unknown names are an error.
    ///
    /// All or nothing: every entry is checked (name, shape, kind) before any buffer or the step
    /// count changes, so a refused state leaves the optimizer exactly as it was.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), ScheduleError> {
        self.refresh();
        let device = self.params.first().map(|p| p.tensor.device());
        let mut step = None;
        // (parameter index, buffer 1 or 2, tensor), all checked before anything is replaced.
        let mut staged: Vec<(usize, bool, Tensor)> = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            if name == "#step" {
                step = Some(host_read::scalar_i64(&t, "optimizer step")? as u64);
                continue;
            }
            let bad = || ScheduleError::Config(format!("optimizer state: bad entry name {name}"));
            let (var, which) = name.rsplit_once('#').ok_or_else(bad)?;
            let first = match which {
                "1" => true,
                "2" => false,
                _ => return Err(bad()),
            };
            let index = self
                .params
                .iter()
                .position(|p| p.name == var)
                .ok_or_else(|| {
                    ScheduleError::Config(format!("optimizer state for unknown variable {var}"))
                })?;
            let p = &self.params[index];
            if t.size() != p.tensor.size() {
                return Err(ScheduleError::Config(format!(
                    "optimizer state {name}: shape {:?}, variable has {:?}",
                    t.size(),
                    p.tensor.size()
                )));
            }
            let t = t
                .f_to_kind(Kind::Float)?
                .f_to_device(device.unwrap_or(tch::Device::Cpu))?;
            staged.push((index, first, t));
        }
        for p in &mut self.params {
            p.buf1 = None;
            p.buf2 = None;
        }
        for (index, first, t) in staged {
            let p = &mut self.params[index];
            if first {
                p.buf1 = Some(t);
            } else {
                p.buf2 = Some(t);
            }
        }
        if let Some(step) = step {
            self.step = step;
        }
        Ok(())
    }
}
