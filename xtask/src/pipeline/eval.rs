//! Measurements: PTQ, the integer runtime's accuracy, the export emitted per rounding mode, and
//! latency at batch 1.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use ndarray::{ArrayD, Axis};
use qat_export::{
    CalibrationMethod, ExportError, ExportOptions, PtqConfig, QuantPlan,
    ir::{WeightQuant, WeightScheme},
};
use qat_int8_runtime::{Executor, Int8Model, KernelPath, Rounding};
use qat_train::{convert, models::Net, trainer};
use tch::Kind;
use xtask::report::{Latency, RoundingRow};

use super::{Pipeline, data::nchw_tensor, train::QatOutcome};

impl Pipeline {
    /// Post-training quantization of a float model, evaluated in the integer runtime.
    pub(super) fn ptq(
        &self,
        float_net: &Net,
        weight_bits: u32,
        act_bits: u32,
        per_channel: bool,
    ) -> Result<f64> {
        let graph =
            convert::convert_unchecked(float_net).context("cannot convert the float model")?;
        let scheme = if per_channel {
            WeightScheme::SymmetricPerChannel
        } else {
            WeightScheme::SymmetricPerTensor
        };
        let cfg = PtqConfig {
            method: CalibrationMethod::MinMax,
            weight_quant: Some(WeightQuant {
                scheme,
                bits: weight_bits,
            }),
            activation_bits: Some(act_bits),
            export: convert::export_options(),
        };
        let batches = self.calibration_batches()?;
        let model = qat_export::ptq_export(&graph, batches.iter().map(|b| b.view()), &cfg)
            .context("PTQ export failed")?;
        let (acc, _) = self.eval_int8(&model)?;
        Ok(acc)
    }

    /// The exported plan emitted once per requantization rounding mode: the integer model's test
    /// accuracy and its argmax agreement with the fake-quant model (the mode the pipeline exports with
    /// is not re-run).
    pub(super) fn rounding_rows(
        &self,
        out: &QatOutcome,
        w_bits: u32,
        a_bits: u32,
    ) -> Result<Vec<RoundingRow>> {
        let mut rows = Vec::new();
        for r in Rounding::ALL {
            let exported = r == out.model.rounding;
            let (int8_acc, agree, refused) = if exported {
                (Some(out.int8_acc), Some(out.agreement), None)
            } else {
                // Re-planned for the rounding's target: its clamps follow that runtime too. A
                // target that cannot compute the model exactly refuses it; the row says why.
                let opts = ExportOptions {
                    target: r.into(),
                    ..out.plan.options
                };
                match QuantPlan::new(&out.plan.graph, &opts).and_then(|p| p.to_int8_model()) {
                    Ok(model) => {
                        let (acc, pred) = self.eval_int8(&model)?;
                        (Some(acc), Some(agreement(&out.fq_pred, &pred)), None)
                    }
                    Err(e @ ExportError::Refused { .. }) => {
                        eprintln!(
                            "[pipeline] W{w_bits}A{a_bits}, rounding {}: target {} {e}",
                            r.name(),
                            opts.target
                        );
                        (None, None, Some(e.to_string()))
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("export for target {}", opts.target));
                    }
                }
            };
            rows.push(RoundingRow {
                weight_bits: w_bits,
                act_bits: a_bits,
                rounding: r.name().to_string(),
                exported,
                int8_acc,
                agreement: agree,
                refused,
            });
        }
        Ok(rows)
    }

    /// Test accuracy and predictions of an integer model in the runtime.
    pub(super) fn eval_int8(&self, model: &Int8Model) -> Result<(f64, Vec<i64>)> {
        eval_int8_on(model, &self.test_nhwc, &self.test_labels)
    }

    /// Predictions of the fake-quant (or float) model in libtorch.
    pub(super) fn predict_fake_quant(&self, net: &mut Net) -> Result<Vec<i64>> {
        let mut preds = Vec::with_capacity(self.test_labels.len());
        let n = self.test_labels.len();
        for s in (0..n).step_by(256) {
            let e = (s + 256).min(n);
            let x = nchw_tensor(&self.test_nhwc, s, e)?;
            let logits = trainer::predict(net, &x)?;
            let am = logits.f_argmax(-1, false)?.f_to_kind(Kind::Int64)?;
            preds.extend(Vec::<i64>::try_from(am)?);
        }
        Ok(preds)
    }

    /// Median µs per image of `model` in the integer runtime at batch 1 on `threads` threads (the
    /// configuration's `latency.images` test images, after 5 warm-up calls), and the kernel path
    /// it ran.
    pub(super) fn int8_latency(
        &self,
        model: &Int8Model,
        threads: usize,
    ) -> Result<(f64, KernelPath)> {
        let images = self.cfg.latency.images.min(self.test_labels.len()).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut exec = Executor::new(model).context("cannot plan the integer model")?;
        let us = pool.install(|| {
            median_us(
                images,
                |k| Ok(self.test_nhwc.slice_axis(Axis(0), (k..k + 1).into())),
                |x| {
                    exec.run(x.view().into_dyn())?;
                    Ok(())
                },
            )
        })?;
        Ok((us, exec.kernel_path()))
    }

    /// Median latency per image at batch 1: the int8 runtime and the f32 libtorch model; then
    /// onnxruntime int8 (QDQ) and f32 on the same model (`ort_top1`: the deployed stage's top-1
    /// of the QDQ model in onnxruntime).
    pub(super) fn latency(
        &self,
        out: &QatOutcome,
        float_net: &mut Net,
        float_acc: f64,
        ort_top1: Option<f64>,
    ) -> Result<Vec<Latency>> {
        let (model, int8_acc) = (&out.model, out.int8_acc);
        let images = self.cfg.latency.images.min(self.test_labels.len()).max(1);
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = vec![1];
        if all > 1 {
            threads.push(all);
        }
        let mut rows = Vec::new();
        for &t in &threads {
            let (us, kernel_path) = self.int8_latency(model, t)?;
            rows.push(Latency {
                path: format!("int8 ({kernel_path})"),
                threads: t,
                batch: 1,
                us_per_image: us,
                accuracy: int8_acc,
                qat_us_per_image: None,
                skipped: None,
            });
        }
        let before = tch::get_num_threads();
        for &t in &threads {
            tch::set_num_threads(t as i32);
            let us = median_us(
                images,
                |k| nchw_tensor(&self.test_nhwc, k, k + 1),
                |x| {
                    let _ = trainer::predict(float_net, x)?;
                    Ok(())
                },
            )?;
            rows.push(Latency {
                path: "f32 (libtorch)".into(),
                threads: t,
                batch: 1,
                us_per_image: us,
                accuracy: float_acc,
                qat_us_per_image: None,
                skipped: None,
            });
        }
        tch::set_num_threads(before);
        rows.extend(self.ort_latency(out, float_net, float_acc, ort_top1, &threads)?);
        Ok(rows)
    }
}

/// Accuracy and predictions of an integer model in the runtime on NHWC images `x` with `labels`.
pub(super) fn eval_int8_on(
    model: &Int8Model,
    x: &ArrayD<f32>,
    labels: &[i64],
) -> Result<(f64, Vec<i64>)> {
    let mut exec = Executor::new(model).context("cannot plan the integer model")?;
    let mut preds = Vec::with_capacity(labels.len());
    let bs = 256;
    let n = labels.len();
    for s in (0..n).step_by(bs) {
        let e = (s + bs).min(n);
        let batch = x.slice_axis(Axis(0), (s..e).into());
        let out = exec
            .run(batch.into_dyn())
            .context("integer inference failed")?;
        let logits = out
            .first()
            .ok_or_else(|| anyhow!("integer model has no output"))?;
        let logits = logits
            .view()
            .into_shape_with_order((e - s, logits.len() / (e - s).max(1)))?;
        preds.extend(logits.outer_iter().map(|r| argmax(r.iter().copied())));
    }
    let correct = preds.iter().zip(labels).filter(|(p, y)| p == y).count();
    Ok((correct as f64 / n.max(1) as f64, preds))
}

/// Share of equal predictions.
pub(super) fn agreement(a: &[i64], b: &[i64]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

/// Median µs of `run(input(k))` over `images` timed calls, `k` cycling through `0..images`, after
/// 5 untimed warm-up calls (`input` and dropping its result are not timed).
fn median_us<T>(
    images: usize,
    mut input: impl FnMut(usize) -> Result<T>,
    mut run: impl FnMut(&T) -> Result<()>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(images);
    for i in 0..images + 5 {
        let x = input(i % images)?;
        let t0 = Instant::now();
        run(&x)?;
        if i >= 5 {
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    if times.is_empty() {
        return Ok(0.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn argmax(it: impl Iterator<Item = f32>) -> i64 {
    let mut best = (0i64, f32::NEG_INFINITY);
    for (i, v) in it.enumerate() {
        if v > best.1 {
            best = (i as i64, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::median_us;

    #[test]
    fn median_us_times_images_in_turn_after_five_warm_up_calls() {
        let (mut inputs, mut runs) = (Vec::new(), Vec::new());
        let us = median_us(
            3,
            |k| {
                inputs.push(k);
                Ok(10 * k)
            },
            |&x| {
                runs.push(x);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(inputs, [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(runs, [0, 10, 20, 0, 10, 20, 0, 10]);
        assert!(us.is_finite() && us >= 0.0);
        let failing = median_us(2, Ok, |_| Err(anyhow::anyhow!("runtime failed")));
        assert_eq!(failing.unwrap_err().to_string(), "runtime failed");
    }
}
