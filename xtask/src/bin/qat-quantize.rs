//! `qat-quantize`: bring your own float ONNX model, quantize it post-training, and write every
//! deployed format with a report (built and run by `cargo xtask quantize`).
//!
//! ```sh
//! cargo xtask quantize --onnx model.onnx --data DIR [--format qat8,tflite,onnx] [--target qat|tflite]
//!     [--calibration 512] [--eval 0] [--normalize MEAN/STD[,MEAN/STD…]] [--qat-epochs N] [--out DIR]
//! ```
//!
//! `DIR` holds a dataset in one of two layouts:
//! * IDX (MNIST, Fashion-MNIST): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//!   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each optionally `.gz`);
//! * CIFAR-10 binary: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`.
//!
//! Calibration uses the first `--calibration` training images; accuracy is measured on the test
//! split (`--eval N`: its first N images, 0 = all). Pixels become `(p/255 − mean_c)/std_c`
//! (`--normalize`, default: the training split's own statistics), in the layout the ONNX input
//! has (NCHW or NHWC). Results go to `DIR/report.json` and `DIR/report.md`, the models to
//! `DIR/model.{qat8,tflite,onnx}`.

#[path = "qat-quantize/qat.rs"]
mod qat;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayD, IxDyn};
use qat_core::Target;
use qat_export::ir::{WeightQuant, WeightScheme};
use qat_export::onnx::{ImportOptions, OnnxOptions, import_onnx_file, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{CalibrationMethod, ExportOptions, FloatGraph, PtqConfig, interp, ptq};
use qat_int8_runtime::{Executor, Int8Model};
use qat_train::data::{Dataset, Normalize, TrainTest};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "qat-quantize",
    about = "Import a float ONNX model, quantize it (PTQ), export it"
)]
struct Args {
    /// The float ONNX model (opset 13–21).
    #[arg(long)]
    onnx: PathBuf,
    /// Dataset directory (IDX or CIFAR-10 binary, see the module docs).
    #[arg(long)]
    data: PathBuf,
    /// Output directory (default `target/qat-quantize/<model file stem>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Deployed formats to write.
    #[arg(long, value_delimiter = ',', default_value = "qat8,tflite,onnx")]
    format: Vec<String>,
    /// Requantization arithmetic of the deployment target (`qat`, `tflite`; see docs/targets.md).
    #[arg(long, default_value = "qat")]
    target: String,
    /// Training images used for calibration.
    #[arg(long, default_value_t = 512)]
    calibration: usize,
    /// Test images evaluated (0 = all).
    #[arg(long, default_value_t = 0)]
    eval: usize,
    /// Per-channel normalization `MEAN/STD`, comma-separated per channel (default: the training
    /// split's statistics).
    #[arg(long)]
    normalize: Option<String>,
    /// QAT fine-tuning epochs after PTQ (0: none), with the pipeline's schedule and optimizer
    /// (`configs/default.toml`); the QAT model is then the one deployed.
    #[arg(long, default_value_t = 0)]
    qat_epochs: usize,
}

/// One row of the accuracy table.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    top1: f64,
    /// Argmax agreement with the float model.
    agree_float: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    dataset: String,
    calibration_images: usize,
    eval_images: usize,
    target: String,
    normalize: (Vec<f32>, Vec<f32>),
    rows: Vec<Row>,
    files: Vec<String>,
    fidelity_markdown: String,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_data(dir: &Path) -> Result<TrainTest> {
    let has = |f: &str| dir.join(f).exists() || dir.join(format!("{f}.gz")).exists();
    if has("train-images-idx3-ubyte") {
        Ok(Dataset::load_mnist_dir(dir)?)
    } else if dir.join("test_batch.bin").exists() {
        Ok(Dataset::load_cifar10_dir(dir)?)
    } else {
        bail!(
            "{}: no IDX files (train-images-idx3-ubyte[.gz] …) and no CIFAR-10 batches (test_batch.bin …)",
            dir.display()
        )
    }
}

fn parse_normalize(s: &str, channels: usize) -> Result<Normalize> {
    let mut mean = Vec::new();
    let mut std = Vec::new();
    for part in s.split(',') {
        let (m, d) = part
            .split_once('/')
            .with_context(|| format!("--normalize {s:?}: {part:?} is not MEAN/STD"))?;
        mean.push(
            m.trim()
                .parse::<f32>()
                .with_context(|| format!("--normalize: mean {m:?}"))?,
        );
        std.push(
            d.trim()
                .parse::<f32>()
                .with_context(|| format!("--normalize: std {d:?}"))?,
        );
    }
    if mean.len() != channels || std.iter().any(|&d| !(d > 0.0 && d.is_finite())) {
        bail!("--normalize {s:?}: {channels} channels need {channels} MEAN/STD pairs with STD > 0");
    }
    Ok(Normalize { mean, std })
}

/// Images `range` of `ds` as a normalized NHWC f32 batch `[n, H, W, C]`.
fn nhwc_batch(ds: &Dataset, range: std::ops::Range<usize>, norm: &Normalize) -> ArrayD<f32> {
    let [c, h, w] = ds.image_shape();
    let n = range.len();
    let mut out = vec![0f32; n * h * w * c];
    for (b, i) in range.enumerate() {
        let img = ds.image(i);
        for ch in 0..c {
            for p in 0..h * w {
                let x = f32::from(img[ch * h * w + p]) / 255.0;
                out[(b * h * w + p) * c + ch] = (x - norm.mean[ch]) / norm.std[ch];
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), out).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
}

fn argmax(row: ndarray::ArrayView1<'_, f32>) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Predicted classes of `f` over the eval set, batch by batch, with a progress bar.
fn predict(
    what: &str,
    ds: &Dataset,
    n: usize,
    norm: &Normalize,
    mut f: impl FnMut(&ArrayD<f32>) -> Result<ArrayD<f32>>,
) -> Result<Vec<usize>> {
    let bar = ProgressBar::new(n as u64).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} {bar:40} {pos}/{len} images ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut preds = Vec::with_capacity(n);
    for start in (0..n).step_by(256) {
        let x = nhwc_batch(ds, start..(start + 256).min(n), norm);
        let y = f(&x)?;
        let y = y
            .into_dimensionality::<ndarray::Ix2>()
            .context("the model's output is not [N, classes]")?;
        preds.extend(y.rows().into_iter().map(argmax));
        bar.inc(x.shape()[0] as u64);
    }
    bar.finish();
    Ok(preds)
}

fn run(args: &Args) -> Result<()> {
    let target: Target = args
        .target
        .parse()
        .map_err(|e| anyhow::anyhow!("--target: {e}"))?;
    let imported = import_onnx_file(&args.onnx, &ImportOptions::default())
        .with_context(|| format!("cannot import {}", args.onnx.display()))?;
    let graph: FloatGraph = imported.graph;
    let data = load_data(&args.data)?;
    let [c, h, w] = data.train.image_shape();
    let shapes = graph.validate()?;
    let in_shape = &shapes[graph.input_id()?.0];
    if in_shape != &vec![h, w, c] {
        bail!(
            "the model's input is [H, W, C] = {in_shape:?}, the dataset's images are [{h}, {w}, {c}]"
        );
    }
    let norm = match &args.normalize {
        Some(s) => parse_normalize(s, c)?,
        None => Normalize::from_dataset(&data.train),
    };
    let stem = args
        .onnx
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/qat-quantize").join(&stem));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let n_eval = if args.eval == 0 {
        data.test.len()
    } else {
        args.eval.min(data.test.len())
    };
    let n_cal = args.calibration.clamp(1, data.train.len());
    let labels = &data.test.labels[..n_eval];
    let top1 = |p: &[usize]| {
        p.iter()
            .zip(labels)
            .filter(|(a, b)| **a == usize::from(**b))
            .count() as f64
            / n_eval as f64
    };
    let agree = |a: &[usize], b: &[usize]| {
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
    };

    let float = predict("float", &data.test, n_eval, &norm, |x| {
        let mut all = interp::run(&graph, x.view(), None)?;
        all.pop().context("the graph has no nodes")
    })?;
    let mut rows = vec![Row {
        name: "float (imported)".into(),
        top1: top1(&float),
        agree_float: 1.0,
    }];
    let cal: Vec<ArrayD<f32>> = (0..n_cal)
        .step_by(64)
        .map(|s| nhwc_batch(&data.train, s..(s + 64).min(n_cal), &norm))
        .collect();
    let mut chosen: Option<(Int8Model, qat_export::QuantPlan)> = None;
    for (name, scheme) in [
        ("PTQ W8A8 per-tensor", WeightScheme::SymmetricPerTensor),
        ("PTQ W8A8 per-channel", WeightScheme::SymmetricPerChannel),
    ] {
        let cfg = PtqConfig {
            method: CalibrationMethod::MinMax,
            weight_quant: Some(WeightQuant { scheme, bits: 8 }),
            activation_bits: Some(8),
            export: ExportOptions {
                target,
                ..ExportOptions::default()
            },
        };
        let plan = ptq(&graph, cal.iter().map(|b| b.view()), &cfg)?;
        let model = plan.to_int8_model()?;
        let mut exec = Executor::new(&model)?;
        let preds = predict(name, &data.test, n_eval, &norm, |x| {
            let mut y = exec.run(x.view())?;
            y.pop().context("the model has no output")
        })?;
        rows.push(Row {
            name: format!("{name} (int8, qat runtime)"),
            top1: top1(&preds),
            agree_float: agree(&preds, &float),
        });
        chosen = Some((model, plan));
    }
    if args.qat_epochs > 0 {
        let run = qat::fine_tune(&graph, &data, &norm, args.qat_epochs, target, n_eval)?;
        for (name, preds) in run.rows {
            let (top1, agree_float) = (top1(&preds), agree(&preds, &float));
            rows.push(Row {
                name,
                top1,
                agree_float,
            });
        }
        chosen = Some((run.model, run.plan));
    }
    let (model, plan) = chosen.context("no PTQ variant ran")?;
    let fidelity = qat_export::fidelity_report(&plan, cal.iter().take(4).map(|b| b.view()))?;
    let mut files = Vec::new();
    for f in &args.format {
        let (ext, bytes) = match f.as_str() {
            "qat8" => ("qat8", model.to_bytes()?),
            "tflite" => (
                "tflite",
                to_tflite(&model, &TfliteOptions::default())?.bytes,
            ),
            "onnx" => ("onnx", to_onnx_qdq(&model, &OnnxOptions::default())?.bytes),
            other => bail!("--format {other:?}: qat8, tflite or onnx"),
        };
        let path = out.join(format!("model.{ext}"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path.display().to_string());
    }
    let report = Report {
        model: args.onnx.display().to_string(),
        dataset: format!(
            "{} ({} train / {} test images, {h}×{w}×{c})",
            args.data.display(),
            data.train.len(),
            data.test.len()
        ),
        calibration_images: n_cal,
        eval_images: n_eval,
        target: target.name().into(),
        normalize: (norm.mean.clone(), norm.std.clone()),
        rows,
        files,
        fidelity_markdown: fidelity.to_markdown(),
    };
    let mut md = format!(
        "# qat-quantize: {}\n\nDataset: {}. Calibration: {} training images (min/max). Evaluated on {} test images. Target: `{}`.\n\n| model | top-1 % | argmax = float % |\n|---|---|---|\n",
        report.model, report.dataset, n_cal, n_eval, report.target
    );
    for r in &report.rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} |\n",
            r.name,
            100.0 * r.top1,
            100.0 * r.agree_float
        ));
    }
    md.push_str(&format!(
        "\nFiles: {}\n\n## Per-layer fidelity (per-channel model vs its simulation)\n\n{}\n",
        report.files.join(", "),
        report.fidelity_markdown
    ));
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("[quantize] report: {}", out.join("report.md").display());
    Ok(())
}
