//! Fully connected layer for QAT.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::harness::{fan_in_bias, name_of, uniform_fan_in};
use super::{
    Activation, LayerError, LayerExport, LinearExport, QatLayer, QatModule, QuantConfig,
    QuantHarness,
};

/// Shape and options of a fully connected layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: i64,
    /// Output features.
    pub out_features: i64,
    /// Fused activation.
    pub activation: Activation,
    /// Quantization config.
    pub quant: QuantConfig,
}

impl LinearConfig {
    /// `in_features → out_features`, no activation, default quant config.
    pub fn new(in_features: i64, out_features: i64) -> Self {
        Self {
            in_features,
            out_features,
            activation: Activation::None,
            quant: QuantConfig::default(),
        }
    }

    qat_core::by_value_setters! {
        /// Sets the fused activation.
        pub fn activation(a: Activation) => activation;
        /// Sets the quant config.
        pub fn quant(q: QuantConfig) => quant;
    }
}

/// Linear layer `y = FQ_a(act(x·FQ_w(W)ᵀ + b))`, `W: [out, in]` (per-channel axis 0), input
/// `[N, in]`. Initialisation as PyTorch: `W, b ~ U(−1/√in, 1/√in)`; `b` in
/// [`NO_DECAY_GROUP`](super::NO_DECAY_GROUP).
///
/// ```
/// use qat_train::layers::{LinearConfig, QatLinear, QatModule};
/// use tch::{Device, Kind, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut fc = QatLinear::new(&(vs.root() / "fc"), LinearConfig::new(16, 10))?;
/// let y = fc.forward_t(&Tensor::ones([4, 16], (Kind::Float, Device::Cpu)), true)?;
/// assert_eq!(y.size(), vec![4, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatLinear {
    cfg: LinearConfig,
    weight: Tensor,
    bias: Tensor,
    harness: QuantHarness,
}

impl QatLinear {
    /// Creates the layer under `path`.
    pub fn new(path: &nn::Path<'_>, cfg: LinearConfig) -> Result<Self, LayerError> {
        let name = name_of(path);
        let (in_features, out_features) = (cfg.in_features, cfg.out_features);
        if in_features <= 0 || out_features <= 0 {
            return Err(LayerError::config(
                &name,
                format!("features {in_features} → {out_features} must be > 0"),
            ));
        }
        let weight = uniform_fan_in(
            path,
            &name,
            ("weight", "init weight"),
            &[out_features, in_features],
            in_features,
        )?;
        let bias = fan_in_bias(path, &name, out_features, in_features)?;
        // The quantizers' buffers come after the parameters (the VarStore's order).
        Ok(Self {
            harness: QuantHarness::weighted(path, &cfg.quant, out_features)?,
            cfg,
            weight,
            bias,
        })
    }

    /// Float weights `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias `[out]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The configuration.
    pub fn config(&self) -> &LinearConfig {
        &self.cfg
    }
}

impl QatLayer for QatLinear {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        let h = &self.harness;
        Ok(LayerExport::Linear(LinearExport {
            name: h.name().to_string(),
            weight: h.export_tensor(&self.weight)?,
            bias: h.export_vec(&self.bias)?,
            weight_quant: h.weight_export(&self.weight.detach())?,
            activation: self.cfg.activation,
            output: h.own_output_export()?,
        }))
    }
}

impl QatModule for QatLinear {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        let n = self.harness.name();
        let s = x.size();
        if s.len() != 2 || s[1] != self.cfg.in_features {
            return Err(LayerError::shape(
                n,
                format!("[N, {}]", self.cfg.in_features),
                s,
            ));
        }
        let w = self.harness.quantize_weights(&self.weight)?;
        let bias = self.harness.quantize_bias(&self.bias)?;
        let y = x
            .f_linear(&w, Some(&bias))
            .map_err(LayerError::torch(self.harness.name(), "linear"))?;
        self.harness
            .quantize_accumulated(y, self.cfg.activation, train, true)
    }
}
