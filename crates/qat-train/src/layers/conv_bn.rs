//! Conv + batch norm folded for QAT (paper §3.2; whitepaper arXiv 1806.08342 §3.2.2, eq. 22–31; TF
//! `contrib/quantize/python/fold_batch_norms.py`), and PyTorch's variant (`conv_fused.py`).

use qat_autograd::host_read::HostCopy;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use super::export::{ExportTensor, vec_of};
use super::harness::name_of;
use super::{
    BnExport, Conv2dConfig, ConvExport, LayerError, LayerExport, QatControl, QatLayer, QatModule,
    QuantHarness, config::NO_DECAY_GROUP,
};

/// Which conv+BN folding QAT simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BnFoldMode {
    /// Whitepaper §3.2.2 (TF `fold_batch_norms.py`), the paper's method. With `σ = √(var + ε)` the
    /// moving std, `σ_B` the batch std (biased variance), `μ_B` the batch mean:
    /// * before the freeze, in training: batch statistics come from the float conv `conv(x, W)`;
    ///   `y = conv(x, FQ(γ·W/σ)) · (σ/σ_B) + (β − γ·μ_B/σ_B)` — the division by `c = σ_B/σ` undoes
    ///   the moving-σ scaling so the float value is exactly batch-stat BN, while the quantized
    ///   weights are those inference will use; moving averages are updated (with weight fake quant
    ///   off the expression *is* batch-stat BN of `conv(x, W)`, and libtorch's fused `batch_norm`
    ///   computes it);
    /// * after the freeze (and in eval): `y = conv(x, FQ(γ·W/σ)) + (β − γ·μ/σ)` with moving
    ///   statistics, which are no longer updated — exactly the folded inference layer.
    #[default]
    Whitepaper,
    /// PyTorch `conv_fused.py` (`_forward_approximate`): `s = γ/σ` (moving σ),
    /// `y = BN(conv(x, FQ(W·s)) / s)` (computed as `BN(conv(x, FQ(W·s)/s))`) with the real BN
    /// (batch statistics and moving-average updates in training; after `freeze_bn` moving
    /// statistics, no updates). One conv per step instead of two.
    PyTorch,
}

/// Configuration of a conv+BN layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConvBnConfig {
    /// Conv geometry, activation and quant config (`bias` is ignored: β plays its role).
    pub conv: Conv2dConfig,
    /// BN ε (default 1e-5, PyTorch/tch; TF uses 1e-3).
    pub eps: f64,
    /// BN momentum `m`: `running = (1 − m)·running + m·batch` (default 0.1, PyTorch); the running
    /// variance averages the unbiased batch variance. TF's BN `decay d` is `m = 1 − d`.
    pub momentum: f64,
    /// Folding variant.
    pub fold: BnFoldMode,
    /// [`BnFoldMode::Whitepaper`] only: whether the gradient flows through the batch statistics
    /// `μ_B`, `σ_B` (as through a float BN). Default `false`, as TF's `fold_batch_norms.py`, whose
    /// statistics come from a fused BN whose gradient ignores them: they are constants of the
    /// backward pass, and the float conv that produces them needs no backward (one conv backward per
    /// step instead of two). PyTorch's fold always has the gradient of its real BN.
    #[serde(default)]
    pub stats_grad: bool,
}

impl ConvBnConfig {
    /// Conv+BN with the conv geometry `conv`, ε 1e-5, momentum 0.1, whitepaper folding.
    pub fn new(conv: Conv2dConfig) -> Self {
        Self {
            conv: Conv2dConfig {
                bias: false,
                ..conv
            },
            eps: 1e-5,
            momentum: 0.1,
            fold: BnFoldMode::Whitepaper,
            stats_grad: false,
        }
    }

    qat_core::by_value_setters! {
        /// Sets the folding variant.
        pub fn fold(f: BnFoldMode) => fold;
    }
}

/// Conv + BN (+ fused activation) for QAT, folded per [`BnFoldMode`].
///
/// Parameters: `weight` (`OIHW`, Kaiming-uniform), `bn.gamma` = 1 and `bn.beta` = 0 (group
/// [`NO_DECAY_GROUP`]; note tch's own BN initialises γ ~ U(0, 1)), buffers `bn.running_mean` = 0,
/// `bn.running_var` = 1, `bn.frozen` (0/1, saved with the VarStore so a checkpoint restores it).
///
/// ```
/// use qat_train::layers::{Activation, Conv2dConfig, ConvBnConfig, QatConvBn2d, QatControl, QatLayer, QatModule};
/// use tch::{Device, Kind, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let cfg = ConvBnConfig::new(Conv2dConfig::new(3, 4, 3).padding(1).activation(Activation::Relu6));
/// let mut l = QatConvBn2d::new(&(vs.root() / "block"), cfg)?;
/// let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
/// let y = l.forward_t(&x, true)?;          // batch statistics, σ_B/σ correction
/// l.control(QatControl::FreezeBn(true));   // moving statistics from now on
/// let y2 = l.forward_t(&x, true)?;
/// assert_eq!(y.size(), y2.size());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QatConvBn2d {
    cfg: ConvBnConfig,
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    frozen: Tensor,
    /// Host copy of `frozen`, which decides the forward's graph (batch or moving statistics)
    /// without a read back; set with it by [`QatConvBn2d::freeze_bn`].
    frozen_host: HostCopy,
    harness: QuantHarness,
}

fn per_out_channel(t: &Tensor) -> Tensor {
    t.view([-1, 1, 1, 1])
}

impl QatConvBn2d {
    /// Creates the layer's parameters, BN buffers and quantizers under `path`.
    pub fn new(path: &nn::Path<'_>, cfg: ConvBnConfig) -> Result<Self, LayerError> {
        let name = name_of(path);
        cfg.conv.validate(&name)?;
        if !(cfg.eps > 0.0 && (0.0..=1.0).contains(&cfg.momentum)) {
            return Err(LayerError::config(
                &name,
                format!(
                    "BN eps {} must be > 0, momentum {} in [0, 1]",
                    cfg.eps, cfg.momentum
                ),
            ));
        }
        let c = cfg.conv.out_channels;
        let torch = |op| LayerError::torch(&name, op);
        let weight = path
            .f_kaiming_uniform("weight", &cfg.conv.weight_shape())
            .map_err(torch("init weight"))?;
        let bn = path / "bn";
        let nd = bn.set_group(NO_DECAY_GROUP);
        let gamma = nd
            .f_var("gamma", &[c], nn::Init::Const(1.0))
            .map_err(torch("init gamma"))?;
        let beta = nd
            .f_var("beta", &[c], nn::Init::Const(0.0))
            .map_err(torch("init beta"))?;
        let running_mean = bn
            .f_zeros_no_train("running_mean", &[c])
            .map_err(torch("init mean"))?;
        let running_var = bn
            .f_ones_no_train("running_var", &[c])
            .map_err(torch("init var"))?;
        let frozen = bn
            .f_zeros_no_train("frozen", &[1])
            .map_err(torch("init frozen"))?;
        let harness = QuantHarness::weighted(path, &cfg.conv.quant, c)?;
        Ok(Self {
            cfg,
            weight,
            gamma,
            beta,
            running_mean,
            running_var,
            frozen,
            frozen_host: HostCopy::default(),
            harness,
        })
    }

    /// Whether BN statistics are frozen (moving statistics used, not updated): the buffer
    /// `bn.frozen` (saved with the VarStore), through a host copy that [`QatConvBn2d::freeze_bn`]
    /// sets, so that a training step reads nothing; a `VarStore::load` invalidates the copy and the
    /// next call reads the buffer once.
    pub fn bn_frozen(&self) -> bool {
        self.frozen_host
            .get(&self.frozen, "bn frozen")
            .is_ok_and(|v| v != 0.0)
    }

    /// Freezes (`true`) or unfreezes the BN statistics; same as `control(QatControl::FreezeBn(f))`.
    pub fn freeze_bn(&mut self, f: bool) {
        tch::no_grad(|| {
            let _ = self.frozen.fill_(if f { 1.0 } else { 0.0 });
        });
        self.frozen_host
            .set(&self.frozen, if f { 1.0 } else { 0.0 });
    }

    /// The float conv weights (`OIHW`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// BN γ.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// BN β.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }

    /// Moving mean μ.
    pub fn running_mean(&self) -> &Tensor {
        &self.running_mean
    }

    /// Moving variance.
    pub fn running_var(&self) -> &Tensor {
        &self.running_var
    }

    /// The configuration.
    pub fn config(&self) -> &ConvBnConfig {
        &self.cfg
    }

    /// Moving std `σ = √(running_var + ε)` (no gradient).
    fn moving_std(&self) -> Result<Tensor, LayerError> {
        (&self.running_var + self.cfg.eps)
            .f_sqrt()
            .map_err(LayerError::torch(self.harness.name(), "moving std"))
    }

    /// The per-channel fold factor `k = γ/√(var + ε)` with moving statistics, in f64 exactly as
    /// qat-export's BN fold computes it (ε rounded to f32 first, as the export IR stores it), so that
    /// the folded weights QAT quantizes are bit for bit those export quantizes. An f32 fold differs by
    /// an ulp here and there, and a weight on a rounding boundary of the grid then takes the next
    /// code: in one trained W4A4 MobileNet that moved every layer from block2.dw on, up to 6 codes
    /// apart at the last block (`fidelity::compare_with_simulation`; argmax agreement 99.10%).
    fn fold_factor(&self) -> Result<Tensor, LayerError> {
        let eps = f64::from(self.cfg.eps as f32);
        self.running_var
            .f_to_kind(Kind::Double)
            .and_then(|v| (v + eps).f_sqrt())
            .and_then(|sigma| self.gamma.f_to_kind(Kind::Double)?.f_div(&sigma))
            .map_err(LayerError::torch(self.harness.name(), "BN fold factor"))
    }

    /// `W·k` per output channel, computed in f64 and rounded to f32 once (qat-export's fold).
    fn fold_weight(&self, k: &Tensor) -> Result<Tensor, LayerError> {
        self.weight
            .f_to_kind(Kind::Double)
            .and_then(|w| w.f_mul(&per_out_channel(k)))
            .and_then(|w| w.f_to_kind(Kind::Float))
            .map_err(LayerError::torch(self.harness.name(), "BN fold"))
    }

    /// `(γ·W/σ, β − γ·μ/σ)` with moving statistics: the inference fold, bit for bit qat-export's.
    fn folded_moving(&self) -> Result<(Tensor, Tensor), LayerError> {
        let k = self.fold_factor()?;
        let w = self.fold_weight(&k)?;
        let b = self
            .beta
            .f_to_kind(Kind::Double)
            .and_then(|b| b.f_sub(&(&k * self.running_mean.f_to_kind(Kind::Double)?)))
            .and_then(|b| b.f_to_kind(Kind::Float))
            .map_err(LayerError::torch(self.harness.name(), "BN fold bias"))?;
        Ok((w, b))
    }

    fn update_running(&mut self, mean_b: &Tensor, var_b: &Tensor, n: i64) {
        let m = self.cfg.momentum;
        let unbiased = var_b.detach() * (n as f64 / (n - 1) as f64);
        tch::no_grad(|| {
            let new_mean = &self.running_mean * (1.0 - m) + mean_b.detach() * m;
            let new_var = &self.running_var * (1.0 - m) + unbiased * m;
            self.running_mean.copy_(&new_mean);
            self.running_var.copy_(&new_var);
        });
    }

    fn forward_whitepaper(&mut self, x: &Tensor, use_batch: bool) -> Result<Tensor, LayerError> {
        let n = self.harness.name().to_string();
        let torch = |op| LayerError::torch(&n, op);
        if !use_batch {
            return self.forward_folded(x);
        }
        let fq_on = self.harness.fake_quantizes_weights();
        let conv_float = || self.cfg.conv.conv(x, &self.weight, None::<&Tensor>, &n);
        // TF's fold (the paper authors' reference) takes μ_B and σ_B from the outputs of a fused BN
        // whose gradient ignores them: the batch statistics are constants of the backward pass, so the
        // float conv that produces them runs without autograd (no backward of its own).
        let y_float = if fq_on && !self.cfg.stats_grad {
            tch::no_grad(conv_float)?
        } else {
            conv_float()?
        };
        let count = batch_count(&y_float);
        if count < 2 {
            return Err(LayerError::shape(
                &n,
                "more than one value per channel for batch statistics",
                y_float.size(),
            ));
        }
        let w_fold = self.fold_weight(&self.fold_factor()?)?;
        let w = self.harness.quantize_weights(&w_fold)?;
        if !fq_on {
            // Without weight quantization the fold is exactly batch-stat BN:
            // conv(x, γW/σ)·σ/σ_B + β − γμ_B/σ_B = γ·(conv(x, W) − μ_B)/σ_B + β, so libtorch's fused
            // batch_norm computes it (one conv, fused backward) and updates the moving averages
            // exactly as `update_running` does (momentum m, unbiased batch variance).
            return self.batch_norm_train(&y_float, &n);
        }
        // σ is read before the moving averages move. The batch statistics: with `stats_grad`
        // differentiable, else constants of the backward pass (one f64 pass of our own on the CPU).
        let sigma = self.moving_std()?;
        let (mean_b, var_b) = match channel_stats_cpu(&y_float).filter(|_| !self.cfg.stats_grad) {
            Some(stats) => stats,
            None => batch_stats(&y_float, count).map(|(v, m)| (m, v)),
        }
        .map_err(torch("batch statistics"))?;
        self.update_running(&mean_b, &var_b, count);
        let sigma_b = (&var_b + self.cfg.eps)
            .f_sqrt()
            .map_err(torch("batch std"))?;
        // conv(x, FQ(γW/σ)) / c + (β − γμ_B/σ_B) with c = σ_B/σ, computed as one conv with the
        // per-channel factor 1/c = σ/σ_B on the quantized weights and the bias in the conv: a
        // conv is linear in each output channel's weights, so conv(x, W_q·a) = conv(x, W_q)·a up to
        // float rounding, and the step saves the separate affine pass and its backward.
        let a = &sigma / &sigma_b;
        let bias = &self.beta - &self.gamma * &mean_b / &sigma_b;
        let w_corrected = &w * per_out_channel(&a);
        self.cfg.conv.conv(x, &w_corrected, Some(&bias), &n)
    }

    /// Moving statistics (BN frozen, or eval), both fold modes: exactly the folded inference layer
    /// `conv(x, FQ(γW/σ)) + b̂`, `b = β − γμ/σ`, with `b̂` the bias on the integer model's int32 grid
    /// once the input scale is known ([`WeightQuantizer::fake_quant_bias`]).
    fn forward_folded(&mut self, x: &Tensor) -> Result<Tensor, LayerError> {
        let n = self.harness.name().to_string();
        let (w_fold, b_fold) = self.folded_moving()?;
        let w = self.harness.quantize_weights(&w_fold)?;
        let b = self.harness.quantize_bias(&b_fold)?;
        self.cfg.conv.conv(x, &w, Some(&b), &n)
    }

    fn forward_pytorch(&mut self, x: &Tensor, use_batch: bool) -> Result<Tensor, LayerError> {
        if !use_batch {
            // PyTorch's `BN(conv(x, FQ(W·s))/s)` with moving statistics is this fold up to float
            // rounding (the `/s` then `·γ/σ`), which would flip a few output codes against export.
            return self.forward_folded(x);
        }
        let n = self.harness.name().to_string();
        let k = self.fold_factor()?;
        let scale = k
            .f_to_kind(Kind::Float)
            .map_err(LayerError::torch(&n, "BN scale"))?;
        let w_scaled = self.fold_weight(&k)?;
        let w = self.harness.quantize_weights(&w_scaled)?;
        // conv(x, FQ(W·s)) / s as one conv with the division on the quantized weights (a conv is
        // linear in each output channel's weights; equal up to float rounding): no activation-sized
        // division and no reduction for its gradient w.r.t. s.
        let w = &w / per_out_channel(&scale);
        let y = self.cfg.conv.conv(x, &w, None::<&Tensor>, &n)?;
        if batch_count(&y) < 2 {
            return Err(LayerError::shape(
                &n,
                "more than one value per channel for batch statistics",
                y.size(),
            ));
        }
        self.batch_norm_train(&y, &n)
    }

    /// libtorch's batch norm of `y` in training mode: normalized with the batch statistics, the
    /// moving averages updated in place (momentum m, unbiased batch variance).
    fn batch_norm_train(&self, y: &Tensor, n: &str) -> Result<Tensor, LayerError> {
        y.f_batch_norm(
            Some(&self.gamma),
            Some(&self.beta),
            Some(&self.running_mean),
            Some(&self.running_var),
            true,
            self.cfg.momentum,
            self.cfg.eps,
            false,
        )
        .map_err(LayerError::torch(n, "batch_norm"))
    }
}

/// Per-channel batch statistics `(σ_B², μ_B)` of an `NCHW` tensor over `N, H, W` (`n` values per
/// channel), biased variance: `μ_B = Σy/n`, `σ_B² = max(Σy²/n − μ_B², 0)`, the sums accumulated in
/// f64 (the same values as libtorch's `var_mean`, whose CPU kernel is a scalar Welford loop over the
/// non-contiguous dims and was the slowest op of the whitepaper QAT step; `Σy²` of f32 squares in f64
/// keeps the cancellation error ≈ 2⁻²⁴·(μ_B² + σ_B²)/σ_B² relative). Differentiable.
fn batch_stats(y: &Tensor, n: i64) -> Result<(Tensor, Tensor), tch::TchError> {
    let dims = [0i64, 2, 3];
    let s1 = y.f_sum_dim_intlist(Some(dims.as_slice()), false, tch::Kind::Double)?;
    let s2 = y
        .f_square()?
        .f_sum_dim_intlist(Some(dims.as_slice()), false, tch::Kind::Double)?;
    let mean = s1 / n as f64;
    let var = (s2 / n as f64 - &mean * &mean).f_clamp_min(0.0)?;
    Ok((
        var.f_to_kind(tch::Kind::Float)?,
        mean.f_to_kind(tch::Kind::Float)?,
    ))
}

/// Per-channel `(μ_B, σ_B²)` (biased) of a contiguous f32 `NCHW` CPU tensor in one pass of our own,
/// without autograd (`None` for other tensors and with the host fast paths of `qat_autograd::cpu`
/// off): `Σy` and `Σy²` per
/// channel accumulated in f64 (an f32 square is exact in f64), `σ_B² = max(Σy²/n − μ_B², 0)` — the
/// values of [`batch_stats`]. It replaces libtorch's two-pass `batch_norm_update_stats`, which was
/// the costliest elementwise op of the whitepaper QAT step — also with several libtorch threads
/// (serial here, it still beats the libtorch fallback there).
fn channel_stats_cpu(y: &Tensor) -> Option<Result<(Tensor, Tensor), tch::TchError>> {
    let shape = y.size();
    if shape.len() != 4 {
        return None;
    }
    let (c, plane) = (shape[1] as usize, (shape[2] * shape[3]) as usize);
    let count = (shape[0] as usize * plane) as f64;
    let (s1, s2) = qat_autograd::cpu::with_slice(y, |ys: &[f32]| {
        let mut s1 = vec![0f64; c];
        let mut s2 = vec![0f64; c];
        if plane > 0 {
            for (i, p) in ys.chunks_exact(plane).enumerate() {
                let (a, b) = qat_autograd::plane_sums(p);
                s1[i % c] += a;
                s2[i % c] += b;
            }
        }
        (s1, s2)
    })?;
    let mean: Vec<f32> = s1.iter().map(|&a| (a / count) as f32).collect();
    let var: Vec<f32> = s1
        .iter()
        .zip(&s2)
        .map(|(&a, &b)| {
            let m = a / count;
            (b / count - m * m).max(0.0) as f32
        })
        .collect();
    Some(Ok((Tensor::from_slice(&mean), Tensor::from_slice(&var))))
}

fn batch_count(y: &Tensor) -> i64 {
    let s = y.size();
    s[0] * s[2] * s[3]
}

impl QatLayer for QatConvBn2d {
    harness_field!();

    /// The harness's switches, and `FreezeBn` for the BN statistics.
    fn control(&mut self, c: QatControl) {
        self.harness.control(c);
        if let QatControl::FreezeBn(f) = c {
            self.freeze_bn(f);
        }
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        let n = self.harness.name();
        let ex = |op| LayerError::torch(n, op);
        let (w_fold, b_fold) = tch::no_grad(|| self.folded_moving())?;
        let (stride, padding, dilation, groups) = self.cfg.conv.geometry_usize();
        Ok(LayerExport::Conv(Box::new(ConvExport {
            name: n.to_string(),
            weight: ExportTensor::from_tensor(&self.weight).map_err(ex("export weight"))?,
            bias: None,
            bn: Some(BnExport {
                gamma: vec_of(&self.gamma).map_err(ex("export gamma"))?,
                beta: vec_of(&self.beta).map_err(ex("export beta"))?,
                mean: vec_of(&self.running_mean).map_err(ex("export mean"))?,
                var: vec_of(&self.running_var).map_err(ex("export var"))?,
                eps: self.cfg.eps,
                frozen: self.bn_frozen(),
                fold_mode: self.cfg.fold,
            }),
            folded_weight: ExportTensor::from_tensor(&w_fold)
                .map_err(ex("export folded weight"))?,
            folded_bias: vec_of(&b_fold).map_err(ex("export folded bias"))?,
            weight_quant: self.harness.weight_export(&w_fold)?,
            stride,
            padding,
            dilation,
            groups,
            activation: self.cfg.conv.activation,
            output: self.harness.own_output_export()?,
        })))
    }
}

impl QatModule for QatConvBn2d {
    /// Forward per [`BnFoldMode`]; batch statistics are used when `train` and BN is not frozen.
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        self.cfg.conv.check_input(x, self.harness.name())?;
        let use_batch = train && !self.bn_frozen();
        let y = match self.cfg.fold {
            BnFoldMode::Whitepaper => self.forward_whitepaper(x, use_batch)?,
            BnFoldMode::PyTorch => self.forward_pytorch(x, use_batch)?,
        };
        if use_batch {
            // Batch statistics: not the inference layer's accumulator grid.
            return self
                .harness
                .quantize_activated(y, self.cfg.conv.activation, train);
        }
        self.harness
            .quantize_accumulated(y, self.cfg.conv.activation, train, false)
    }
}
