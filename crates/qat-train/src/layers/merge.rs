//! Quantized elementwise add and channel concat (paper §3: "activations are quantized … after
//! bypass connections (additions) and concatenations"): each has its own output observer and fake
//! quant, so the runtime can requantize every input to the output's parameters.

use tch::{Tensor, nn};

use super::quantizer::apply_state;
use super::{
    Activation, LayerError, LayerExport, MergeExport, OutputQuantizer, QatControl, QatLayer,
    QuantConfig, QuantState,
};

/// `y = FQ(act(a + b))` (TFLite's quantized add with a fused activation clamp).
///
/// ```
/// use qat_train::layers::{Activation, QatAdd, QuantConfig};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut add = QatAdd::new(&(vs.root() / "add"), Activation::Relu, QuantConfig::default())?;
/// let y = add.forward_t(&Tensor::from_slice(&[1.0f32, -3.0]), &Tensor::from_slice(&[1.55f32, 1.0]), true)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![2.55, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatAdd {
    name: String,
    activation: Activation,
    oq: OutputQuantizer,
    state: QuantState,
}

impl QatAdd {
    /// An add with its output quantizer under `path` (`quant.act_*` fields are used).
    pub fn new(
        path: &nn::Path<'_>,
        activation: Activation,
        quant: QuantConfig,
    ) -> Result<Self, LayerError> {
        Ok(Self {
            name: path.components().collect::<Vec<_>>().join("."),
            activation,
            oq: OutputQuantizer::new(&(path / "act_q"), &quant)?,
            state: QuantState::default(),
        })
    }

    /// Forward: inputs must have equal shapes.
    pub fn forward_t(&mut self, a: &Tensor, b: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        if a.size() != b.size() {
            return Err(LayerError::Shape {
                layer: self.name.clone(),
                expected: format!("second input of shape {:?}", a.size()),
                got: b.size(),
            });
        }
        let y = a.f_add(b).map_err(LayerError::torch(&self.name, "add"))?;
        let y = self
            .activation
            .apply(y)
            .map_err(LayerError::torch(&self.name, "activation"))?;
        self.oq.apply(&y, train, &self.state)
    }

    /// The output quantizer.
    pub fn output_quantizer(&self) -> &OutputQuantizer {
        &self.oq
    }
}

impl QatLayer for QatAdd {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, c: QatControl) {
        apply_state(&mut self.state, c);
        self.oq.control_observer(c);
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        Ok(LayerExport::Add(MergeExport {
            name: self.name.clone(),
            inputs: 2,
            activation: self.activation,
            output: self.oq.export()?,
        }))
    }
}

/// `y = FQ(concat(xs, dim = 1))` along channels (NCHW; the runtime's NHWC last axis).
#[derive(Debug)]
pub struct QatConcat {
    name: String,
    oq: OutputQuantizer,
    state: QuantState,
    inputs: usize,
}

impl QatConcat {
    /// A concat of `inputs ≥ 1` tensors with its output quantizer under `path`.
    pub fn new(path: &nn::Path<'_>, inputs: usize, quant: QuantConfig) -> Result<Self, LayerError> {
        let name = path.components().collect::<Vec<_>>().join(".");
        if inputs == 0 {
            return Err(LayerError::Config {
                layer: name,
                what: "concat needs at least one input".to_string(),
            });
        }
        Ok(Self {
            oq: OutputQuantizer::new(&(path / "act_q"), &quant)?,
            name,
            state: QuantState::default(),
            inputs,
        })
    }

    /// Forward over exactly the configured number of inputs.
    pub fn forward_t(&mut self, xs: &[&Tensor], train: bool) -> Result<Tensor, LayerError> {
        if xs.len() != self.inputs {
            return Err(LayerError::Shape {
                layer: self.name.clone(),
                expected: format!("{} inputs", self.inputs),
                got: vec![xs.len() as i64],
            });
        }
        let y = Tensor::f_cat(xs, 1).map_err(LayerError::torch(&self.name, "cat"))?;
        self.oq.apply(&y, train, &self.state)
    }

    /// The output quantizer.
    pub fn output_quantizer(&self) -> &OutputQuantizer {
        &self.oq
    }
}

impl QatLayer for QatConcat {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, c: QatControl) {
        apply_state(&mut self.state, c);
        self.oq.control_observer(c);
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        Ok(LayerExport::Concat(MergeExport {
            name: self.name.clone(),
            inputs: self.inputs,
            activation: Activation::None,
            output: self.oq.export()?,
        }))
    }
}
