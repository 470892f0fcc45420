//! Pooling for QAT, following the integer runtime: average pools requantize to their own output
//! range (own observer + fake quant); max pooling keeps the input's parameters (a max of values on
//! one grid is on that grid), so it has no quantizer.

use tch::{Tensor, nn};

use super::quantizer::apply_state;
use super::{
    LayerError, LayerExport, OutputQuantizer, PoolExport, PoolKind, QatControl, QatLayer,
    QatModule, QuantConfig, QuantState,
};

fn name_of(path: &nn::Path<'_>) -> String {
    path.components().collect::<Vec<_>>().join(".")
}

fn check_4d(x: &Tensor, layer: &str) -> Result<(), LayerError> {
    if x.dim() != 4 {
        return Err(LayerError::Shape {
            layer: layer.to_string(),
            expected: "[N, C, H, W]".to_string(),
            got: x.size(),
        });
    }
    Ok(())
}

/// Average pooling `k×k`, stride `s`, padding `p` (padded cells excluded from the average, as the
/// runtime/TFLite), followed by its own output fake quant.
#[derive(Debug)]
pub struct QatAvgPool2d {
    name: String,
    kernel: i64,
    stride: i64,
    padding: i64,
    oq: OutputQuantizer,
    state: QuantState,
}

impl QatAvgPool2d {
    /// Creates the pool with its output quantizer under `path`.
    pub fn new(
        path: &nn::Path<'_>,
        kernel: i64,
        stride: i64,
        padding: i64,
        quant: QuantConfig,
    ) -> Result<Self, LayerError> {
        let name = name_of(path);
        if kernel <= 0 || stride <= 0 || padding < 0 || 2 * padding > kernel {
            return Err(LayerError::Config {
                layer: name,
                what: format!("avg pool kernel {kernel} stride {stride} padding {padding}"),
            });
        }
        Ok(Self {
            oq: OutputQuantizer::new(&(path / "act_q"), &quant)?,
            name,
            kernel,
            stride,
            padding,
            state: QuantState::default(),
        })
    }
}

impl QatLayer for QatAvgPool2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, c: QatControl) {
        apply_state(&mut self.state, c);
        self.oq.control_observer(c);
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        let (k, s, p) = (
            self.kernel as usize,
            self.stride as usize,
            self.padding as usize,
        );
        Ok(LayerExport::Pool(PoolExport {
            name: self.name.clone(),
            kind: PoolKind::Avg,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            output: Some(self.oq.export()?),
        }))
    }
}

impl QatModule for QatAvgPool2d {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, &self.name)?;
        let k = [self.kernel, self.kernel];
        let y = x
            .f_avg_pool2d(
                k,
                [self.stride, self.stride],
                [self.padding, self.padding],
                false,
                false,
                None,
            )
            .map_err(LayerError::torch(&self.name, "avg_pool2d"))?;
        self.oq.apply(&y, train, &self.state)
    }
}

/// Global average pooling `[N, C, H, W] → [N, C]` with its own output range (the runtime's
/// `GlobalAvgPool` requantizes).
#[derive(Debug)]
pub struct QatGlobalAvgPool {
    name: String,
    oq: OutputQuantizer,
    state: QuantState,
}

impl QatGlobalAvgPool {
    /// Creates the pool with its output quantizer under `path`.
    pub fn new(path: &nn::Path<'_>, quant: QuantConfig) -> Result<Self, LayerError> {
        Ok(Self {
            name: name_of(path),
            oq: OutputQuantizer::new(&(path / "act_q"), &quant)?,
            state: QuantState::default(),
        })
    }
}

impl QatLayer for QatGlobalAvgPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, c: QatControl) {
        apply_state(&mut self.state, c);
        self.oq.control_observer(c);
    }

    fn export(&self) -> Result<LayerExport, LayerError> {
        Ok(LayerExport::Pool(PoolExport {
            name: self.name.clone(),
            kind: PoolKind::GlobalAvg,
            kernel: [0, 0],
            stride: [0, 0],
            padding: [0, 0],
            output: Some(self.oq.export()?),
        }))
    }
}

impl QatModule for QatGlobalAvgPool {
    fn forward_t(&mut self, x: &Tensor, train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, &self.name)?;
        let y = x
            .f_mean_dim(Some([2i64, 3].as_slice()), false, None)
            .map_err(LayerError::torch(&self.name, "global avg pool"))?;
        self.oq.apply(&y, train, &self.state)
    }
}

/// Max pooling `k×k`, stride `s`, padding `p` (padded cells ignored); no quantizer.
#[derive(Debug)]
pub struct QatMaxPool2d {
    name: String,
    kernel: i64,
    stride: i64,
    padding: i64,
}

impl QatMaxPool2d {
    /// Creates the pool (`path` only names it; it has no state).
    pub fn new(
        path: &nn::Path<'_>,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self, LayerError> {
        let name = name_of(path);
        if kernel <= 0 || stride <= 0 || padding < 0 || 2 * padding > kernel {
            return Err(LayerError::Config {
                layer: name,
                what: format!("max pool kernel {kernel} stride {stride} padding {padding}"),
            });
        }
        Ok(Self {
            name,
            kernel,
            stride,
            padding,
        })
    }
}

impl QatLayer for QatMaxPool2d {
    fn name(&self) -> &str {
        &self.name
    }

    fn control(&mut self, _c: QatControl) {}

    fn export(&self) -> Result<LayerExport, LayerError> {
        let (k, s, p) = (
            self.kernel as usize,
            self.stride as usize,
            self.padding as usize,
        );
        Ok(LayerExport::Pool(PoolExport {
            name: self.name.clone(),
            kind: PoolKind::Max,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            output: None,
        }))
    }
}

impl QatModule for QatMaxPool2d {
    fn forward_t(&mut self, x: &Tensor, _train: bool) -> Result<Tensor, LayerError> {
        check_4d(x, &self.name)?;
        x.f_max_pool2d(
            [self.kernel, self.kernel],
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            false,
        )
        .map_err(LayerError::torch(&self.name, "max_pool2d"))
    }
}
