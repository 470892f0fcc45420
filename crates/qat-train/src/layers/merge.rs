//! Quantized elementwise add and channel concat (paper §3: "activations are quantized … after
//! bypass connections (additions) and concatenations"): each has its own output observer and fake
//! quant, so the runtime can requantize every input to the output's parameters.

use tch::{Tensor, nn};

use super::config::activate;
use super::harness::name_of;
use super::{
    Activation, LayerError, LayerExport, MergeExport, QatLayer, QuantConfig, QuantHarness,
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
    activation: Activation,
    harness: QuantHarness,
}

impl QatAdd {
    /// An add with its output quantizer under `path` (`quant.act_*` fields are used).
    pub fn new(
        path: &nn::Path<'_>,
        activation: Activation,
        quant: QuantConfig,
    ) -> Result<Self, LayerError> {
        Ok(Self {
            activation,
            harness: QuantHarness::output(path, &quant)?,
        })
    }

    /// Forward: inputs must have equal shapes.
    pub fn forward_t(&mut self, a: &Tensor, b: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        let n = self.harness.name();
        if a.size() != b.size() {
            return Err(LayerError::shape(
                n,
                format!("second input of shape {:?}", a.size()),
                b.size(),
            ));
        }
        let y = a.f_add(b).map_err(LayerError::torch(n, "add"))?;
        let y = activate(self.activation, y).map_err(LayerError::torch(n, "activation"))?;
        self.harness.quantize_output(&y, train)
    }
}

impl QatLayer for QatAdd {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        merge_export(&self.harness, 2, self.activation).map(LayerExport::Add)
    }
}

/// `y = FQ(concat(xs, dim = 1))` along channels (NCHW; the runtime's NHWC last axis).
#[derive(Debug)]
pub struct QatConcat {
    inputs: usize,
    harness: QuantHarness,
}

impl QatConcat {
    /// A concat of `inputs ≥ 1` tensors with its output quantizer under `path`.
    pub fn new(path: &nn::Path<'_>, inputs: usize, quant: QuantConfig) -> Result<Self, LayerError> {
        if inputs == 0 {
            return Err(LayerError::config(
                &name_of(path),
                "concat needs at least one input",
            ));
        }
        Ok(Self {
            inputs,
            harness: QuantHarness::output(path, &quant)?,
        })
    }

    /// Forward over exactly the configured number of inputs.
    pub fn forward_t(&mut self, xs: &[&Tensor], train: bool) -> Result<Tensor, LayerError> {
        let n = self.harness.name();
        if xs.len() != self.inputs {
            return Err(LayerError::shape(
                n,
                format!("{} inputs", self.inputs),
                vec![xs.len() as i64],
            ));
        }
        let cat = Tensor::f_cat(xs, 1).map_err(LayerError::torch(n, "cat"))?;
        self.harness.quantize_output(&cat, train)
    }
}

impl QatLayer for QatConcat {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        merge_export(&self.harness, self.inputs, Activation::None).map(LayerExport::Concat)
    }
}

/// The export of a merge of `inputs` tensors followed by `activation`, quantized by `harness`.
fn merge_export(
    harness: &QuantHarness,
    inputs: usize,
    activation: Activation,
) -> Result<MergeExport, LayerError> {
    Ok(MergeExport {
        name: harness.name().to_string(),
        inputs,
        activation,
        output: harness.own_output_export()?,
    })
}
