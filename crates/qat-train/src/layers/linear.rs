//! Fully connected layer for QAT.

use tch::{Tensor, nn};

use super::export::{ExportTensor, vec_of};
use super::quantizer::apply_state;
use super::{
    Activation, LayerError, LayerExport, LinearExport, OutputQuantizer, QatControl, QatLayer,
    QatModule, QuantConfig, QuantState, WeightQuantizer, config::NO_DECAY_GROUP,
};

/// Linear layer `y = FQ_a(act(x·FQ_w(W)ᵀ + b))`, `W: [out, in]` (per-channel axis 0), input
/// `[N, in]`. Initialisation as PyTorch: `W, b ~ U(−1/√in, 1/√in)`; `b` in [`NO_DECAY_GROUP`].
///
/// ```
/// use qat_train::layers::{Activation, QatLinear, QatModule, QuantConfig};
/// use tch::{Device, Kind, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut fc = QatLinear::new(&(vs.root() / "fc"), 16, 10, Activation::None, QuantConfig::default())?;
/// let y = fc.forward_t(&Tensor::ones([4, 16], (Kind::Float, Device::Cpu)), true)?;
/// assert_eq!(y.size(), vec![4, 10]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatLinear {
    name: String,
    in_features: i64,
    out_features: i64,
    activation: Activation,
    quant: QuantConfig,
    weight: Tensor,
    bias: Tensor,
    wq: WeightQuantizer,
    oq: OutputQuantizer,
    state: QuantState,
    input_scale: Option<f32>,
}

impl QatLinear {
    /// Creates the layer under `path`.
    pub fn new(
        path: &nn::Path<'_>,
        in_features: i64,
        out_features: i64,
        activation: Activation,
        quant: QuantConfig,
    ) -> Result<Self, LayerError> {
        let name = path.components().collect::<Vec<_>>().join(".");
        if in_features <= 0 || out_features <= 0 {
            return Err(LayerError::Config {
                layer: name,
                what: format!("features {in_features} → {out_features} must be > 0"),
            });
        }
        let bound = 1.0 / (in_features as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = path
            .f_var("weight", &[out_features, in_features], init)
            .map_err(LayerError::torch(&name, "init weight"))?;
        let bias = path
            .set_group(NO_DECAY_GROUP)
            .f_var("bias", &[out_features], init)
            .map_err(LayerError::torch(&name, "init bias"))?;
        let wq = WeightQuantizer::new(&(path / "weight_q"), &quant, out_features, &name)?;
        let oq = OutputQuantizer::new(&(path / "act_q"), &quant)?;
        Ok(Self {
            name,
            in_features,
            out_features,
            activation,
            quant,
            weight,
            bias,
            wq,
            oq,
            state: QuantState::default(),
            input_scale: None,
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

    /// The run-time state.
    pub fn state(&self) -> QuantState {
        self.state
    }

    /// The output quantizer.
    pub fn output_quantizer(&self) -> &OutputQuantizer {
        &self.oq
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        self.out_features
    }
}

impl QatLayer for QatLinear {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, c: QatControl) {
        apply_state(&mut self.state, c);
        self.wq.control(c);
        self.oq.control_observer(c);
    }

    fn set_input_scale(&mut self, s_in: Option<f32>) {
        self.input_scale = s_in;
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        let n = &self.name;
        Ok(LayerExport::Linear(LinearExport {
            name: self.name.clone(),
            weight: ExportTensor::from_tensor(&self.weight)
                .map_err(LayerError::torch(n, "export"))?,
            bias: vec_of(&self.bias).map_err(LayerError::torch(n, "export"))?,
            weight_qparams: self.wq.qparams_for(&self.weight.detach(), n)?,
            weight_bits: self.quant.weight_bits,
            weight_scheme: self.quant.weight_scheme,
            weight_granularity: self.quant.weight_granularity,
            quantize_weights: self.wq.enabled(),
            weight_range: self.quant.weight_range,
            activation: self.activation,
            output: self.oq.export()?,
        }))
    }
}

impl QatModule for QatLinear {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        let n = &self.name;
        let s = x.size();
        if s.len() != 2 || s[1] != self.in_features {
            return Err(LayerError::Shape {
                layer: n.clone(),
                expected: format!("[N, {}]", self.in_features),
                got: s,
            });
        }
        let w = self.wq.forward(&self.weight, &self.state, n)?;
        let bias = match self.input_scale {
            Some(s_in) => self.wq.fake_quant_bias(&self.bias, s_in, &self.state, n)?,
            None => self.bias.shallow_clone(),
        };
        let y = x
            .f_linear(&w, Some(&bias))
            .map_err(LayerError::torch(n, "linear"))?;
        self.oq
            .apply_activated(y, self.activation, train, &self.state)
    }
}
