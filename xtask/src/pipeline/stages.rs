//! The pipeline's stages. Each returns measured numbers; nothing here is hard-coded.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, ensure};
use ndarray::{ArrayD, Axis, IxDyn};
use qat_export::{
    CalibrationMethod, ExportOptions, PtqConfig, QuantPlan,
    ir::{WeightQuant, WeightScheme},
};
use qat_int8_runtime::{Executor, Int8Model, Rounding};
use qat_train::{
    convert,
    data::{Augment, Dataset, Normalize},
    fidelity,
    layers::{Activation, BnFoldMode, QuantConfig, WeightGranularity},
    models::{self, Architecture, ModelSpec, Net},
    observer::ActObserverConfig,
    schedule::{LrConfig, LrSchedule, OptimizerConfig, OptimizerKind, QatDelays, ScheduleConfig},
    trainer::{self, Event, History, TrainConfig},
};
use tch::{Device, Kind, Tensor};

use super::{
    Args,
    config::Config,
    plots,
    report::{
        AblationRow, BitPoint, Curves, Latency, Report, ResultRow, RoundingRow, TargetCheck, pct,
    },
};

/// Reference figures from the issue (PyTorch ao.quantization on the same data, measured on this machine kind).
const PYTORCH_QAT_INT8: f64 = 0.9695;
const TARGET_LOW_BIT_QAT: f64 = 0.93;
const TARGET_AGREEMENT: f64 = 0.995;

/// One QAT fine-tuning run's settings.
#[derive(Debug, Clone, Copy)]
struct QatRun {
    act: Activation,
    w_bits: u32,
    a_bits: u32,
    per_channel: bool,
    fold: BnFoldMode,
    stats_grad: bool,
    epochs: usize,
    lr: f64,
    /// Compare the trained model with the export's simulation node by node (the report's two main
    /// exports; the ablation points skip it).
    compare_nodes: bool,
}

/// A trained QAT model and what was measured on it.
struct QatOutcome {
    fake_quant_acc: f64,
    int8_acc: f64,
    agreement: f64,
    /// Test-set predictions of the fake-quant (libtorch) model.
    fq_pred: Vec<i64>,
    /// libtorch fake quant vs the export's simulation, per node (256 test images).
    torch_vs_sim: Vec<fidelity::NodeMatch>,
    model: Int8Model,
    plan: QuantPlan,
    history: History,
}

/// Pipeline state shared by the stages.
pub struct Pipeline {
    cfg: Config,
    out: PathBuf,
    progress: bool,
    ablations: bool,
    quick: bool,
    device: Device,
    train: Dataset,
    test: Dataset,
    normalize: Normalize,
    /// The whole test split as NHWC f32 (normalized), and labels.
    test_nhwc: ArrayD<f32>,
    test_labels: Vec<i64>,
}

impl Pipeline {
    /// Loads the data.
    pub fn new(cfg: Config, root: &Path, out: &Path, args: &Args) -> Result<Self> {
        let dir = {
            let d = PathBuf::from(&cfg.data.dir);
            if d.is_absolute() { d } else { root.join(d) }
        };
        let tt = Dataset::load_mnist_dir(&dir)
            .with_context(|| format!("cannot load the dataset in {}", dir.display()))?;
        let limit = |ds: Dataset, n: Option<usize>| match n {
            Some(n) if n < ds.len() => ds.take(n),
            _ => ds,
        };
        let train = limit(tt.train, cfg.data.train_limit);
        let test = limit(tt.test, cfg.data.test_limit);
        ensure!(
            !train.is_empty() && !test.is_empty(),
            "empty train or test split in {}",
            dir.display()
        );
        let normalize = Normalize::mnist();
        let (test_nhwc, test_labels) = to_nhwc(&test, &normalize, 0, test.len())?;
        tracing::info!(train = train.len(), test = test.len(), dir = %dir.display(), "data loaded");
        Ok(Self {
            cfg,
            out: out.to_path_buf(),
            progress: !args.no_progress,
            ablations: args.ablations,
            quick: args.quick,
            device: Device::cuda_if_available(),
            train,
            test,
            normalize,
            test_nhwc,
            test_labels,
        })
    }

    fn spec(
        &self,
        act: Activation,
        quant: QuantConfig,
        fold: BnFoldMode,
        stats_grad: bool,
    ) -> ModelSpec {
        let m = &self.cfg.model;
        let arch = match m.arch.as_str() {
            "lenet" => Architecture::LeNet,
            "mobilenet_v2" => Architecture::MobileNetV2 {
                width: m.width,
                expansion: 6,
            },
            "resnet8" => Architecture::ResNet { depth: 8 },
            "resnet20" => Architecture::ResNet { depth: 20 },
            _ => Architecture::MobileNetV1 {
                width: m.width,
                blocks: m.blocks,
            },
        };
        let [c, h, w] = self.train.image_shape();
        ModelSpec {
            arch,
            input: [c, h, w],
            num_classes: 10,
            activation: act,
            quant,
            bn_fold: fold,
            bn_stats_grad: stats_grad,
        }
    }

    fn activation(&self) -> Activation {
        if self.cfg.model.activation == "relu" {
            Activation::Relu
        } else {
            Activation::Relu6
        }
    }

    fn quant(&self, weight_bits: u32, act_bits: u32, per_channel: bool) -> QuantConfig {
        let mut q = QuantConfig {
            weight_bits,
            act_bits,
            weight_granularity: if per_channel {
                WeightGranularity::PerChannel
            } else {
                WeightGranularity::PerTensor
            },
            ..QuantConfig::default()
        };
        q.act_observer = ActObserverConfig::Ema {
            decay: self.cfg.qat.ema_decay as f32,
        };
        q
    }

    fn train_config(&self, epochs: usize, lr: f64, schedule: ScheduleConfig) -> TrainConfig {
        let f = &self.cfg.float;
        let steps = (self.train.len().div_ceil(self.cfg.data.batch_size) * epochs).max(1) as u64;
        TrainConfig {
            epochs,
            batch_size: self.cfg.data.batch_size,
            seed: self.cfg.seed,
            normalize: self.normalize.clone(),
            augment: Augment {
                pad: self.cfg.data.augment_pad,
                flip: false,
            },
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Sgd {
                    momentum: f.momentum,
                    nesterov: true,
                },
                lr: LrConfig {
                    base: lr,
                    schedule: LrSchedule::Cosine {
                        total: steps,
                        min_lr: 0.0,
                    },
                    warmup: 0,
                },
                weight_decay: f.weight_decay,
            },
            schedule,
            progress: self.progress,
            ..TrainConfig::default()
        }
    }

    fn fit(&self, net: &mut Net, cfg: &TrainConfig, label: &str) -> Result<History> {
        eprintln!(
            "[pipeline] {label}: {} epochs on {} images",
            cfg.epochs,
            self.train.len()
        );
        let mut on_event = |e: &Event| {
            if let Event::Epoch(s) = e {
                eprintln!(
                    "[pipeline] {label} epoch {}: loss {:.4}, test {} ({:.0} img/s, phase {})",
                    s.epoch + 1,
                    s.train_loss,
                    pct(s.test_acc),
                    s.images_per_sec,
                    s.phase
                );
            }
        };
        trainer::train(net, &self.train, &self.test, cfg, &mut on_event)
            .with_context(|| format!("{label} training failed"))
    }

    /// Float training of a fresh model.
    fn train_float(&self, act: Activation, epochs: usize) -> Result<(Net, History, f64)> {
        trainer::seed_everything(self.cfg.seed);
        let spec = self.spec(act, self.quant(8, 8, true), BnFoldMode::Whitepaper, false);
        let mut net = models::build(&spec, self.device).context("cannot build the model")?;
        let schedule = ScheduleConfig {
            float_steps: u64::MAX,
            calibration_batches: 0,
            qat: None,
        };
        let cfg = self.train_config(epochs, self.cfg.float.lr, schedule);
        let history = self.fit(&mut net, &cfg, "float")?;
        let (_, acc) = trainer::evaluate(&mut net, &self.test, &cfg, None)?;
        Ok((net, history, acc))
    }

    /// NHWC calibration batches from the training split.
    fn calibration_batches(&self) -> Result<Vec<ArrayD<f32>>> {
        let bs = self.cfg.data.batch_size;
        (0..self.cfg.data.calibration_batches)
            .map(|i| i * bs)
            .take_while(|&s| s < self.train.len())
            .map(|s| {
                to_nhwc(
                    &self.train,
                    &self.normalize,
                    s,
                    (s + bs).min(self.train.len()),
                )
                .map(|(x, _)| x)
            })
            .collect()
    }

    /// Post-training quantization of a float model, evaluated in the integer runtime.
    fn ptq(
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

    /// QAT fine-tuning from `float_net`'s weights, export, and evaluation of both.
    fn qat(&self, float_net: &Net, run: QatRun) -> Result<QatOutcome> {
        let QatRun {
            act,
            w_bits,
            a_bits,
            per_channel,
            fold,
            stats_grad,
            epochs,
            lr,
            compare_nodes,
        } = run;
        let q = &self.cfg.qat;
        let spec = self.spec(
            act,
            self.quant(w_bits, a_bits, per_channel),
            fold,
            stats_grad,
        );
        trainer::seed_everything(self.cfg.seed);
        let mut net = models::build(&spec, self.device).context("cannot build the QAT model")?;
        copy_weights(float_net, &net)?;
        let steps_per_epoch = self.train.len().div_ceil(self.cfg.data.batch_size).max(1) as u64;
        let total = steps_per_epoch * epochs as u64;
        // Delays are clamped into the run so that observers are frozen before it ends (export needs it).
        let freeze_obs = (q.freeze_observers_steps as u64).min(total.saturating_sub(1));
        let freeze_bn = (q.freeze_bn_steps as u64).min(freeze_obs);
        let delay = (q.quant_delay_steps as u64).min(freeze_bn);
        let schedule = ScheduleConfig {
            float_steps: 0,
            calibration_batches: self.cfg.data.calibration_batches as u64,
            qat: Some(QatDelays {
                quant_delay: delay,
                freeze_bn_delay: freeze_bn,
                freeze_observers_delay: freeze_obs,
            }),
        };
        let cfg = self.train_config(epochs, lr, schedule);
        let label = format!("QAT W{w_bits}A{a_bits}");
        let history = self.fit(&mut net, &cfg, &label)?;
        let (_, fake_quant_acc) = trainer::evaluate(&mut net, &self.test, &cfg, None)?;

        // The trainer grants export only with observers frozen and every range calibrated.
        let graph = trainer::export_graph(&net, &cfg, &history)
            .with_context(|| format!("{label}: not exportable"))?;
        let plan = QuantPlan::new(&graph, &convert::export_options())
            .with_context(|| format!("{label}: export refused"))?;
        let model = plan
            .to_int8_model()
            .with_context(|| format!("{label}: not emittable as .qat8"))?;
        let (int8_acc, int8_pred) = self.eval_int8(&model)?;
        let fq_pred = self.predict_fake_quant(&mut net)?;
        let agreement = agreement(&fq_pred, &int8_pred);
        // Node by node on the first 256 test images: the trained (libtorch) model vs the export's
        // simulation, which the int8 runtime matches layer by layer (the fidelity report).
        let torch_vs_sim = if compare_nodes {
            let probe = nchw_tensor(&self.test_nhwc, 0, self.test_labels.len().min(256))?;
            fidelity::compare_with_simulation(&mut net, &plan, &probe)
                .with_context(|| format!("{label}: libtorch vs simulation comparison failed"))?
        } else {
            Vec::new()
        };
        eprintln!(
            "[pipeline] {label}: fake quant {}, int8 {}, agreement {}",
            pct(fake_quant_acc),
            pct(int8_acc),
            pct(agreement)
        );
        Ok(QatOutcome {
            fake_quant_acc,
            int8_acc,
            agreement,
            fq_pred,
            torch_vs_sim,
            model,
            plan,
            history,
        })
    }

    /// The exported plan emitted once per requantization rounding mode: the integer model's test
    /// accuracy and its argmax agreement with the fake-quant model (the mode the pipeline exports with
    /// is not re-run).
    fn rounding_rows(
        &self,
        out: &QatOutcome,
        w_bits: u32,
        a_bits: u32,
    ) -> Result<Vec<RoundingRow>> {
        let mut rows = Vec::new();
        for r in Rounding::ALL {
            let (int8_acc, agree) = if r == out.model.rounding {
                (out.int8_acc, out.agreement)
            } else {
                // Re-planned for the rounding's target: its clamps follow that runtime too.
                let opts = ExportOptions {
                    target: r.into(),
                    ..out.plan.options
                };
                let model = QuantPlan::new(&out.plan.graph, &opts)
                    .and_then(|p| p.to_int8_model())
                    .with_context(|| format!("export for target {}", opts.target))?;
                let (acc, pred) = self.eval_int8(&model)?;
                (acc, agreement(&out.fq_pred, &pred))
            };
            rows.push(RoundingRow {
                weight_bits: w_bits,
                act_bits: a_bits,
                rounding: r.name().to_string(),
                exported: r == out.model.rounding,
                int8_acc,
                agreement: agree,
            });
        }
        Ok(rows)
    }

    /// Test accuracy and predictions of an integer model in the runtime.
    fn eval_int8(&self, model: &Int8Model) -> Result<(f64, Vec<i64>)> {
        let mut exec = Executor::new(model).context("cannot plan the integer model")?;
        let mut preds = Vec::with_capacity(self.test_labels.len());
        let bs = 256;
        let n = self.test_labels.len();
        for s in (0..n).step_by(bs) {
            let e = (s + bs).min(n);
            let x = self.test_nhwc.slice_axis(Axis(0), (s..e).into());
            let out = exec.run(x.into_dyn()).context("integer inference failed")?;
            let logits = out
                .first()
                .ok_or_else(|| anyhow!("integer model has no output"))?;
            let logits = logits
                .view()
                .into_shape_with_order((e - s, logits.len() / (e - s).max(1)))?;
            preds.extend(logits.outer_iter().map(|r| argmax(r.iter().copied())));
        }
        let correct = preds
            .iter()
            .zip(&self.test_labels)
            .filter(|(p, y)| p == y)
            .count();
        Ok((correct as f64 / n.max(1) as f64, preds))
    }

    /// Predictions of the fake-quant (or float) model in libtorch.
    fn predict_fake_quant(&self, net: &mut Net) -> Result<Vec<i64>> {
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

    /// Median latency per image at batch 1: the int8 runtime and the f32 libtorch model.
    fn latency(
        &self,
        model: &Int8Model,
        float_net: &mut Net,
        int8_acc: f64,
        float_acc: f64,
    ) -> Result<Vec<Latency>> {
        let images = self.cfg.latency.images.min(self.test_labels.len()).max(1);
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = vec![1];
        if all > 1 {
            threads.push(all);
        }
        let mut out = Vec::new();
        for &t in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            let mut exec = Executor::new(model)?;
            let us = pool.install(|| -> Result<f64> {
                let mut times = Vec::with_capacity(images);
                for i in 0..images + 5 {
                    let x = self
                        .test_nhwc
                        .slice_axis(Axis(0), (i % images..i % images + 1).into());
                    let t0 = Instant::now();
                    exec.run(x.into_dyn())?;
                    if i >= 5 {
                        times.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                }
                Ok(median(&mut times))
            })?;
            out.push(Latency {
                path: format!("int8 ({})", exec.kernel_path()),
                threads: t,
                batch: 1,
                us_per_image: us,
                accuracy: int8_acc,
            });
        }
        let before = tch::get_num_threads();
        for &t in &threads {
            tch::set_num_threads(t as i32);
            let mut times = Vec::with_capacity(images);
            for i in 0..images + 5 {
                let x = nchw_tensor(&self.test_nhwc, i % images, i % images + 1)?;
                let t0 = Instant::now();
                let _ = trainer::predict(float_net, &x)?;
                if i >= 5 {
                    times.push(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
            out.push(Latency {
                path: "f32 (libtorch)".into(),
                threads: t,
                batch: 1,
                us_per_image: median(&mut times),
                accuracy: float_acc,
            });
        }
        tch::set_num_threads(before);
        Ok(out)
    }

    /// Runs every stage and writes the report.
    pub fn run(self, started: Instant) -> Result<Report> {
        let cfg = self.cfg.clone();
        let act = self.activation();
        let fold = if cfg.qat.bn_correction {
            BnFoldMode::Whitepaper
        } else {
            BnFoldMode::PyTorch
        };

        eprintln!(
            "[pipeline] device {:?} (CUDA available: {})",
            self.device,
            tch::Cuda::is_available()
        );
        // 1. Float.
        let (mut float_net, float_hist, float_acc) = self.train_float(act, cfg.float.epochs)?;
        eprintln!("[pipeline] float: {}", pct(float_acc));
        let float_path = self.out.join("float.safetensors");
        float_net
            .var_store()
            .save(&float_path)
            .context("cannot save the float model")?;

        // 2. PTQ at 8 bits, per tensor and per channel.
        let ptq_tensor = self.ptq(&float_net, cfg.qat.weight_bits, cfg.qat.act_bits, false)?;
        let ptq_channel = self.ptq(&float_net, cfg.qat.weight_bits, cfg.qat.act_bits, true)?;
        eprintln!(
            "[pipeline] PTQ per tensor {}, per channel {}",
            pct(ptq_tensor),
            pct(ptq_channel)
        );

        // 3. QAT at 8 bits → export → integer runtime.
        let main = self.qat(
            &float_net,
            QatRun {
                act,
                w_bits: cfg.qat.weight_bits,
                a_bits: cfg.qat.act_bits,
                per_channel: cfg.qat.per_channel,
                fold,
                stats_grad: cfg.qat.bn_stats_grad,
                epochs: cfg.qat.epochs,
                lr: cfg.qat.lr,
                compare_nodes: true,
            },
        )?;
        let qat8_path = self.out.join("model_w8a8.qat8");
        main.model
            .save(&qat8_path)
            .context("cannot save the integer model")?;

        // 4. Low bit width: PTQ and QAT.
        let lb = &cfg.low_bit;
        let ptq_low = self.ptq(&float_net, lb.weight_bits, lb.act_bits, true)?;
        let low = self.qat(
            &float_net,
            QatRun {
                act,
                w_bits: lb.weight_bits,
                a_bits: lb.act_bits,
                per_channel: true,
                fold,
                stats_grad: cfg.qat.bn_stats_grad,
                epochs: lb.epochs,
                lr: lb.lr,
                compare_nodes: true,
            },
        )?;
        low.model.save(
            self.out
                .join(format!("model_w{}a{}.qat8", lb.weight_bits, lb.act_bits)),
        )?;

        // 5. Fidelity of the 8-bit export: int8 runtime vs the fake-quant simulation, layer by layer.
        let fid_batch = self
            .test_nhwc
            .slice_axis(Axis(0), (0..self.test_labels.len().min(256)).into())
            .to_owned();
        let fidelity = qat_export::fidelity_report(&main.plan, [fid_batch.view().into_dyn()])
            .context("fidelity report failed")?;
        let fidelity_low = qat_export::fidelity_report(&low.plan, [fid_batch.view().into_dyn()])
            .context("low-bit fidelity report failed")?;
        let fidelity_table = format!(
            "{}\n\n{}\n\n### The trained model vs the export's simulation (libtorch fake quant, eval mode; 256 test images, output codes)\n\n{}\n{}",
            fidelity.to_markdown(),
            fidelity_low.to_markdown(),
            fidelity::to_markdown(
                &format!("W{}A{}", cfg.qat.weight_bits, cfg.qat.act_bits),
                &main.torch_vs_sim
            ),
            fidelity::to_markdown(
                &format!("W{}A{}", lb.weight_bits, lb.act_bits),
                &low.torch_vs_sim
            ),
        );

        // The same exports with the other requantization rounding (TFLite's reference double rounding).
        let mut rounding = self.rounding_rows(&main, cfg.qat.weight_bits, cfg.qat.act_bits)?;
        rounding.extend(self.rounding_rows(&low, lb.weight_bits, lb.act_bits)?);

        // 6. Latency and size.
        let latency = self.latency(&main.model, &mut float_net, main.int8_acc, float_acc)?;
        let float_bytes = float_net.num_parameters() * 4;
        let int8_bytes = std::fs::metadata(&qat8_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);

        // 7. Bit sweep points and ablations.
        let mut bit_sweep = vec![
            BitPoint {
                weight_bits: cfg.qat.weight_bits,
                act_bits: cfg.qat.act_bits,
                ptq: ptq_channel,
                qat: main.fake_quant_acc,
                qat_int8: Some(main.int8_acc),
            },
            BitPoint {
                weight_bits: lb.weight_bits,
                act_bits: lb.act_bits,
                ptq: ptq_low,
                qat: low.fake_quant_acc,
                qat_int8: Some(low.int8_acc),
            },
        ];
        let mut ablations = Vec::new();
        if self.ablations {
            self.run_ablations(
                &float_net,
                act,
                fold,
                float_acc,
                &mut bit_sweep,
                &mut ablations,
            )?;
        }

        let mut results = vec![
            row("float", "float", None, None, "libtorch f32", float_acc),
            row(
                "ptq_per_tensor",
                "PTQ per tensor",
                Some(cfg.qat.weight_bits),
                Some(cfg.qat.act_bits),
                "qat-int8-runtime",
                ptq_tensor,
            ),
            row(
                "ptq_per_channel",
                "PTQ per channel",
                Some(cfg.qat.weight_bits),
                Some(cfg.qat.act_bits),
                "qat-int8-runtime",
                ptq_channel,
            ),
            row(
                "qat_fake_quant",
                "QAT (simulated)",
                Some(cfg.qat.weight_bits),
                Some(cfg.qat.act_bits),
                "libtorch fake quant",
                main.fake_quant_acc,
            ),
            row(
                "qat_int8",
                "QAT → integer-only",
                Some(cfg.qat.weight_bits),
                Some(cfg.qat.act_bits),
                "qat-int8-runtime",
                main.int8_acc,
            ),
        ];
        let (w, a) = (Some(lb.weight_bits), Some(lb.act_bits));
        results.push(row(
            "low_bit_ptq",
            "PTQ per channel",
            w,
            a,
            "qat-int8-runtime",
            ptq_low,
        ));
        results.push(row(
            "low_bit_qat_fake_quant",
            "QAT (simulated)",
            w,
            a,
            "libtorch fake quant",
            low.fake_quant_acc,
        ));
        results.push(row(
            "low_bit_qat_int8",
            "QAT → integer-only",
            w,
            a,
            "qat-int8-runtime",
            low.int8_acc,
        ));

        let duration_s = started.elapsed().as_secs_f64();
        let lat = |path: &str, t: usize| {
            latency
                .iter()
                .find(|l| l.path.starts_with(path) && l.threads == t)
                .map(|l| l.us_per_image)
        };
        let mut targets = vec![
            target(
                "QAT int8 ≥ float − 0.3 points",
                format!("≥ {}", pct(float_acc - 0.003)),
                pct(main.int8_acc),
                main.int8_acc >= float_acc - 0.003,
            ),
            target(
                "QAT int8 ≥ PyTorch ao.quantization QAT int8",
                format!("≥ {}", pct(PYTORCH_QAT_INT8)),
                pct(main.int8_acc),
                main.int8_acc >= PYTORCH_QAT_INT8,
            ),
            target(
                &format!("W{}A{} QAT", lb.weight_bits, lb.act_bits),
                format!("≥ {}", pct(TARGET_LOW_BIT_QAT)),
                pct(low.fake_quant_acc),
                low.fake_quant_acc >= TARGET_LOW_BIT_QAT,
            ),
            target(
                "int8 vs fake-quant argmax agreement",
                format!("≥ {}", pct(TARGET_AGREEMENT)),
                pct(main.agreement),
                main.agreement >= TARGET_AGREEMENT,
            ),
            target(
                &format!(
                    "W{}A{} int8 vs fake-quant argmax agreement",
                    lb.weight_bits, lb.act_bits
                ),
                format!("≥ {}", pct(TARGET_AGREEMENT)),
                pct(low.agreement),
                low.agreement >= TARGET_AGREEMENT,
            ),
        ];
        for t in [
            1usize,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ] {
            if let (Some(i8), Some(f)) = (lat("int8", t), lat("f32", t)) {
                targets.push(target(
                    &format!("int8 latency ≤ 1/3 of f32, batch 1, {t} thread(s)"),
                    "≤ 0.333×".into(),
                    format!("{:.3}× ({i8:.0} µs vs {f:.0} µs)", i8 / f),
                    i8 <= f / 3.0,
                ));
            }
        }
        targets.push(target(
            "run time",
            "< 15 min".into(),
            format!("{:.1} min", duration_s / 60.0),
            duration_s < 900.0,
        ));

        let curves = curves(&float_hist, &main.history, cfg.float.epochs);
        let report = Report {
            run_id: self
                .out
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            quick: self.quick,
            duration_s,
            machine: machine(),
            config: toml::to_string(&cfg).unwrap_or_default(),
            results,
            agreement: serde_json::json!({
                "int8_vs_fake_quant": main.agreement,
                "low_bit_int8_vs_fake_quant": low.agreement,
                "test_images": self.test_labels.len(),
                "rounding": main.model.rounding.name(),
            }),
            rounding,
            size: serde_json::json!({
                "float32_parameters_bytes": float_bytes,
                "qat8_file_bytes": int8_bytes,
                "ratio": if int8_bytes > 0 { float_bytes as f64 / int8_bytes as f64 } else { 0.0 },
            }),
            latency,
            fidelity: serde_json::to_value(&fidelity)?,
            fidelity_low_bit: serde_json::to_value(&fidelity_low)?,
            torch_vs_simulation: serde_json::json!({
                "main": &main.torch_vs_sim,
                "low_bit": &low.torch_vs_sim,
            }),
            bit_sweep,
            ablations,
            targets,
            curves,
        };
        report.write(&self.out, &fidelity_table)?;
        // Plots need a system font (fontconfig); a machine without one still gets the whole report.
        if let Err(e) = plots::write_all(&self.out, &report) {
            let msg = format!("{e:#}");
            tracing::warn!(error = %msg, "plots not written");
            eprintln!(
                "[pipeline] warning: plots not written ({msg}); report.json and report.md are complete. \
                 Install a font (e.g. Debian `fonts-dejavu-core`) for the PNG/SVG plots."
            );
            let md = self.out.join("report.md");
            let mut text = std::fs::read_to_string(&md).context("cannot reread report.md")?;
            text.push_str(&format!(
                "\n> The plots above could not be drawn on this machine: {msg}.\n"
            ));
            std::fs::write(&md, text).context("cannot write report.md")?;
        }
        Ok(report)
    }

    fn run_ablations(
        &self,
        float_net: &Net,
        act: Activation,
        fold: BnFoldMode,
        float_acc: f64,
        sweep: &mut Vec<BitPoint>,
        rows: &mut Vec<AblationRow>,
    ) -> Result<()> {
        let ab = &self.cfg.ablations;
        let q = &self.cfg.qat;
        // Weight bits × activation bits (paper tables 4.7/4.8).
        for &w in &ab.bits {
            for &a in &ab.bits {
                if sweep.iter().any(|p| p.weight_bits == w && p.act_bits == a) {
                    continue;
                }
                let ptq = self.ptq(float_net, w, a, true)?;
                let o = self.qat(
                    float_net,
                    QatRun {
                        act,
                        w_bits: w,
                        a_bits: a,
                        per_channel: true,
                        fold,
                        stats_grad: q.bn_stats_grad,
                        epochs: ab.qat_epochs,
                        lr: q.lr,
                        compare_nodes: false,
                    },
                )?;
                sweep.push(BitPoint {
                    weight_bits: w,
                    act_bits: a,
                    ptq,
                    qat: o.fake_quant_acc,
                    qat_int8: Some(o.int8_acc),
                });
            }
        }
        // BN-fold correction on/off, and the whitepaper fold's batch statistics as constants of the
        // backward pass (TF) or differentiated through.
        for (variant, f, stats_grad) in [
            (
                "whitepaper σ_B/σ correction, statistics constant in backward (TF)",
                BnFoldMode::Whitepaper,
                false,
            ),
            (
                "whitepaper σ_B/σ correction, gradient through statistics",
                BnFoldMode::Whitepaper,
                true,
            ),
            ("PyTorch conv_fused", BnFoldMode::PyTorch, false),
        ] {
            let o = self.qat(
                float_net,
                QatRun {
                    act,
                    w_bits: q.weight_bits,
                    a_bits: q.act_bits,
                    per_channel: q.per_channel,
                    fold: f,
                    stats_grad,
                    epochs: ab.qat_epochs,
                    lr: q.lr,
                    compare_nodes: false,
                },
            )?;
            rows.push(AblationRow {
                study: "BN folding".into(),
                variant: variant.into(),
                float: Some(float_acc),
                ptq: None,
                qat: o.fake_quant_acc,
            });
        }
        // Per tensor vs per channel, at 8 and at the low bit width.
        for bits in [q.weight_bits, self.cfg.low_bit.weight_bits] {
            for per_channel in [false, true] {
                let ptq = self.ptq(float_net, bits, q.act_bits, per_channel)?;
                let o = self.qat(
                    float_net,
                    QatRun {
                        act,
                        w_bits: bits,
                        a_bits: q.act_bits,
                        per_channel,
                        fold,
                        stats_grad: q.bn_stats_grad,
                        epochs: ab.qat_epochs,
                        lr: q.lr,
                        compare_nodes: false,
                    },
                )?;
                let variant = format!(
                    "W{bits}A{} {}",
                    q.act_bits,
                    if per_channel {
                        "per channel"
                    } else {
                        "per tensor"
                    }
                );
                rows.push(AblationRow {
                    study: "weight granularity".into(),
                    variant,
                    float: Some(float_acc),
                    ptq: Some(ptq),
                    qat: o.fake_quant_acc,
                });
            }
        }
        // ReLU vs ReLU6: a separate float model per activation.
        for other in [Activation::Relu, Activation::Relu6] {
            let (net, _, facc) = if other == act {
                (None, None, float_acc)
            } else {
                let (n, h, a) = self.train_float(other, ab.float_epochs)?;
                (Some(n), Some(h), a)
            };
            let base = net.as_ref().unwrap_or(float_net);
            let ptq = self.ptq(base, q.weight_bits, q.act_bits, false)?;
            let o = self.qat(
                base,
                QatRun {
                    act: other,
                    w_bits: q.weight_bits,
                    a_bits: q.act_bits,
                    per_channel: q.per_channel,
                    fold,
                    stats_grad: q.bn_stats_grad,
                    epochs: ab.qat_epochs,
                    lr: q.lr,
                    compare_nodes: false,
                },
            )?;
            rows.push(AblationRow {
                study: "activation".into(),
                variant: format!("{other:?}"),
                float: Some(facc),
                ptq: Some(ptq),
                qat: o.fake_quant_acc,
            });
        }
        Ok(())
    }
}

/// Share of equal predictions.
fn agreement(a: &[i64], b: &[i64]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len().max(1) as f64
}

fn row(
    name: &str,
    label: &str,
    w: Option<u32>,
    a: Option<u32>,
    engine: &str,
    accuracy: f64,
) -> ResultRow {
    ResultRow {
        name: name.into(),
        label: label.into(),
        accuracy,
        weight_bits: w,
        act_bits: a,
        engine: engine.into(),
    }
}

fn target(what: &str, target: String, measured: String, met: bool) -> TargetCheck {
    TargetCheck {
        what: what.into(),
        target,
        measured,
        met,
    }
}

fn curves(float: &History, qat: &History, float_epochs: usize) -> Curves {
    let offset = float.steps.last().map_or(0, |s| s.step as usize + 1);
    Curves {
        float_loss: float
            .steps
            .iter()
            .map(|s| (s.step as usize, s.loss))
            .collect(),
        qat_loss: qat
            .steps
            .iter()
            .map(|s| (offset + s.step as usize, s.loss))
            .collect(),
        float_acc: float
            .epochs
            .iter()
            .map(|e| (e.epoch + 1, e.test_acc))
            .collect(),
        qat_acc: qat
            .epochs
            .iter()
            .map(|e| (float_epochs + e.epoch + 1, e.test_acc))
            .collect(),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {n} threads")
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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

/// Copies every variable of `src` into the same-named variable of `dst` (same architecture).
///
/// Quantizer state (names with a `_q.` segment: observer ranges) whose shape differs between the two
/// configurations — per-tensor vs per-channel weight observers — is left to `dst`'s own observers, which
/// recompute weight ranges every step and collect activation ranges during calibration.
fn copy_weights(src: &Net, dst: &Net) -> Result<()> {
    let src_vars = src.var_store().variables();
    let _g = tch::no_grad_guard();
    for (name, mut t) in dst.var_store().variables() {
        let s = src_vars
            .get(&name)
            .ok_or_else(|| anyhow!("variable {name} missing in the float model"))?;
        if s.size() != t.size() {
            ensure!(
                name.contains("_q."),
                "variable {name}: shape {:?} in the float model, {:?} here",
                s.size(),
                t.size()
            );
            continue;
        }
        t.f_copy_(s)
            .with_context(|| format!("cannot copy variable {name}"))?;
    }
    Ok(())
}

/// Images `[start, end)` of `ds`, normalized, as an NHWC f32 array, and their labels.
fn to_nhwc(
    ds: &Dataset,
    norm: &Normalize,
    start: usize,
    end: usize,
) -> Result<(ArrayD<f32>, Vec<i64>)> {
    let [c, h, w] = ds.image_shape();
    ensure!(
        norm.mean.len() == c && norm.std.len() == c,
        "normalization has {} means / {} stds for {c}-channel images",
        norm.mean.len(),
        norm.std.len()
    );
    let n = end.saturating_sub(start);
    let mut x = vec![0f32; n * h * w * c];
    let mut labels = Vec::with_capacity(n);
    for (k, i) in (start..end).enumerate() {
        let img = ds.image(i); // CHW
        for ch in 0..c {
            let (m, s) = (norm.mean[ch], norm.std[ch]);
            for p in 0..h * w {
                x[(k * h * w + p) * c + ch] = (img[ch * h * w + p] as f32 / 255.0 - m) / s;
            }
        }
        labels.push(i64::from(ds.labels[i]));
    }
    Ok((ArrayD::from_shape_vec(IxDyn(&[n, h, w, c]), x)?, labels))
}

/// Rows `[start, end)` of an NHWC array as an NCHW tch tensor.
fn nchw_tensor(nhwc: &ArrayD<f32>, start: usize, end: usize) -> Result<Tensor> {
    let s = nhwc.shape();
    ensure!(s.len() == 4, "expected NHWC images");
    let (h, w, c) = (s[1], s[2], s[3]);
    let part = nhwc.slice_axis(Axis(0), (start..end).into());
    let flat: Vec<f32> = part.iter().copied().collect();
    let t = Tensor::from_slice(&flat)
        .f_view([(end - start) as i64, h as i64, w as i64, c as i64])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?;
    Ok(t)
}
