//! A stand-alone activation fake quant: the model input's quantizer.

use tch::{Tensor, nn};

use super::{LayerError, LayerExport, QatLayer, QatModule, QuantConfig, QuantHarness};

/// `y = FQ(x)` with its own observed range (the model input: its range is the input range at
/// export). The observer lives at the layer's path itself.
///
/// ```
/// use qat_train::layers::{QatModule, QatQuantize, QuantConfig};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut q = QatQuantize::new(&(vs.root() / "input"), &QuantConfig::default())?;
/// let x = Tensor::from_slice(&[0.0f32, 0.5, 2.55]);
/// let y = q.forward_t(&x, true)?; // first batch sets the range [0, 2.55]: S = 0.01
/// assert_eq!(Vec::<f32>::try_from(&y)?, vec![0.0, 0.5, 2.55]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatQuantize {
    harness: QuantHarness,
}

impl QatQuantize {
    /// The quantizer with its observer under `path`.
    pub fn new(path: &nn::Path<'_>, quant: &QuantConfig) -> Result<Self, LayerError> {
        Ok(Self {
            harness: QuantHarness::standalone(path, quant)?,
        })
    }
}

impl QatLayer for QatQuantize {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        Ok(LayerExport::Quantize(self.harness.own_output_export()?))
    }
}

impl QatModule for QatQuantize {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.harness.quantize_output(x, train)
    }
}
