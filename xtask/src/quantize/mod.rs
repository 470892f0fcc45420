//! `qat-quantize`: bring your own float ONNX model, quantize it post-training, and write every
//! deployed format with a report (built and run by `cargo xtask quantize`; docs/import.md).
//!
//! ```sh
//! cargo xtask quantize --onnx model.onnx --data DIR [--target qat|tflite|ort|xnnpack]
//!     [--format qat8,tflite,onnx] [--mean M[,M…] --std S[,S…]] [--calibration 512] [--eval 0]
//!     [--qat-epochs 0] [--no-runtimes] [--out DIR]
//! ```
//!
//! `DIR` holds a dataset in one of two layouts:
//! * IDX (MNIST, Fashion-MNIST): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//!   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each optionally `.gz`);
//! * CIFAR-10 binary: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`.
//!
//! Steps: import → the float model's top-1 → PTQ W8A8 per tensor and per channel for the target,
//! each in the qat runtime → with `--qat-epochs N`, QAT fine-tuning for the target (fake quant
//! and its int8 model) → the last variant (per channel, or QAT) written in every `--format` → the
//! `.tflite` in LiteRT (reference kernels and the default XNNPACK delegate) and the `.onnx` in
//! onnxruntime, each file's top-1 and its agreement with the qat runtime → `report.json` and
//! `report.md` in the output directory, with the per-layer fidelity of the deployed variant.
//!
//! Pixels become `(p/255 − mean_c)/std_c`: `--mean`/`--std`, else the model's `metadata_props`
//! `input_mean`/`input_std`, else the training split's statistics. Calibration uses the first
//! `--calibration` training images; accuracy is measured on the test split's first `--eval`
//! images (0 = all).

mod input;
mod qat;
mod runtimes;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ndarray::ArrayD;
use qat_core::Target;
use qat_export::ir::{WeightQuant, WeightScheme};
use qat_export::onnx::{ImportOptions, OnnxOptions, import_onnx, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{CalibrationMethod, ExportOptions, PtqConfig, QuantPlan, interp, ptq};
use qat_int8_runtime::{Executor, Int8Model};

use input::{load_data, nhwc_batch, normalization, predict};
use xtask::quantize_report::{DeployedRow, NormReport, Report, Row, Timings};

/// A deployed format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// The qat runtime's `.qat8`.
    Qat8,
    /// TFLite flatbuffer (LiteRT).
    Tflite,
    /// ONNX QDQ (onnxruntime).
    Onnx,
}

#[derive(Debug, Parser)]
#[command(
    name = "qat-quantize",
    about = "Import a float ONNX model, quantize it (PTQ), export it, run it in its runtimes"
)]
pub struct Args {
    /// The float ONNX model (opset 13–21; docs/import.md lists the ops).
    #[arg(long)]
    pub onnx: PathBuf,
    /// Dataset directory: IDX or CIFAR-10 binary (docs/import.md).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (default `target/qat-quantize/<model file stem>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Deployed formats to write (comma-separated; default all).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "qat8,tflite,onnx"
    )]
    pub format: Vec<OutFormat>,
    /// The deployment target whose requantization arithmetic the model uses (docs/targets.md).
    #[arg(long, default_value = "qat", value_parser = ["qat", "tflite", "ort", "xnnpack"])]
    pub target: String,
    /// Per-channel input mean of `p/255` (one value, or one per channel, comma-separated).
    #[arg(long, requires = "std")]
    pub mean: Option<String>,
    /// Per-channel input standard deviation of `p/255` (like `--mean`).
    #[arg(long, requires = "mean")]
    pub std: Option<String>,
    /// Training images used for calibration.
    #[arg(long, default_value_t = 512)]
    pub calibration: usize,
    /// Test images evaluated (0 = all).
    #[arg(long, default_value_t = 0)]
    pub eval: usize,
    /// Do not run the written files in LiteRT and onnxruntime.
    #[arg(long)]
    pub no_runtimes: bool,
    /// QAT fine-tuning epochs after PTQ (0: none), with the pipeline's schedule and optimizer
    /// (`configs/default.toml`), trained for `--target`: once the observers freeze, the forward
    /// pass requantizes every conv/linear output in the target's arithmetic (as the pipeline's
    /// `--target`), so the model trained is the one exported. The QAT model is then the one
    /// deployed.
    #[arg(long, default_value_t = 0)]
    pub qat_epochs: usize,
}

/// A quantized model and the plan it came from (the plan gives the per-layer fidelity).
struct Variant {
    name: String,
    model: Int8Model,
    plan: Option<QuantPlan>,
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let target: Target = args
        .target
        .parse()
        .map_err(|e| anyhow::anyhow!("--target: {e}"))?;
    let t = Instant::now();
    let bytes = std::fs::read(&args.onnx)
        .with_context(|| format!("cannot read {}", args.onnx.display()))?;
    let imported = import_onnx(&bytes, &ImportOptions::default())
        .with_context(|| format!("cannot import {}", args.onnx.display()))?;
    let graph = imported.graph;
    let onnx_ops = op_histogram(&bytes)?;
    timings.import_s = secs(t);
    let data = load_data(&args.data)?;
    let [c, h, w] = data.train.image_shape();
    let shapes = graph.validate()?;
    let in_shape = &shapes[graph.input_id()?.0];
    if in_shape != &vec![h, w, c] {
        bail!(
            "the model's input is [H, W, C] = {in_shape:?}, the dataset's images are [{h}, {w}, {c}]"
        );
    }
    let (norm, norm_source) = normalization(
        args.mean.as_deref(),
        args.std.as_deref(),
        &bytes,
        &data.train,
    )?;
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
    let n_eval = match args.eval {
        0 => data.test.len(),
        n => n.min(data.test.len()),
    };
    let n_cal = args.calibration.clamp(1, data.train.len());
    let labels = &data.test.labels[..n_eval];
    let top1 = |p: &[usize]| {
        p.iter()
            .zip(labels)
            .filter(|(a, b)| **a == usize::from(**b))
            .count() as f64
            / n_eval.max(1) as f64
    };
    let agree = |a: &[usize], b: &[usize]| {
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
    };

    let t = Instant::now();
    let float = predict("float (imported)", &data.test, n_eval, &norm, |x| {
        interp::run(&graph, x.view(), None)?
            .pop()
            .context("the graph has no nodes")
    })?;
    timings.float_eval_s = secs(t);
    let mut rows = vec![Row {
        name: "float (imported)".into(),
        top1: top1(&float),
        agree_float: 1.0,
        deployed: false,
    }];

    let t = Instant::now();
    let cal: Vec<ArrayD<f32>> = (0..n_cal)
        .step_by(64)
        .map(|s| nhwc_batch(&data.train, s..(s + 64).min(n_cal), &norm))
        .collect();
    let mut variants = Vec::new();
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
        let plan = ptq(&graph, cal.iter().map(|b| b.view()), &cfg)
            .with_context(|| format!("{name} for target {target}"))?;
        let model = plan.to_int8_model()?;
        variants.push(Variant {
            name: name.into(),
            model,
            plan: Some(plan),
        });
    }
    // Quantization-aware fine-tuning of the imported graph: its fake-quant row goes to the table,
    // its integer model becomes the last variant, the one written to the deployed files.
    let mut qat_rows = Vec::new();
    if args.qat_epochs > 0 {
        let run = qat::fine_tune(&graph, &data, &norm, args.qat_epochs, target, n_eval)?;
        let mut int8_name = None;
        for (name, preds) in run.rows {
            if name.contains("(int8") {
                int8_name = Some(name);
            } else {
                qat_rows.push(Row {
                    top1: top1(&preds),
                    agree_float: agree(&preds, &float),
                    name,
                    deployed: false,
                });
            }
        }
        variants.push(Variant {
            name: int8_name.unwrap_or_else(|| "QAT (int8, qat runtime)".into()),
            model: run.model,
            plan: Some(run.plan),
        });
    }
    let mut preds_of = Vec::with_capacity(variants.len());
    for v in &variants {
        let mut exec = Executor::new(&v.model)?;
        let preds = predict(&v.name, &data.test, n_eval, &norm, |x| {
            exec.run(x.view())?.pop().context("the model has no output")
        })?;
        rows.push(Row {
            name: v.name.clone(),
            top1: top1(&preds),
            agree_float: agree(&preds, &float),
            deployed: false,
        });
        preds_of.push(preds);
    }
    // The fake-quant row sits just above its integer model's (the last row).
    if !qat_rows.is_empty() {
        let at = rows.len() - 1;
        rows.splice(at..at, qat_rows);
    }
    timings.quantize_s = secs(t);
    let (deployed, deployed_preds) = match (variants.last(), preds_of.last()) {
        (Some(v), Some(p)) => (v, p),
        _ => bail!("no quantized variant"),
    };
    if let Some(r) = rows.last_mut() {
        r.deployed = true;
    }
    let fidelity = match &deployed.plan {
        Some(plan) => {
            qat_export::fidelity_report(plan, cal.iter().take(4).map(|b| b.view()))?.to_markdown()
        }
        None => "(the deployed variant has no PTQ plan)".into(),
    };

    let t = Instant::now();
    let mut files = Vec::new();
    for f in &args.format {
        let (ext, bytes) = match f {
            OutFormat::Qat8 => ("qat8", deployed.model.to_bytes()?),
            OutFormat::Tflite => (
                "tflite",
                to_tflite(&deployed.model, &TfliteOptions::default())?.bytes,
            ),
            OutFormat::Onnx => (
                "onnx",
                to_onnx_qdq(&deployed.model, &OnnxOptions::default())?.bytes,
            ),
        };
        let path = out.join(format!("model.{ext}"));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }
    timings.export_s = secs(t);

    let t = Instant::now();
    let (mut deployed_rows, mut deployed_skipped) = (Vec::new(), None);
    let python = if args.no_runtimes {
        Err("--no-runtimes".to_string())
    } else {
        runtimes::peers_python()
    };
    match python {
        Ok(python) => {
            let work = out.join("runtimes");
            for r in runtimes::run_all(&python, &files, &data.test, n_eval, &norm, &work)? {
                deployed_rows.push(DeployedRow {
                    target_runtime: runtimes::target_runtime(target) == Some(r.runtime.as_str()),
                    top1: top1(&r.predictions),
                    agree_qat_runtime: agree(&r.predictions, deployed_preds),
                    file: r.file,
                    runtime: r.runtime,
                    version: r.version,
                });
            }
            let _ = std::fs::remove_dir_all(&work);
        }
        Err(why) => deployed_skipped = Some(why),
    }
    timings.runtimes_s = secs(t);
    timings.total_s = secs(started);

    let report = Report {
        model: args.onnx.display().to_string(),
        onnx_ops,
        dataset: format!(
            "{} ({} train / {} test images, {h}×{w}×{c})",
            args.data.display(),
            data.train.len(),
            data.test.len()
        ),
        calibration_images: n_cal,
        eval_images: n_eval,
        target: target.name().into(),
        normalize: NormReport {
            mean: norm.mean,
            std: norm.std,
            source: norm_source,
        },
        rows,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        deployed: deployed_rows,
        deployed_skipped,
        fidelity_markdown: fidelity,
        timings,
    };
    let md = report.to_markdown();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("[quantize] report: {}", out.join("report.md").display());
    Ok(())
}

/// The ONNX op types of the model's graph and their counts, sorted by op type.
fn op_histogram(bytes: &[u8]) -> Result<Vec<(String, usize)>> {
    use prost::Message;
    let model = qat_export::onnx::proto::ModelProto::decode(bytes).context("not an ONNX model")?;
    let mut ops = std::collections::BTreeMap::<String, usize>::new();
    for n in model.graph.iter().flat_map(|g| &g.node) {
        *ops.entry(n.op_type.clone().unwrap_or_default())
            .or_default() += 1;
    }
    Ok(ops.into_iter().collect())
}
