//! Pooling for QAT, following the integer runtime: average pools requantize to their own output
//! range (own observer + fake quant); max pooling keeps the input's parameters (a max of values on
//! one grid is on that grid), so it has no quantizer.

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::harness::name_of;
use super::{
    LayerError, LayerExport, OutputExport, PoolExport, PoolKind, QatLayer, QatModule, QuantConfig,
    QuantHarness,
};

/// Window of a square 2-D pooling: `k×k`, stride `s`, symmetric padding `p` (padded cells are
/// excluded from averages and maxima, as in the runtime/TFLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pool2dConfig {
    /// Kernel size `k`.
    pub kernel: i64,
    /// Stride `s`.
    pub stride: i64,
    /// Padding `p` (`2p ≤ k`).
    pub padding: i64,
}

impl Pool2dConfig {
    /// A `k×k` window with stride `s`, no padding.
    pub fn new(kernel: i64, stride: i64) -> Self {
        Self {
            kernel,
            stride,
            padding: 0,
        }
    }

    qat_core::by_value_setters! {
        /// Sets the padding.
        pub fn padding(padding: i64) => padding;
    }

    fn validate(&self, what: &str, layer: &str) -> Result<(), LayerError> {
        let Self {
            kernel,
            stride,
            padding,
        } = *self;
        if kernel <= 0 || stride <= 0 || padding < 0 || 2 * padding > kernel {
            return Err(LayerError::config(
                layer,
                format!("{what} kernel {kernel} stride {stride} padding {padding}"),
            ));
        }
        Ok(())
    }

    /// `[kernel, stride, padding]`, each `[h, w]`, as libtorch's pooling ops take them.
    fn window(&self) -> [[i64; 2]; 3] {
        let Self {
            kernel: k,
            stride: s,
            padding: p,
        } = *self;
        [[k, k], [s, s], [p, p]]
    }

    fn export(&self, kind: PoolKind, harness: &QuantHarness) -> Result<LayerExport, LayerError> {
        let (k, s, p) = (
            self.kernel as usize,
            self.stride as usize,
            self.padding as usize,
        );
        Ok(LayerExport::Pool(PoolExport {
            name: harness.name().to_string(),
            kind,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            output: pool_output_export(harness)?,
        }))
    }
}

fn check_4d(x: &Tensor, layer: &str) -> Result<(), LayerError> {
    if x.dim() != 4 {
        return Err(LayerError::shape(layer, "[N, C, H, W]", x.size()));
    }
    Ok(())
}

/// Average pooling over a [`Pool2dConfig`] window (padded cells excluded from the average, as the
/// runtime/TFLite), followed by its own output fake quant.
#[derive(Debug)]
pub struct QatAvgPool2d {
    cfg: Pool2dConfig,
    harness: QuantHarness,
}

impl QatAvgPool2d {
    /// Creates the pool with its output quantizer under `path`.
    pub fn new(
        path: &nn::Path<'_>,
        cfg: Pool2dConfig,
        quant: QuantConfig,
    ) -> Result<Self, LayerError> {
        cfg.validate("avg pool", &name_of(path))?;
        Ok(Self {
            cfg,
            harness: QuantHarness::output(path, &quant)?,
        })
    }
}

impl QatLayer for QatAvgPool2d {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        self.cfg.export(PoolKind::Avg, &self.harness)
    }

    /// `None` when the pool keeps its input's parameters for its target
    /// ([`QuantHarness::ties_pool_output`]).
    fn output_export(&self) -> Result<Option<OutputExport>, LayerError> {
        pool_output_export(&self.harness)
    }
}

/// A pool's output export: `None` when tied to its input's parameters.
fn pool_output_export(h: &QuantHarness) -> Result<Option<OutputExport>, LayerError> {
    if h.ties_pool_output() {
        return Ok(None);
    }
    h.output_export()
}

impl QatModule for QatAvgPool2d {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, self.harness.name())?;
        let [k, s, p] = self.cfg.window();
        let y = x
            .f_avg_pool2d(k, s, p, false, false, None)
            .map_err(LayerError::torch(self.harness.name(), "avg_pool2d"))?;
        self.harness.quantize_tied_output(&y, train)
    }
}

/// Global average pooling `[N, C, H, W] → [N, C]` with its own output range (the runtime's
/// `GlobalAvgPool` requantizes).
#[derive(Debug)]
pub struct QatGlobalAvgPool {
    harness: QuantHarness,
}

impl QatGlobalAvgPool {
    /// Creates the pool with its output quantizer under `path`.
    pub fn new(path: &nn::Path<'_>, quant: QuantConfig) -> Result<Self, LayerError> {
        Ok(Self {
            harness: QuantHarness::output(path, &quant)?,
        })
    }
}

impl QatLayer for QatGlobalAvgPool {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        Ok(LayerExport::Pool(PoolExport {
            name: self.harness.name().to_string(),
            kind: PoolKind::GlobalAvg,
            kernel: [0, 0],
            stride: [0, 0],
            padding: [0, 0],
            output: pool_output_export(&self.harness)?,
        }))
    }

    /// `None` when the pool keeps its input's parameters for its target
    /// ([`QuantHarness::ties_pool_output`]).
    fn output_export(&self) -> Result<Option<OutputExport>, LayerError> {
        pool_output_export(&self.harness)
    }
}

impl QatModule for QatGlobalAvgPool {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, self.harness.name())?;
        let y = x
            .f_mean_dim(Some([2i64, 3].as_slice()), false, None)
            .map_err(LayerError::torch(self.harness.name(), "global avg pool"))?;
        self.harness.quantize_global_pool(x, &y, train)
    }
}

/// Max pooling over a [`Pool2dConfig`] window (padded cells ignored); no quantizer.
#[derive(Debug)]
pub struct QatMaxPool2d {
    cfg: Pool2dConfig,
    harness: QuantHarness,
}

impl QatMaxPool2d {
    /// Creates the pool (`path` only names it; it has no state).
    pub fn new(path: &nn::Path<'_>, cfg: Pool2dConfig) -> Result<Self, LayerError> {
        cfg.validate("max pool", &name_of(path))?;
        Ok(Self {
            cfg,
            harness: QuantHarness::none(path),
        })
    }
}

impl QatLayer for QatMaxPool2d {
    harness_field!();

    fn export(&self) -> Result<LayerExport, LayerError> {
        self.cfg.export(PoolKind::Max, &self.harness)
    }
}

impl QatModule for QatMaxPool2d {
    fn forward_t(&mut self, x: &Tensor, _train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, self.harness.name())?;
        let [k, s, p] = self.cfg.window();
        x.f_max_pool2d(k, s, p, [1, 1], false)
            .map_err(LayerError::torch(self.harness.name(), "max_pool2d"))
    }
}
