//! Whole-model control ([`QatModel`]) and a simple chain container ([`QatSequential`]).

use tch::Tensor;

use super::{LayerError, LayerExport, QatControl, QatLayer, QatModule};

/// A model made of QAT layers. Implement [`QatModel::layers`] and [`QatModel::layers_mut`] (every
/// layer, in graph order) and get the whole-model switches the schedule needs:
/// [`set_fake_quant`](QatModel::set_fake_quant) (quantization delay / float mode),
/// [`freeze_bn`](QatModel::freeze_bn), [`freeze_observers`](QatModel::freeze_observers),
/// [`set_calibrate`](QatModel::set_calibrate), and [`exports`](QatModel::exports).
pub trait QatModel {
    /// Every layer, in graph (topological) order.
    fn layers(&self) -> Vec<&dyn QatLayer>;

    /// Every layer, mutably, in the same order.
    fn layers_mut(&mut self) -> Vec<&mut dyn QatLayer>;

    /// Sends one switch to every layer.
    fn control(&mut self, c: QatControl) {
        for l in self.layers_mut() {
            l.control(c);
        }
    }

    /// Fake quant on (QAT) or off (float mode, quantization delay; observers keep collecting).
    fn set_fake_quant(&mut self, on: bool) {
        self.control(QatControl::FakeQuant(on));
    }

    /// Freezes (`true`) or unfreezes BN statistics of every conv+BN layer.
    fn freeze_bn(&mut self, frozen: bool) {
        self.control(QatControl::FreezeBn(frozen));
    }

    /// Freezes (`true`) or unfreezes every observer (ranges kept).
    fn freeze_observers(&mut self, frozen: bool) {
        self.control(QatControl::FreezeObservers(frozen));
    }

    /// Lets observers collect in eval mode (PTQ calibration without touching BN statistics).
    fn set_calibrate(&mut self, on: bool) {
        self.control(QatControl::Calibrate(on));
    }

    /// The export view of every layer, in order.
    fn exports(&self) -> Result<Vec<LayerExport>, LayerError> {
        self.layers().into_iter().map(|l| l.export()).collect()
    }
}

/// A chain of single-input QAT layers applied in order.
///
/// ```
/// use qat_train::layers::*;
/// use tch::{Device, Kind, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let p = vs.root();
/// let mut net = QatSequential::new()
///     .push(QatConvBn2d::new(&(&p / "c1"), ConvBnConfig::new(
///         Conv2dConfig::new(1, 4, 3).padding(1).activation(Activation::Relu6)))?)
///     .push(QatGlobalAvgPool::new(&(&p / "gap"), QuantConfig::default())?)
///     .push(QatLinear::new(&(&p / "fc"), 4, 10, Activation::None, QuantConfig::default())?);
/// net.set_fake_quant(false); // quantization delay: float, observers collecting
/// let y = net.forward_t(&Tensor::ones([2, 1, 8, 8], (Kind::Float, Device::Cpu)), true)?;
/// assert_eq!(y.size(), vec![2, 10]);
/// net.set_fake_quant(true);
/// net.freeze_bn(true);
/// assert_eq!(net.exports()?.len(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct QatSequential {
    layers: Vec<Box<dyn QatModule>>,
}

impl QatSequential {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer.
    pub fn push<M: QatModule + 'static>(mut self, m: M) -> Self {
        self.layers.push(Box::new(m));
        self
    }

    /// Appends a boxed layer.
    pub fn push_boxed(&mut self, m: Box<dyn QatModule>) {
        self.layers.push(m);
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Forward through every layer.
    pub fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        let mut y = x.shallow_clone();
        for l in &mut self.layers {
            y = l.forward_t(&y, train)?;
        }
        Ok(y)
    }
}

impl QatModel for QatSequential {
    fn layers(&self) -> Vec<&dyn QatLayer> {
        self.layers
            .iter()
            .map(|l| l.as_ref() as &dyn QatLayer)
            .collect()
    }

    fn layers_mut(&mut self) -> Vec<&mut dyn QatLayer> {
        self.layers
            .iter_mut()
            .map(|l| l.as_mut() as &mut dyn QatLayer)
            .collect()
    }
}
