//! Output (activation) fake quantization: an observer (EMA by default) or PACT's learned clip.

use qat_autograd::{
    Ste, clamp_fake_quant_device, fake_quant_device, pact_fake_quant_device, pact_qparams,
};
use qat_export::ir::Activation;
use tch::{Tensor, nn};

use super::config::{NO_DECAY_GROUP, activate};
use super::harness::name_of;
use super::{ActRange, LayerError, OutputExport, QuantConfig, QuantState};
use crate::observer::{ActObserver, Observer};

/// Output (activation) fake quantization: observer (EMA by default) then `FQ` with
/// `QuantParams::asymmetric(min, max, bits)`, or PACT. A layer's [`super::QuantHarness`] holds it
/// and passes it the layer's run-time [`QuantState`]; [`super::QatQuantize`] uses it alone.
///
/// Observes in training (unless frozen) and, when calibrating, in eval. Fake-quantizes when
/// activation fake quant is on and the config enables it; in eval with fake quant on and no data
/// ever observed it is an error ([`crate::observer::ObserverErrorKind::Uncalibrated`]), not a
/// silent default.
///
/// ```
/// use qat_train::layers::{OutputQuantizer, QuantConfig, QuantState};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut q = OutputQuantizer::new(&(vs.root() / "input_q"), &QuantConfig::default())?;
/// let x = Tensor::from_slice(&[0.0f32, 0.5, 2.55]);
/// let y = q.apply(&x, true, &QuantState::default())?; // first batch sets the range [0, 2.55]: S = 0.01
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.5, 2.55]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OutputQuantizer {
    name: String,
    observer: ActObserver,
    ste: Ste,
    bits: u32,
    enabled: bool,
    alpha: Option<Tensor>,
}

impl OutputQuantizer {
    /// Builds the quantizer with its observer (and PACT's `alpha`, group [`NO_DECAY_GROUP`]) under
    /// `path`.
    pub fn new(path: &nn::Path<'_>, cfg: &QuantConfig) -> Result<Self, LayerError> {
        let name = name_of(path);
        let observer = ActObserver::new(path, cfg.act_observer, cfg.act_bits)
            .map_err(LayerError::observer(&name))?;
        let alpha = match cfg.act_range {
            ActRange::Observed => None,
            ActRange::Pact { init_alpha } => {
                if !(init_alpha.is_finite() && init_alpha > 0.0) {
                    return Err(LayerError::config(
                        &name,
                        format!("PACT init_alpha {init_alpha} must be > 0"),
                    ));
                }
                Some(
                    path.set_group(NO_DECAY_GROUP)
                        .f_var("pact_alpha", &[1], nn::Init::Const(f64::from(init_alpha)))
                        .map_err(LayerError::torch(&name, "pact_alpha"))?,
                )
            }
        };
        Ok(Self {
            name,
            observer,
            ste: cfg.ste,
            bits: cfg.act_bits,
            enabled: cfg.quantize_output,
            alpha,
        })
    }

    /// Observes and fake-quantizes `x` under the run-time state `state`.
    pub fn apply(
        &mut self,
        x: &Tensor,
        train: bool,
        state: &QuantState,
    ) -> Result<Tensor, LayerError> {
        if train || state.calibrate {
            self.observer
                .observe_device(x, None)
                .map_err(LayerError::observer(&self.name))?;
        }
        if !(state.fake_quant_activations && self.enabled) {
            return Ok(x.shallow_clone());
        }
        match &self.alpha {
            Some(alpha) => {
                pact_fake_quant_device(x, alpha, self.bits).map_err(LayerError::fq(&self.name))
            }
            None => {
                let p = self
                    .observer
                    .device_qparams(x.device())
                    .map_err(LayerError::observer(&self.name))?;
                fake_quant_device(x, &p, self.ste).map_err(LayerError::fq(&self.name))
            }
        }
    }

    /// `apply(act(z))` with the layer's fused activation `act`, the activation folded into the fake
    /// quant where that is exact: with fake quant on and an observed range, the observer takes the
    /// clamped batch range of `z` ([`ActObserver::observe_clamped`]) and
    /// [`qat_autograd::clamp_fake_quant_per_tensor`]'s device form ([`clamp_fake_quant_device`]) computes `FQ(act(z))` and the product of both gradients in
    /// one pass, instead of `act` forward and backward and the fake quant's own passes. Same values,
    /// gradients and observer state as `apply(&act(z))` (tested). Otherwise (fake quant off, PACT,
    /// fake quant disabled) it is exactly `apply(&act(z))`.
    ///
    /// ```
    /// use qat_train::layers::{Activation, OutputQuantizer, QuantConfig, QuantState};
    /// use tch::{Tensor, nn::VarStore};
    /// let vs = VarStore::new(tch::Device::Cpu);
    /// let mut q = OutputQuantizer::new(&(vs.root() / "out_q"), &QuantConfig::default())?;
    /// let z = Tensor::from_slice(&[-1.0f32, 0.3, 2.55, 7.0]).set_requires_grad(true);
    /// let y = q.apply_activated(z.shallow_clone(), Activation::Relu6, true, &QuantState::default())?;
    /// // Range [0, 6] (ReLU6 of the batch): S = 6/255, Z = 0.
    /// let s = 6.0f32 / 255.0;
    /// let want: Vec<f32> = [0.0f32, 0.3, 2.55, 6.0].iter().map(|v| (v / s).round() * s).collect();
    /// let got = Vec::<f32>::try_from(&y)?;
    /// assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
    /// y.sum(None).backward();
    /// assert_eq!(Vec::<f32>::try_from(z.grad())?, vec![0.0, 1.0, 1.0, 0.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_activated(
        &mut self,
        z: Tensor,
        act: Activation,
        train: bool,
        state: &QuantState,
    ) -> Result<Tensor, LayerError> {
        let fused = state.fake_quant_activations && self.enabled && self.alpha.is_none();
        let Some((lo, hi)) = act.clamp_range().filter(|_| fused) else {
            let y = activate(act, z).map_err(LayerError::torch(&self.name, "activation"))?;
            return self.apply(&y, train, state);
        };
        if train || state.calibrate {
            self.observer
                .observe_device(&z, Some((lo, hi)))
                .map_err(LayerError::observer(&self.name))?;
        }
        let p = self
            .observer
            .device_qparams(z.device())
            .map_err(LayerError::observer(&self.name))?;
        clamp_fake_quant_device(&z, lo, hi, &p, self.ste).map_err(LayerError::fq(&self.name))
    }

    /// The observer.
    pub fn observer(&self) -> &ActObserver {
        &self.observer
    }

    /// The PACT clip `α`, if PACT is configured.
    pub fn pact_alpha(&self) -> Option<&Tensor> {
        self.alpha.as_ref()
    }

    /// Freezes (`true`) or unfreezes the observer (the range is kept while frozen).
    pub fn freeze(&mut self, frozen: bool) {
        if frozen {
            self.observer.freeze()
        } else {
            self.observer.unfreeze()
        }
    }

    /// The export view.
    pub fn export(&self) -> Result<OutputExport, LayerError> {
        let calibrated = self.observer.is_calibrated();
        let (range, qparams) = match &self.alpha {
            Some(alpha) => {
                let p = pact_qparams(alpha, self.bits).map_err(LayerError::fq(&self.name))?;
                (Some((0.0, p.real_range().1)), Some(p))
            }
            None if calibrated => {
                let r = self
                    .observer
                    .range()
                    .map_err(LayerError::observer(&self.name))?;
                let p = self
                    .observer
                    .per_tensor_qparams()
                    .map_err(LayerError::observer(&self.name))?;
                (Some(r), Some(p))
            }
            None => (None, None),
        };
        Ok(OutputExport {
            name: self.name.clone(),
            enabled: self.enabled,
            bits: self.bits,
            range,
            qparams,
            observer_frozen: self.observer.is_frozen(),
            learned: self.alpha.is_some(),
        })
    }
}
