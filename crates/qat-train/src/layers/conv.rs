//! Plain conv (with bias) and depthwise conv, QAT (paper §3: weights fake-quantized, bias not).

use tch::{Tensor, nn};

use super::harness::{fan_in_bias, name_of};
use super::{
    Activation, ConvExport, LayerError, LayerExport, QatLayer, QatModule, QuantConfig, QuantHarness,
};

/// Geometry and options of a 2-D convolution (NCHW input, `OIHW` weights).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Kernel `[h, w]`.
    pub kernel: [i64; 2],
    /// Stride `[h, w]`.
    pub stride: [i64; 2],
    /// Symmetric zero padding `[h, w]`.
    pub padding: [i64; 2],
    /// Dilation `[h, w]`.
    pub dilation: [i64; 2],
    /// Groups (`in = out = groups` for depthwise).
    pub groups: i64,
    /// Whether the conv has a bias (ignored by [`super::QatConvBn2d`], which has β instead).
    pub bias: bool,
    /// Fused activation.
    pub activation: Activation,
    /// Quantization config.
    pub quant: QuantConfig,
}

impl Conv2dConfig {
    /// A `k×k` conv, stride 1, no padding, with bias, no activation, default quant config.
    pub fn new(in_channels: i64, out_channels: i64, k: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            activation: Activation::None,
            quant: QuantConfig::default(),
        }
    }

    /// A `k×k` depthwise conv over `channels` channels (`groups = channels`, weights `[C, 1, k, k]`,
    /// per-channel weight quantization along axis 0) with "same" padding `k/2`.
    pub fn depthwise(channels: i64, k: i64) -> Self {
        Self {
            groups: channels,
            padding: [k / 2, k / 2],
            ..Self::new(channels, channels, k)
        }
    }

    qat_core::by_value_setters! {
        /// Sets the stride.
        pub fn stride(s: i64) => stride = [s, s];
        /// Sets the padding.
        pub fn padding(p: i64) => padding = [p, p];
        /// Sets the fused activation.
        pub fn activation(a: Activation) => activation;
        /// Sets whether there is a bias.
        pub fn bias(b: bool) => bias;
        /// Sets the quant config.
        pub fn quant(q: QuantConfig) => quant;
    }

    pub(crate) fn validate(&self, layer: &str) -> Result<(), LayerError> {
        let ok = self.in_channels > 0
            && self.out_channels > 0
            && self.groups > 0
            && self.in_channels % self.groups == 0
            && self.out_channels % self.groups == 0
            && self.kernel.iter().all(|&k| k > 0)
            && self.stride.iter().all(|&s| s > 0)
            && self.dilation.iter().all(|&d| d > 0)
            && self.padding.iter().all(|&p| p >= 0);
        if ok {
            Ok(())
        } else {
            Err(LayerError::config(
                layer,
                format!("invalid conv geometry {self:?}"),
            ))
        }
    }

    pub(crate) fn weight_shape(&self) -> [i64; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }

    pub(crate) fn check_input(&self, x: &Tensor, layer: &str) -> Result<(), LayerError> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.in_channels {
            return Err(LayerError::shape(
                layer,
                format!("[N, {}, H, W]", self.in_channels),
                s,
            ));
        }
        Ok(())
    }

    /// The conv in f32. On CUDA it is libtorch's `_convolution` with TF32 off: cuDNN convolutions use
    /// TF32 (10-bit mantissa) by default on Ampere and later GPUs, which moved the fake-quant model's
    /// codes away from the export's f32 simulation (measured on an H100, W8A8: block5.pw 71% of codes
    /// equal to the simulation, up to 8 codes apart; argmax agreement with the integer model 99.2% at
    /// W4A4). On the CPU it is `conv2d`.
    pub(crate) fn conv(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        layer: &str,
    ) -> Result<Tensor, LayerError> {
        if x.device().is_cuda() {
            return x
                .f_internal_convolution(
                    w,
                    b,
                    self.stride,
                    self.padding,
                    self.dilation,
                    false,
                    [0i64, 0],
                    self.groups,
                    false,
                    false,
                    true,
                    false,
                )
                .map_err(LayerError::torch(layer, "conv2d"));
        }
        x.f_conv2d(w, b, self.stride, self.padding, self.dilation, self.groups)
            .map_err(LayerError::torch(layer, "conv2d"))
    }

    pub(crate) fn geometry_usize(&self) -> ([usize; 2], [usize; 2], [usize; 2], usize) {
        let u = |a: [i64; 2]| [a[0] as usize, a[1] as usize];
        (
            u(self.stride),
            u(self.padding),
            u(self.dilation),
            self.groups as usize,
        )
    }
}

/// Conv2d (optionally depthwise) with bias for QAT: `y = FQ_a(act(conv(x, FQ_w(W)) + b))`.
///
/// Weights are initialised Kaiming-uniform (tch's default), the bias `U(−1/√fan_in, 1/√fan_in)`
/// (PyTorch's default) in group [`NO_DECAY_GROUP`](super::NO_DECAY_GROUP).
///
/// ```
/// use qat_train::layers::{Activation, Conv2dConfig, QatConv2d, QatModule};
/// use tch::{Device, Kind, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut dw = QatConv2d::new(&(vs.root() / "dw"),
///     Conv2dConfig::depthwise(8, 3).activation(Activation::Relu6))?;
/// let y = dw.forward_t(&Tensor::ones([2, 8, 5, 5], (Kind::Float, Device::Cpu)), true)?;
/// assert_eq!(y.size(), vec![2, 8, 5, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatConv2d {
    cfg: Conv2dConfig,
    weight: Tensor,
    bias: Option<Tensor>,
    harness: QuantHarness,
}

impl QatConv2d {
    /// Creates the layer's parameters and quantizers under `path`.
    pub fn new(path: &nn::Path<'_>, cfg: Conv2dConfig) -> Result<Self, LayerError> {
        let name = name_of(path);
        cfg.validate(&name)?;
        let ws = cfg.weight_shape();
        let weight = path
            .f_kaiming_uniform("weight", &ws)
            .map_err(LayerError::torch(&name, "init weight"))?;
        let bias = if cfg.bias {
            Some(fan_in_bias(
                path,
                &name,
                cfg.out_channels,
                ws[1] * ws[2] * ws[3],
            )?)
        } else {
            None
        };
        let harness = QuantHarness::weighted(path, &cfg.quant, cfg.out_channels)?;
        Ok(Self {
            cfg,
            weight,
            bias,
            harness,
        })
    }

    /// The float weights (trainable variable, `OIHW`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }
}

impl QatLayer for QatConv2d {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        let h = &self.harness;
        let weight = h.export_tensor(&self.weight)?;
        let bias = self.bias.as_ref().map(|b| h.export_vec(b)).transpose()?;
        let (stride, padding, dilation, groups) = self.cfg.geometry_usize();
        Ok(LayerExport::Conv(Box::new(ConvExport {
            name: h.name().to_string(),
            folded_weight: weight.clone(),
            folded_bias: bias
                .clone()
                .unwrap_or_else(|| vec![0.0; self.cfg.out_channels as usize]),
            weight_quant: h.weight_export(&self.weight.detach())?,
            weight,
            bias,
            bn: None,
            stride,
            padding,
            dilation,
            groups,
            activation: self.cfg.activation,
            output: h.own_output_export()?,
        })))
    }
}

impl QatModule for QatConv2d {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.cfg.check_input(x, self.harness.name())?;
        let w = self.harness.quantize_weights(&self.weight)?;
        let bias = match &self.bias {
            Some(b) => Some(self.harness.quantize_bias(b)?),
            None => None,
        };
        let y = self.cfg.conv(x, &w, bias.as_ref(), self.harness.name())?;
        self.harness
            .quantize_accumulated(y, self.cfg.activation, train, false)
    }
}
