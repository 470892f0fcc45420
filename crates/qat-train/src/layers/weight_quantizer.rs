//! Weight fake quantization: min/max of the current weights (per channel by default), or LSQ.

use qat_autograd::host_read::{self, HostCopy};
use qat_autograd::{
    DeviceQParams, Ste, TensorQParams, fake_quant_device, lsq_fake_quant_per_channel,
    lsq_fake_quant_per_tensor,
};
use qat_core::{MIN_SCALE, PerChannelParams, QuantParams, QuantRange};
use tch::{Kind, Tensor, nn};

use super::config::NO_DECAY_GROUP;
use super::{LayerError, QuantConfig, QuantState, WeightGranularity, WeightRange};
use crate::observer::{MinMaxConfig, MinMaxObserver, QuantScheme, RangeRecorder};

/// Weight fake quantization (paper §3: "a = min w, b = max w", recomputed every step):
/// `W_q = FQ(W; params(min/max of W))`.
///
/// The observer watches the weights on every fake-quantizing forward (train and eval; the weights' range is a
/// deterministic function of the weights), so eval uses the range of exactly the weights it
/// quantizes. Weight ranges are **never frozen** ([`super::QatControl::FreezeObservers`] freezes activation
/// observers only), as in the paper and TF's `contrib/quantize`: export (qat-export) recomputes the
/// range from the final folded weights, so a frozen training range would make the exported model
/// differ from the model that was trained (measured: at 4 bits, 3–27% of each layer's output codes).
///
/// With [`WeightRange::Lsq`] the scale is a trained parameter (`weight_q.lsq_scale`, group
/// [`NO_DECAY_GROUP`]) and the op is qat-autograd's LSQ fake quant; the observer still records the
/// weights' range for reference.
#[derive(Debug)]
pub struct WeightQuantizer {
    observer: MinMaxObserver,
    ste: Ste,
    enabled: bool,
    lsq: Option<Lsq>,
    /// The min/max parameters (on the device) the last [`WeightQuantizer::forward`] fake-quantized
    /// with (`None` when it did not), reused by [`WeightQuantizer::fake_quant_bias`].
    last: Option<DeviceQParams>,
}

/// LSQ state: learned scale (`f32[C]` or `f32[1]`), fixed zero point 0, initialised flag buffer.
#[derive(Debug)]
struct Lsq {
    scale: Tensor,
    zero_point: Tensor,
    initialized: Tensor,
    /// Host copy of `initialized`.
    initialized_host: HostCopy,
    range: QuantRange,
    per_channel: bool,
}

impl Lsq {
    fn init_from(&mut self, w: &Tensor) -> Result<(), tch::TchError> {
        if self
            .initialized_host
            .get(&self.initialized, "lsq initialized")?
            != 0.0
        {
            return Ok(());
        }
        let k = 2.0 / f64::from(self.range.qmax).sqrt();
        let s = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let a = w.f_detach()?.f_abs()?;
            let m = if self.per_channel {
                a.f_flatten(1, -1)?
                    .f_mean_dim(Some([1i64].as_slice()), false, None)?
            } else {
                a.f_mean(None)?.f_view([1])?
            };
            (m * k).f_clamp_min(f64::from(MIN_SCALE))
        })?;
        tch::no_grad(|| -> Result<(), tch::TchError> {
            self.scale.f_copy_(&s)?;
            let _ = self.initialized.f_fill_(1.0)?;
            Ok(())
        })?;
        self.initialized_host.set(&self.initialized, 1.0);
        Ok(())
    }

    /// The learned scales as qat-core parameters (validated by `QuantParams::new`).
    fn qparams(&self, layer: &str) -> Result<Vec<QuantParams>, LayerError> {
        let scales = host_read::vec_f32(&self.scale, "lsq scale")
            .map_err(LayerError::torch(layer, "lsq scale"))?;
        scales
            .iter()
            .map(|&s| QuantParams::new(s.max(MIN_SCALE), 0, self.range))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LayerError::config(layer, format!("learned LSQ scale is invalid: {e}")))
    }
}

impl WeightQuantizer {
    /// Builds the quantizer for a weight with `out_channels` output channels (axis 0) under `path`.
    pub fn new(
        path: &nn::Path<'_>,
        cfg: &QuantConfig,
        out_channels: i64,
        layer: &str,
    ) -> Result<Self, LayerError> {
        let observer = MinMaxObserver::new(
            path,
            MinMaxConfig {
                scheme: cfg.weight_scheme,
                bits: cfg.weight_bits,
                granularity: cfg.weight_granularity.observer(),
                channels: out_channels,
                accumulate: false,
            },
        )
        .map_err(LayerError::observer(layer))?;
        let lsq = match cfg.weight_range {
            WeightRange::MinMax => None,
            WeightRange::Lsq => {
                if cfg.weight_scheme != QuantScheme::SymmetricNarrow {
                    return Err(LayerError::config(
                        layer,
                        "LSQ weights need the symmetric narrow scheme",
                    ));
                }
                let per_channel = cfg.weight_granularity == WeightGranularity::PerChannel;
                let n = if per_channel { out_channels } else { 1 };
                let torch = |op| LayerError::torch(layer, op);
                let range = QuantRange::signed_narrow(cfg.weight_bits)
                    .map_err(|e| LayerError::config(layer, e.to_string()))?;
                Some(Lsq {
                    scale: path
                        .set_group(NO_DECAY_GROUP)
                        .f_var("lsq_scale", &[n], nn::Init::Const(1.0))
                        .map_err(torch("lsq scale"))?,
                    zero_point: path
                        .f_zeros_no_train("lsq_zero_point", &[n])
                        .map_err(torch("lsq zero point"))?,
                    initialized: path
                        .f_zeros_no_train("lsq_initialized", &[1])
                        .map_err(torch("lsq flag"))?,
                    initialized_host: HostCopy::default(),
                    range,
                    per_channel,
                })
            }
        };
        Ok(Self {
            observer,
            ste: cfg.ste,
            enabled: cfg.quantize_weights,
            lsq,
            last: None,
        })
    }

    /// Returns `FQ(w)` with the range of `w` itself when fake quant is on (and enabled in the config),
    /// else `w` (then the weights are not even observed: float mode pays nothing, and export
    /// recomputes the range from the final weights anyway).
    pub fn forward(
        &mut self,
        w: &Tensor,
        state: &QuantState,
        layer: &str,
    ) -> Result<Tensor, LayerError> {
        let fq_on = state.fake_quant_weights && self.enabled;
        if let Some(lsq) = &mut self.lsq {
            self.observer
                .observe_device(w, None)
                .map_err(LayerError::observer(layer))?;
            lsq.init_from(w)
                .map_err(LayerError::torch(layer, "lsq init"))?;
            if !fq_on {
                return Ok(w.shallow_clone());
            }
            return if lsq.per_channel {
                lsq_fake_quant_per_channel(w, &lsq.scale, &lsq.zero_point, 0, lsq.range)
            } else {
                lsq_fake_quant_per_tensor(w, &lsq.scale, &lsq.zero_point, lsq.range)
            }
            .map_err(LayerError::fq(layer));
        }
        self.last = None;
        if !fq_on {
            return Ok(w.shallow_clone());
        }
        // The range of `w` and its parameters, on the device: nothing is read back.
        let p = self
            .observer
            .observe_params_device(w)
            .map_err(LayerError::observer(layer))?;
        let y = fake_quant_device(w, &p, self.ste).map_err(LayerError::fq(layer))?;
        self.last = Some(p);
        Ok(y)
    }

    /// The parameters for the final weights `w`: `w`'s own min/max (what export recomputes).
    /// With LSQ: the learned scales (once initialised by a forward pass).
    pub fn qparams_for(&self, w: &Tensor, layer: &str) -> Result<TensorQParams, LayerError> {
        if let Some(lsq) = &self.lsq {
            let initialized = lsq
                .initialized_host
                .get(&lsq.initialized, "lsq initialized")
                .map_err(LayerError::torch(layer, "lsq flag"))?
                != 0.0;
            if initialized {
                let ps = lsq.qparams(layer)?;
                return Ok(if lsq.per_channel {
                    TensorQParams::PerChannel(
                        PerChannelParams::from_params(&ps, 0)
                            .map_err(|e| LayerError::config(layer, e.to_string()))?,
                    )
                } else {
                    TensorQParams::PerTensor(ps[0])
                });
            }
        }
        self.observer
            .qparams_of(w)
            .map_err(LayerError::observer(layer))
    }

    /// Paper §2.4: the integer model adds the bias as int32 on the grid `S_bias = S_in·S_w[c]`,
    /// `b_q = round(b / (S_in·S_w[c]))` (qat-export's `quantize_bias`). This returns that value in
    /// float, `b̂ = S_in·S_w[c]·round(b / (S_in·S_w[c]))`, with an identity STE (`∂b̂/∂b = 1`), so that
    /// QAT computes what the integer model will. `S_w` are the parameters of the last
    /// [`WeightQuantizer::forward`] (call it first). `b` is returned unchanged when weights are not
    /// fake-quantized (fake quant off or disabled in the config), with LSQ (learned scales: not yet
    /// simulated), or when `s_in` is not a positive finite scale.
    ///
    /// At 8 bits the rounding moves a layer's output by at most `0.5·M` LSB (`M = S_in·S_w/S_out`,
    /// typically < 0.05) and hardly matters; at 4 bits `M` reaches 0.1–1 and an unsimulated bias
    /// rounding changes several percent of the output codes.
    ///
    /// ```
    /// use qat_train::layers::{QuantConfig, QuantState, WeightQuantizer};
    /// use tch::{Tensor, nn::VarStore};
    /// let vs = VarStore::new(tch::Device::Cpu);
    /// let mut wq = WeightQuantizer::new(&(vs.root() / "w_q"), &QuantConfig::default(), 1, "fc")?;
    /// let w = Tensor::from_slice(&[1.27f32, -0.5]).view([1, 2]);
    /// let _ = wq.forward(&w, &QuantState::default(), "fc")?;           // S_w = 1.27/127 = 0.01
    /// let state = QuantState::default();
    /// let b = wq.fake_quant_bias(&Tensor::from_slice(&[0.0123f32]), 0.5, &state, "fc")?;
    /// let v = Vec::<f32>::try_from(&b)?;        // grid S_in·S_w = 0.005: 0.0123/0.005 = 2.46 → 2
    /// assert!((v[0] - 0.010).abs() < 1e-7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fake_quant_bias(
        &self,
        b: &Tensor,
        s_in: f32,
        state: &QuantState,
        layer: &str,
    ) -> Result<Tensor, LayerError> {
        let p = match &self.last {
            Some(p) if state.fake_quant_weights && s_in.is_finite() && s_in > 0.0 => p,
            _ => return Ok(b.shallow_clone()),
        };
        let n = b.size().first().copied().unwrap_or(0) as usize;
        if p.axis().is_some() && p.len() != n {
            return Err(LayerError::config(
                layer,
                format!("bias has {n} channels, the weight parameters {}", p.len()),
            ));
        }
        // The grid S_in·S_w[c] = (f64(S_in)·f64(S_w[c])) rounded to f32, on the device.
        let torch = LayerError::torch(layer, "bias fake quant");
        let q = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let g = p
                .scale()
                .f_to_kind(Kind::Double)?
                .f_mul_scalar(f64::from(s_in))?
                .f_to_kind(Kind::Float)?;
            let bd = b.f_detach()?;
            bd.f_div(&g)?.f_round()?.f_mul(&g)?.f_sub(&bd)
        })
        .map_err(torch)?;
        // b + (b̂ − b) with the difference detached: value b̂, gradient identity.
        Ok(b + q)
    }

    /// The weight scales (one per channel, or one) the last [`WeightQuantizer::forward`]
    /// fake-quantized with by min/max, read to the host (`None`: it did not, or LSQ).
    pub(crate) fn last_scales(&self) -> Result<Option<Vec<f32>>, tch::TchError> {
        self.last
            .as_ref()
            .map(|p| host_read::vec_f32(p.scale(), "weight scales"))
            .transpose()
    }

    /// The learned LSQ scale, if LSQ is configured.
    pub fn lsq_scale(&self) -> Option<&Tensor> {
        self.lsq.as_ref().map(|l| &l.scale)
    }

    /// Whether weight fake quant is enabled in the config.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The observer.
    pub fn observer(&self) -> &MinMaxObserver {
        &self.observer
    }
}
