//! Histogram observer with percentile clipping, for post-training calibration.

use qat_autograd::TensorQParams;
use qat_autograd::host_read;
use tch::{Kind, Tensor, nn};

use super::buffers::{RangeBuffers, range_buffer_methods};
use super::range::{batch_min_max, check_bits, to_qparams};
use super::{Observer, ObserverError, ObserverErrorKind, ObserverState, QuantScheme};

/// Histogram observer for post-training calibration: accumulates a histogram of every value seen
/// (`bins` equal bins over the running `[min, max]`; when a batch widens the range, old counts are
/// moved to the new bins by their bin centres), and clips the range to the `percentile`:
/// `max = upper edge of the first bin where the CDF ≥ p/100`, `min = lower edge of the first bin
/// where the CDF ≥ 1 − p/100`. The clipped range then goes through
/// [`qat_core::QuantParams::asymmetric`] (extended to include 0, nudged). `percentile = 100` gives
/// plain min/max.
///
/// ```
/// use qat_train::observer::{HistogramObserver, Observer};
/// use tch::{Device, Tensor, nn::VarStore};
/// let vs = VarStore::new(Device::Cpu);
/// let mut obs = HistogramObserver::new(&(vs.root() / "calib"), 8, 100, 99.0)?;
/// let mut data: Vec<f32> = (0..999).map(|i| i as f32 / 1000.0).collect();
/// data.push(50.0); // one outlier
/// obs.observe(&Tensor::from_slice(&data))?;
/// let (lo, hi) = obs.range()?;
/// assert_eq!(lo, 0.0);
/// assert!(hi <= 1.0); // the outlier is clipped away
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HistogramObserver {
    buf: RangeBuffers,
    hist: Tensor,
    bits: u32,
    percentile: f64,
}

impl HistogramObserver {
    /// A histogram observer with `bins ≥ 2` bins clipping at `percentile ∈ (50, 100]`.
    pub fn new(
        path: &nn::Path<'_>,
        bits: u32,
        bins: usize,
        percentile: f64,
    ) -> Result<Self, ObserverError> {
        let buf = RangeBuffers::new(path, 1)?;
        check_bits(&buf.name, bits)?;
        if bins < 2 || !(percentile > 50.0 && percentile <= 100.0) {
            return Err(buf.err(ObserverErrorKind::Config(format!(
                "bins {bins} must be ≥ 2 and percentile {percentile} in (50, 100]"
            ))));
        }
        let hist = path.add(
            "hist",
            Tensor::f_zeros([bins as i64], (Kind::Double, path.device()))
                .map_err(ObserverError::torch(&buf.name))?,
            false,
        );
        Ok(Self {
            buf,
            hist,
            bits,
            percentile,
        })
    }

    /// The clipped `(min, max)` the parameters are computed from.
    pub fn range(&self) -> Result<(f32, f32), ObserverError> {
        let (lo, hi) = self.buf.read()?;
        let (lo, hi) = (lo[0], hi[0]);
        let h = self.counts()?;
        let total: f64 = h.iter().sum();
        if total <= 0.0 || hi <= lo {
            return Ok((lo, hi));
        }
        let width = f64::from(hi - lo) / h.len() as f64;
        let p = self.percentile / 100.0;
        let mut cum = 0.0;
        let (mut cmin, mut cmax) = (lo, hi);
        let mut found_min = false;
        for (i, &c) in h.iter().enumerate() {
            cum += c;
            if !found_min && cum >= total * (1.0 - p) && c > 0.0 {
                cmin = (f64::from(lo) + i as f64 * width) as f32;
                found_min = true;
            }
            if cum >= total * p {
                cmax = (f64::from(lo) + (i + 1) as f64 * width) as f32;
                break;
            }
        }
        Ok((cmin.max(lo), cmax.min(hi)))
    }

    /// The bin counts. *Host read.*
    fn counts(&self) -> Result<Vec<f64>, ObserverError> {
        host_read::vec_f64(&self.hist, "histogram bins")
            .map_err(ObserverError::torch(&self.buf.name))
    }

    fn bins(&self) -> usize {
        self.hist.size()[0] as usize
    }

    fn set_counts(&mut self, h: &[f64]) -> Result<(), ObserverError> {
        let device = self.hist.device();
        tch::no_grad(|| self.hist.f_copy_(&Tensor::from_slice(h).to_device(device)))
            .map_err(ObserverError::torch(&self.buf.name))
    }
}

impl Observer for HistogramObserver {
    range_buffer_methods!();

    fn observe(&mut self, x: &Tensor) -> Result<(), ObserverError> {
        if self.buf.frozen() {
            return Ok(());
        }
        let (blo, bhi) = batch_min_max(x, None, 1, &self.buf.name)?;
        let n = self.buf.count();
        let bins = self.bins();
        let mut h = vec![0f64; bins];
        let (lo, hi) = if n == 0 {
            (blo[0], bhi[0])
        } else {
            let (lo, hi) = self.buf.read()?;
            let (nlo, nhi) = (lo[0].min(blo[0]), hi[0].max(bhi[0]));
            let old = self.counts()?;
            let ow = f64::from(hi[0] - lo[0]) / bins as f64;
            for (i, &c) in old.iter().enumerate() {
                let centre = f64::from(lo[0]) + (i as f64 + 0.5) * ow;
                h[bin_of(centre, nlo, nhi, bins)] += c;
            }
            (nlo, nhi)
        };
        let vals = tch::no_grad(|| host_read::vec_f32(x, "histogram values"))
            .map_err(ObserverError::torch(&self.buf.name))?;
        for v in vals {
            h[bin_of(f64::from(v), lo, hi, bins)] += 1.0;
        }
        self.set_counts(&h)?;
        self.buf.store(&[lo], &[hi], n + 1)
    }

    fn qparams(&self) -> Result<TensorQParams, ObserverError> {
        let (lo, hi) = self.range()?;
        to_qparams(
            &self.buf.name,
            QuantScheme::AsymmetricUnsigned,
            self.bits,
            None,
            &[lo],
            &[hi],
        )
    }

    fn state(&self) -> Result<ObserverState, ObserverError> {
        self.buf.state(self.counts()?)
    }

    fn load_state(&mut self, state: &ObserverState) -> Result<(), ObserverError> {
        let bins = self.bins();
        if state.histogram.len() != bins {
            return Err(self.buf.err(ObserverErrorKind::State(format!(
                "{bins} histogram bins expected, got {}",
                state.histogram.len()
            ))));
        }
        self.buf.load_state(state)?;
        self.set_counts(&state.histogram)
    }
}

/// The bin of `v` among `bins` equal bins over `[lo, hi]` (values outside go to the end bins).
fn bin_of(v: f64, lo: f32, hi: f32, bins: usize) -> usize {
    let w = f64::from(hi) - f64::from(lo);
    if w <= 0.0 {
        return 0;
    }
    let i = ((v - f64::from(lo)) / w * bins as f64).floor();
    (i.max(0.0) as usize).min(bins - 1)
}
