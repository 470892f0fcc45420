//! `--qat-epochs N`: QAT fine-tuning of the imported model with the pipeline's recipe (the
//! `[qat]`, `[float]` optimizer and `[data]` batch settings of `configs/default.toml`, compiled
//! in) for the chosen target (its requantization arithmetic in the forward pass, as the
//! pipeline's `--target`), its export for that target, and its top-1 rows: fake quant (libtorch)
//! and int8 (the qat runtime).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use qat_core::Target;
use qat_export::{ExportOptions, FloatGraph, QuantPlan};
use qat_int8_runtime::{Executor, Int8Model};
use qat_train::convert;
use qat_train::data::{Augment, Loader, LoaderConfig, Normalize, TrainTest};
use qat_train::finetune::{qat_fine_tune, steps_per_epoch};
use qat_train::models::GraphNetOptions;
use qat_train::schedule::LrSchedule;
use qat_train::trainer::{Event, TrainConfig};
use tch::Kind;
use xtask::config::{Config, QatConfig};

/// The fine-tuned model's predictions and its export.
pub(crate) struct QatRun {
    /// `(row name, predicted classes of the first `n_eval` test images)`.
    pub rows: Vec<(String, Vec<usize>)>,
    /// The integer model and its plan (for the deployed files and the fidelity report).
    pub model: Int8Model,
    pub plan: QuantPlan,
}

/// The layers' options of the fine-tuning and the export options of its result, both for
/// `target`: the `[qat]` section `q` with its target set to `target` (as the pipeline's `--target`
/// sets it), so that the fake-quant forward requantizes in `target`'s arithmetic once the
/// observers freeze and average pools are tied where `target` cannot rescale them; the export
/// then writes the model trained.
fn options(q: &QatConfig, target: Target) -> (GraphNetOptions, ExportOptions) {
    let q = QatConfig {
        target: Some(target),
        ..q.clone()
    };
    let layers = GraphNetOptions {
        quant: q.quant(q.weight_bits, q.act_bits, q.per_channel),
        fold: q.bn_fold(),
        stats_grad: q.bn_stats_grad,
        ..GraphNetOptions::default()
    };
    (layers, convert::export_options_for(q.target))
}

/// Fine-tunes `graph` for `epochs` epochs on `data.train` (inputs normalized by `norm`) for
/// `target` ([`options`]), exports it for `target`, and predicts the first `n_eval` test images
/// with both models.
pub(crate) fn fine_tune(
    graph: &FloatGraph,
    data: &TrainTest,
    norm: &Normalize,
    epochs: usize,
    target: Target,
    n_eval: usize,
) -> Result<QatRun> {
    let pipeline = Config::parse(
        include_str!("../../../configs/default.toml"),
        Path::new("configs/default.toml"),
    )?;
    let (q, f, d) = (&pipeline.qat, &pipeline.float, &pipeline.data);
    let (opts, export) = options(q, target);
    let mut train = TrainConfig {
        epochs,
        batch_size: d.batch_size,
        seed: pipeline.seed,
        normalize: norm.clone(),
        augment: Augment {
            pad: d.augment_pad,
            flip: false,
        },
        optimizer: f.optimizer(q.lr, 0),
        eval_samples: Some(n_eval),
        record_steps: false,
        ..TrainConfig::default()
    };
    train.optimizer.lr.schedule = LrSchedule::Cosine {
        total: (steps_per_epoch(&data.train, &train) * epochs as u64).max(1),
        min_lr: 0.0,
    };
    let phases = q.phases(d.calibration_batches);
    let label = format!(
        "QAT W{}A{} {}, {epochs} epoch{}",
        q.weight_bits,
        q.act_bits,
        if q.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        if epochs == 1 { "" } else { "s" }
    );
    let t0 = Instant::now();
    let mut tuned = qat_fine_tune(
        graph,
        &data.train,
        &data.test,
        &opts,
        &train,
        &phases,
        &mut |e| {
            if let Event::Epoch(s) = e {
                eprintln!(
                    "[quantize] QAT epoch {}: loss {:.4}, test top-1 {:.2}% (fake quant, phase {})",
                    s.epoch + 1,
                    s.train_loss,
                    100.0 * s.test_acc,
                    s.phase
                );
            }
        },
    )
    .context("QAT fine-tuning failed")?;
    eprintln!("[quantize] {label}: {:.1} s", t0.elapsed().as_secs_f64());
    let plan =
        QuantPlan::new(&tuned.graph, &export).context("the QAT model's export was refused")?;
    let model = plan.to_int8_model()?;

    // Fake quant in libtorch, the test images in file order.
    let loader = Loader::new(
        Arc::new(data.test.take(n_eval)),
        LoaderConfig {
            batch_size: 256,
            normalize: norm.clone(),
            prefetch: 0,
            ..LoaderConfig::default()
        },
    )?;
    let device = tuned.net.device();
    let mut fq = Vec::with_capacity(n_eval);
    let _g = tch::no_grad_guard();
    for b in loader.epoch(0, 0) {
        let x = b?.images.f_to_device(device)?;
        let y = tuned.net.forward_t(&x, false)?.f_argmax(-1, false)?;
        let y = Vec::<i64>::try_from(y.f_to_kind(Kind::Int64)?.f_to_device(tch::Device::Cpu)?)?;
        fq.extend(y.into_iter().map(|v| v as usize));
    }
    let mut exec = Executor::new(&model)?;
    let int8 = super::predict(&label, &data.test, n_eval, norm, |x| {
        let mut y = exec.run(x.view())?;
        y.pop().context("the model has no output")
    })?;
    Ok(QatRun {
        rows: vec![
            (format!("{label} (fake quant, libtorch)"), fq),
            (format!("{label} (int8, qat runtime)"), int8),
        ],
        model,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use qat_train::layers::WeightGranularity;

    use super::*;

    #[test]
    fn the_fine_tuning_trains_for_the_target_it_exports_to() {
        let pipeline = Config::parse(
            include_str!("../../../configs/default.toml"),
            Path::new("configs/default.toml"),
        )
        .unwrap();
        // The pipeline's default trains without a target: the fine-tuning must not inherit that.
        assert_eq!(pipeline.qat.target, None);
        for target in Target::ALL {
            let (layers, export) = options(&pipeline.qat, target);
            assert_eq!(layers.quant.target, Some(target), "{target}");
            assert_eq!(export.target, target, "{target}");
            assert_eq!(
                export.avg_pool_own_params,
                target.average_pool_rescales(),
                "{target}"
            );
            assert_eq!(layers.quant.weight_bits, 8);
            assert_eq!(layers.quant.act_bits, 8);
            assert_eq!(
                layers.quant.weight_granularity,
                WeightGranularity::PerChannel
            );
        }
    }
}
