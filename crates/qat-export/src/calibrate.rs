//! Post-training quantization (PTQ): observe activation ranges by running the float graph on
//! calibration batches, then export — the baseline QAT must beat (whitepaper §3.1, table 4).
//!
//! Observers (one per node output, per tensor):
//! * [`CalibrationMethod::MinMax`]: `[min over all batches, max over all batches]`;
//! * [`CalibrationMethod::Ema`]: `r ← decay·r + (1 − decay)·r_batch` for both bounds, initialized
//!   with the first batch's min/max (paper §3: "exponential moving averages … smoothing parameter
//!   close to 1");
//! * [`CalibrationMethod::Percentile`]: per batch the `(100 − p)`-th and `p`-th percentiles
//!   (linear interpolation between order statistics), averaged over batches — clips outliers.
//!
//! Weight ranges need no data: export takes them from the (folded) weights, per channel or per
//! tensor according to each layer's [`WeightQuant`] ([`PtqConfig::weight_quant`]).

use ndarray::{ArrayD, ArrayViewD};
use qat_int8_runtime::Int8Model;
use serde::{Deserialize, Serialize};

use crate::error::{CalibrationError, PtqError};
use crate::interp;
use crate::ir::{FloatGraph, Range, WeightQuant};
use crate::plan::{ExportOptions, QuantPlan};

/// How activation ranges are estimated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CalibrationMethod {
    /// Global min/max.
    MinMax,
    /// Exponential moving average of per-batch min/max; `decay ∈ (0, 1)`.
    Ema {
        /// Smoothing constant (e.g. 0.9; TF uses 0.999 over many more steps).
        decay: f32,
    },
    /// Per-batch percentiles averaged over batches; `percentile ∈ (50, 100]` (e.g. 99.99).
    Percentile {
        /// Upper percentile `p`; the lower bound uses `100 − p`.
        percentile: f32,
    },
}

impl CalibrationMethod {
    fn check(&self) -> Result<(), CalibrationError> {
        match *self {
            CalibrationMethod::MinMax => Ok(()),
            CalibrationMethod::Ema { decay } if decay > 0.0 && decay < 1.0 => Ok(()),
            CalibrationMethod::Ema { decay } => Err(CalibrationError::Method {
                reason: format!("EMA decay {decay} must be in (0, 1)"),
            }),
            CalibrationMethod::Percentile { percentile }
                if percentile > 50.0 && percentile <= 100.0 =>
            {
                Ok(())
            }
            CalibrationMethod::Percentile { percentile } => Err(CalibrationError::Method {
                reason: format!("percentile {percentile} must be in (50, 100]"),
            }),
        }
    }
}

/// A per-tensor range observer (see the module docs for each method's update rule).
///
/// ```
/// use ndarray::ArrayD;
/// use qat_export::calibrate::{CalibrationMethod, RangeObserver};
/// let mut o = RangeObserver::new(CalibrationMethod::Ema { decay: 0.5 });
/// o.observe(ArrayD::from_shape_vec(vec![2], vec![-1.0, 1.0]).unwrap().view());
/// o.observe(ArrayD::from_shape_vec(vec![2], vec![-3.0, 3.0]).unwrap().view());
/// let r = o.range().unwrap();
/// assert_eq!((r.min, r.max), (-2.0, 2.0));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RangeObserver {
    method: CalibrationMethod,
    state: Option<(f64, f64)>,
    batches: usize,
}

/// `q`-th percentile (0..=100) of sorted values by linear interpolation.
fn percentile_sorted(sorted: &[f32], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let t = pos - lo as f64;
    sorted[lo] as f64 * (1.0 - t) + sorted[hi] as f64 * t
}

impl RangeObserver {
    /// A fresh observer (no range yet).
    pub fn new(method: CalibrationMethod) -> Self {
        Self {
            method,
            state: None,
            batches: 0,
        }
    }

    /// Folds one batch into the range; non-finite values are ignored, and a batch with no finite
    /// value leaves the state unchanged.
    pub fn observe(&mut self, x: ArrayViewD<'_, f32>) {
        let batch = match self.method {
            CalibrationMethod::Percentile { percentile } => {
                let mut v: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
                if v.is_empty() {
                    return;
                }
                v.sort_unstable_by(f32::total_cmp);
                let p = percentile as f64;
                (percentile_sorted(&v, 100.0 - p), percentile_sorted(&v, p))
            }
            _ => match qat_core::array::min_max(x) {
                Some((lo, hi)) => (lo as f64, hi as f64),
                None => return,
            },
        };
        self.batches += 1;
        let n = self.batches as f64;
        self.state = Some(match (self.state, self.method) {
            (None, _) => batch,
            (Some((lo, hi)), CalibrationMethod::MinMax) => (lo.min(batch.0), hi.max(batch.1)),
            (Some((lo, hi)), CalibrationMethod::Ema { decay }) => {
                let d = decay as f64;
                (d * lo + (1.0 - d) * batch.0, d * hi + (1.0 - d) * batch.1)
            }
            // running mean over batches
            (Some((lo, hi)), CalibrationMethod::Percentile { .. }) => {
                (lo + (batch.0 - lo) / n, hi + (batch.1 - hi) / n)
            }
        });
    }

    /// The current range, `None` before any finite value was observed.
    pub fn range(&self) -> Option<Range> {
        self.state.map(|(lo, hi)| Range {
            min: lo as f32,
            max: (hi as f32).max(lo as f32),
        })
    }
}

/// Runs the float graph on every batch (`[N, …input shape]`) and returns a copy of `graph` with
/// every node's observed range set by `method` (see the module docs). Existing ranges are
/// replaced.
///
/// ```
/// use ndarray::ArrayD;
/// use qat_export::{FloatGraph, calibrate::{calibrate, CalibrationMethod}, ir::{Activation, Linear}};
/// let mut g = FloatGraph::new("fc");
/// let x = g.input("x", &[2]);
/// let y = g.linear("fc", x, Linear::new(vec![1.0, -1.0], [1, 2]).with_activation(Activation::Relu));
/// g.output("y", y);
/// let batch = ArrayD::from_shape_vec(vec![2, 2], vec![1.0, 3.0, 2.0, -1.0])?;
/// let cal = calibrate(&g, [batch.view()], CalibrationMethod::MinMax)?;
/// let r = cal.nodes[y.0].act.range.unwrap();
/// assert_eq!((r.min, r.max), (0.0, 3.0)); // relu(1 − 3) = 0, relu(2 + 1) = 3
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn calibrate<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = ArrayViewD<'a, f32>>,
    method: CalibrationMethod,
) -> Result<FloatGraph, CalibrationError> {
    method.check()?;
    graph.validate()?;
    let mut observers = vec![RangeObserver::new(method); graph.nodes.len()];
    let mut seen = 0;
    for batch in batches {
        let vals: Vec<ArrayD<f32>> = interp::run(graph, batch, None)?;
        for (o, v) in observers.iter_mut().zip(&vals) {
            o.observe(v.view());
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(CalibrationError::NoBatches);
    }
    let mut out = graph.clone();
    for (node, o) in out.nodes.iter_mut().zip(&observers) {
        node.act.range = Some(o.range().ok_or_else(|| CalibrationError::NoFiniteValues {
            node: node.name.clone(),
        })?);
    }
    Ok(out)
}

/// PTQ settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PtqConfig {
    /// Activation range estimator.
    pub method: CalibrationMethod,
    /// Weight quantization applied to every conv/linear (`None`: keep each layer's own).
    pub weight_quant: Option<WeightQuant>,
    /// Activation bit width applied to every node (`None`: keep each node's own).
    pub activation_bits: Option<u32>,
    /// Export options.
    pub export: ExportOptions,
}

impl Default for PtqConfig {
    fn default() -> Self {
        Self {
            method: CalibrationMethod::MinMax,
            weight_quant: None,
            activation_bits: None,
            export: ExportOptions::default(),
        }
    }
}

/// Post-training quantization: apply the config's weight/activation settings, [`calibrate`],
/// then build the export plan. Returns the plan (its `graph` is calibrated and folded;
/// [`QuantPlan::to_int8_model`] gives the integer model).
pub fn ptq<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = ArrayViewD<'a, f32>>,
    cfg: &PtqConfig,
) -> Result<QuantPlan, PtqError> {
    let mut g = graph.clone();
    if let Some(wq) = cfg.weight_quant {
        g.set_all_weight_quant(wq);
    }
    if let Some(bits) = cfg.activation_bits {
        g.set_all_activation_bits(bits);
    }
    let g = calibrate(&g, batches, cfg.method)?;
    Ok(QuantPlan::new(&g, &cfg.export)?)
}

/// Convenience: [`ptq`] then emit the `Int8Model` (validated by the runtime).
pub fn ptq_export<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = ArrayViewD<'a, f32>>,
    cfg: &PtqConfig,
) -> Result<Int8Model, PtqError> {
    let model = ptq(graph, batches, cfg)?.to_int8_model()?;
    model.validate().map_err(crate::error::ExportError::from)?;
    Ok(model)
}
