//! The quantization harness every QAT layer is built around: its weight quantizer, its output
//! quantizer, the run-time switches and the scale of its input grid. The layers compute (conv,
//! linear, add, pooling); the harness quantizes, and it alone implements the switches of
//! [`QatLayer`](super::QatLayer).

use qat_autograd::TensorQParams;
use qat_core::{QuantParams, Target};
use qat_export::ir::Activation;
use tch::{Tensor, nn};

use super::config::NO_DECAY_GROUP;
use super::export::{ExportTensor, vec_of};
use super::target_stage::AccumulatorStage;
use super::{
    LayerError, OutputExport, OutputQuantizer, QatControl, QuantConfig, QuantState, WeightExport,
    WeightQuantizer,
};

/// A layer's quantizers and switches. Which quantizers it has depends on the layer:
///
/// | constructor | weight quantizer | output quantizer | layers |
/// |---|---|---|---|
/// | [`QuantHarness::weighted`] | `<path>.weight_q` | `<path>.act_q` | conv, conv+BN, linear |
/// | [`QuantHarness::output`] | — | `<path>.act_q` | add, concat, average pools |
/// | [`QuantHarness::standalone`] | — | `<path>` itself | [`super::QatQuantize`] (the model input) |
/// | [`QuantHarness::none`] | — | — | max pooling (keeps its input's grid) |
///
/// The switches ([`QatControl`]) set the [`QuantState`] and freeze or unfreeze the output
/// observer; the input scale, set by the model once activation ranges are frozen, lets the bias be
/// simulated on the integer model's int32 grid ([`WeightQuantizer::fake_quant_bias`]).
#[derive(Debug)]
pub struct QuantHarness {
    name: String,
    quant: QuantConfig,
    weights: Option<WeightQuantizer>,
    output: Option<OutputQuantizer>,
    state: QuantState,
    input_scale: Option<f32>,
    input_params: Option<QuantParams>,
}

/// The layer name of a VarStore path (its components joined by dots).
pub(crate) fn name_of(path: &nn::Path<'_>) -> String {
    path.components().collect::<Vec<_>>().join(".")
}

/// PyTorch's initialisation of the parameter `var` (shape `shape`) of layer `layer` under `path`:
/// `U(−1/√fan_in, 1/√fan_in)`; `op` names the step in an error.
pub(crate) fn uniform_fan_in(
    path: &nn::Path<'_>,
    layer: &str,
    (var, op): (&str, &'static str),
    shape: &[i64],
    fan_in: i64,
) -> Result<Tensor, LayerError> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    path.f_var(var, shape, init)
        .map_err(LayerError::torch(layer, op))
}

/// PyTorch's bias of a layer with `channels` outputs and `fan_in` inputs per output: the variable
/// `bias` under `path`, `U(−1/√fan_in, 1/√fan_in)` ([`uniform_fan_in`]), in [`NO_DECAY_GROUP`].
pub(crate) fn fan_in_bias(
    path: &nn::Path<'_>,
    layer: &str,
    channels: i64,
    fan_in: i64,
) -> Result<Tensor, LayerError> {
    uniform_fan_in(
        &path.set_group(NO_DECAY_GROUP),
        layer,
        ("bias", "init bias"),
        &[channels],
        fan_in,
    )
}

impl QuantHarness {
    fn with(
        path: &nn::Path<'_>,
        quant: &QuantConfig,
        weights: Option<WeightQuantizer>,
        output: Option<OutputQuantizer>,
    ) -> Self {
        Self {
            name: name_of(path),
            quant: *quant,
            weights,
            output,
            state: QuantState::default(),
            input_scale: None,
            input_params: None,
        }
    }

    /// Weight quantizer for `out_channels` output channels under `path / "weight_q"` and output
    /// quantizer under `path / "act_q"` (conv, conv+BN, linear).
    pub fn weighted(
        path: &nn::Path<'_>,
        quant: &QuantConfig,
        out_channels: i64,
    ) -> Result<Self, LayerError> {
        let name = name_of(path);
        let wq = WeightQuantizer::new(&(path / "weight_q"), quant, out_channels, &name)?;
        let oq = OutputQuantizer::new(&(path / "act_q"), quant)?;
        Ok(Self::with(path, quant, Some(wq), Some(oq)))
    }

    /// Output quantizer under `path / "act_q"` (add, concat, average pools).
    pub fn output(path: &nn::Path<'_>, quant: &QuantConfig) -> Result<Self, LayerError> {
        let oq = OutputQuantizer::new(&(path / "act_q"), quant)?;
        Ok(Self::with(path, quant, None, Some(oq)))
    }

    /// Output quantizer whose observer lives at `path` itself (a stand-alone quantizer).
    pub fn standalone(path: &nn::Path<'_>, quant: &QuantConfig) -> Result<Self, LayerError> {
        let oq = OutputQuantizer::new(path, quant)?;
        Ok(Self::with(path, quant, None, Some(oq)))
    }

    /// No quantizer (max pooling: a max of values on one grid is on that grid).
    pub fn none(path: &nn::Path<'_>) -> Self {
        Self::with(path, &QuantConfig::default(), None, None)
    }

    /// The layer's name (its VarStore path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layer's quant config.
    pub fn quant(&self) -> &QuantConfig {
        &self.quant
    }

    /// The run-time state.
    pub fn state(&self) -> QuantState {
        self.state
    }

    /// The scale `S_in` of the input grid, once the model set it.
    pub fn input_scale(&self) -> Option<f32> {
        self.input_scale
    }

    /// The weight quantizer, if the layer has weights.
    pub fn weight_quantizer(&self) -> Option<&WeightQuantizer> {
        self.weights.as_ref()
    }

    /// The output quantizer, if the layer has its own output grid.
    pub fn output_quantizer(&self) -> Option<&OutputQuantizer> {
        self.output.as_ref()
    }

    /// Applies a switch: fake quant and calibration set the state, `FreezeObservers` freezes or
    /// unfreezes the output observer (weight ranges always follow the weights).
    pub fn control(&mut self, c: QatControl) {
        self.state.apply(c);
        if let (QatControl::FreezeObservers(frozen), Some(oq)) = (c, &mut self.output) {
            oq.freeze(frozen);
        }
    }

    /// Sets the scale of the grid the layer's input lies on (`None`: not known, or not frozen).
    pub fn set_input_scale(&mut self, s_in: Option<f32>) {
        self.input_scale = s_in;
        if self.input_params.map(|p| p.scale()) != s_in {
            self.input_params = None;
        }
    }

    /// Sets the parameters of the grid the layer's input lies on (and its scale).
    pub fn set_input_params(&mut self, p: Option<QuantParams>) {
        self.input_scale = p.map(|p| p.scale());
        self.input_params = p;
    }

    /// The parameters of the input grid, once the model set them.
    pub fn input_params(&self) -> Option<QuantParams> {
        self.input_params
    }

    /// The deployment target QAT trains for ([`QuantConfig::target`]).
    pub fn target(&self) -> Option<Target> {
        self.quant.target
    }

    /// Whether the layer's output keeps its input's parameters because its target cannot rescale
    /// an average pool ([`Target::average_pool_rescales`]).
    pub fn ties_pool_output(&self) -> bool {
        self.quant
            .target
            .is_some_and(|t| !t.average_pool_rescales())
    }

    /// Whether the weights are fake-quantized now (switched on, and enabled in the config).
    pub(crate) fn fake_quantizes_weights(&self) -> bool {
        self.state.fake_quant_weights && self.weights.as_ref().is_some_and(|w| w.enabled())
    }

    fn missing(&self, what: &str) -> LayerError {
        LayerError::config(&self.name, format!("the layer has no {what} quantizer"))
    }

    /// `FQ_w(w)` ([`WeightQuantizer::forward`]).
    pub(crate) fn quantize_weights(&mut self, w: &Tensor) -> Result<Tensor, LayerError> {
        match &mut self.weights {
            Some(wq) => wq.forward(w, &self.state, &self.name),
            None => Err(self.missing("weight")),
        }
    }

    /// The bias as the integer model adds it once the input scale is known
    /// ([`WeightQuantizer::fake_quant_bias`]), else `b`.
    pub(crate) fn quantize_bias(&self, b: &Tensor) -> Result<Tensor, LayerError> {
        match (&self.weights, self.input_scale) {
            (Some(wq), Some(s_in)) => wq.fake_quant_bias(b, s_in, &self.state, &self.name),
            _ => Ok(b.shallow_clone()),
        }
    }

    /// `FQ_a(y)` ([`OutputQuantizer::apply`]).
    pub(crate) fn quantize_output(
        &mut self,
        y: &Tensor,
        train: bool,
    ) -> Result<Tensor, LayerError> {
        match &mut self.output {
            Some(oq) => oq.apply(y, train, &self.state),
            None => Err(self.missing("output")),
        }
    }

    /// `FQ_a(act(z))`, the activation fused where exact ([`OutputQuantizer::apply_activated`]).
    pub(crate) fn quantize_activated(
        &mut self,
        z: Tensor,
        act: Activation,
        train: bool,
    ) -> Result<Tensor, LayerError> {
        match &mut self.output {
            Some(oq) => oq.apply_activated(z, act, train, &self.state),
            None => Err(self.missing("output")),
        }
    }

    /// `FQ_a(act(z))` ([`Self::quantize_activated`]) for a conv (`[N, C, H, W]`) or linear
    /// (`[N, C]`, `fully_connected`) output `z` that is the inference layer's (bias on the int32
    /// grid). With a [`QuantConfig::target`], once the input grid is known and the output range
    /// frozen, the forward value is the target's requantization of the accumulator
    /// ([`super::target_stage::requantize_accumulators`]) and the gradient that of `FQ_a(act(z))`.
    pub(crate) fn quantize_accumulated(
        &mut self,
        z: Tensor,
        act: Activation,
        train: bool,
        fully_connected: bool,
    ) -> Result<Tensor, LayerError> {
        let stage = self.accumulator_stage()?;
        let z_host = stage.as_ref().map(|_| z.shallow_clone());
        let y = self.quantize_activated(z, act, train)?;
        let (Some(stage), Some(z)) = (stage, z_host) else {
            return Ok(y);
        };
        let value = tch::no_grad(|| stage.requantize(&z, act, fully_connected)).map_err(|e| {
            LayerError::config(&self.name, format!("{} requantization: {e}", stage.target))
        })?;
        self.straight_through(&y, &value)
    }

    /// `y + (value − y).detach()`: the forward value `value`, the gradient of `y`.
    fn straight_through(&self, y: &Tensor, value: &Tensor) -> Result<Tensor, LayerError> {
        let d = value
            .f_sub(
                &y.f_detach()
                    .map_err(LayerError::torch(&self.name, "detach"))?,
            )
            .map_err(LayerError::torch(&self.name, "target value"))?;
        y.f_add(&d)
            .map_err(LayerError::torch(&self.name, "target value"))
    }

    /// The target's accumulator stage, when it applies: a target
    /// is set, weights and activations are fake-quantized, the input scale is known, the weights
    /// were fake-quantized by min/max this step, and the output range is observed and frozen.
    fn accumulator_stage(&self) -> Result<Option<AccumulatorStage>, LayerError> {
        let (Some(target), Some(s_in), Some(wq), Some(oq)) = (
            self.quant.target,
            self.input_scale,
            self.weights.as_ref(),
            self.output.as_ref(),
        ) else {
            return Ok(None);
        };
        if !(self.state.fake_quant_weights && self.state.fake_quant_activations) {
            return Ok(None);
        }
        let out = oq.export()?;
        let (true, false, true, Some(p_out)) =
            (out.enabled, out.learned, out.observer_frozen, out.qparams)
        else {
            return Ok(None);
        };
        let Some(w_scales) = wq
            .last_scales()
            .map_err(LayerError::torch(&self.name, "weight scales"))?
        else {
            return Ok(None);
        };
        Ok(Some(AccumulatorStage {
            target,
            s_in,
            w_scales,
            p_out,
        }))
    }

    /// A global average pool's output `y` (`[N, C]`, the mean of the input `x`): with a target that
    /// cannot rescale the pool ([`Self::ties_pool_output`]) and the input grid known, fake-quantized
    /// on the input's parameters with the forward value of the target's int8 average of the input
    /// codes ([`super::target_stage::average_codes`]); otherwise [`Self::quantize_output`].
    pub(crate) fn quantize_global_pool(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        train: bool,
    ) -> Result<Tensor, LayerError> {
        let (Some(target), Some(p), true) = (
            self.quant.target,
            self.input_params,
            self.ties_pool_output() && self.state.fake_quant_activations,
        ) else {
            return self.quantize_output(y, train);
        };
        let fq = qat_autograd::fake_quant_per_tensor(y, &p, self.quant.ste)
            .map_err(LayerError::fq(&self.name))?;
        let value = tch::no_grad(|| super::target_stage::average_codes(x, target, &p))
            .map_err(|e| LayerError::config(&self.name, format!("{target} average pool: {e}")))?;
        self.straight_through(&fq, &value)
    }

    /// An average pool's output `y` with a target that cannot rescale it and the input grid known:
    /// fake-quantized on the input's parameters (the float mean rounded half to even on that grid;
    /// the target's int8 pool rounds ties away from zero); otherwise [`Self::quantize_output`].
    pub(crate) fn quantize_tied_output(
        &mut self,
        y: &Tensor,
        train: bool,
    ) -> Result<Tensor, LayerError> {
        match (
            self.input_params,
            self.ties_pool_output() && self.state.fake_quant_activations,
        ) {
            (Some(p), true) => qat_autograd::fake_quant_per_tensor(y, &p, self.quant.ste)
                .map_err(LayerError::fq(&self.name)),
            _ => self.quantize_output(y, train),
        }
    }

    /// The float tensor `t` of this layer for export (a host read).
    pub(crate) fn export_tensor(&self, t: &Tensor) -> Result<ExportTensor, LayerError> {
        ExportTensor::from_tensor(t).map_err(LayerError::torch(&self.name, "export"))
    }

    /// The values of the vector `t` of this layer for export (a host read).
    pub(crate) fn export_vec(&self, t: &Tensor) -> Result<Vec<f32>, LayerError> {
        vec_of(t).map_err(LayerError::torch(&self.name, "export"))
    }

    /// The weight quantization of the final weights `w` for export: `w`'s own parameters (or the
    /// learned LSQ scales) and the config.
    pub(crate) fn weight_export(&self, w: &Tensor) -> Result<WeightExport, LayerError> {
        let wq = self
            .weights
            .as_ref()
            .ok_or_else(|| self.missing("weight"))?;
        let qparams: TensorQParams = wq.qparams_for(w, &self.name)?;
        Ok(WeightExport {
            qparams,
            bits: self.quant.weight_bits,
            scheme: self.quant.weight_scheme,
            granularity: self.quant.weight_granularity,
            enabled: wq.enabled(),
            range: self.quant.weight_range,
        })
    }

    /// The output quantizer's export view (`None` for layers that keep their input's grid).
    pub fn output_export(&self) -> Result<Option<OutputExport>, LayerError> {
        self.output
            .as_ref()
            .map(OutputQuantizer::export)
            .transpose()
    }

    /// The export view of the output quantizer a layer is built with.
    pub(crate) fn own_output_export(&self) -> Result<OutputExport, LayerError> {
        self.output_export()?.ok_or_else(|| self.missing("output"))
    }
}
