//! [`Pipeline::run`]: the default study's stages in order, the optional studies, and the typed report.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use ndarray::Axis;
use qat_export::FidelityReport;
use qat_train::{models::Net, trainer::History};
use xtask::report::{
    AgreementSummary, Curves, ModelSize, Report, ResultRow, TargetCheck, TorchVsSimulation, pct,
};

use super::{
    OptionalStudy, Pipeline, causes, plots,
    study::{self, Run, Study, VariantOutcome},
};

/// Reference figures (PyTorch ao.quantization on the same data, measured on this machine kind).
const PYTORCH_QAT_INT8: f64 = 0.9695;
const TARGET_LOW_BIT_QAT: f64 = 0.93;
const TARGET_AGREEMENT: f64 = 0.995;

/// The float model and the default study's two variants.
struct Trained {
    float_net: Net,
    float_hist: History,
    float_acc: f64,
    study: Study,
    main: VariantOutcome,
    low: VariantOutcome,
}

impl Pipeline {
    /// Runs every stage and writes the report.
    pub fn run(self, started: Instant) -> Result<Report> {
        eprintln!(
            "[pipeline] device {:?} (CUDA available: {})",
            self.device,
            tch::Cuda::is_available()
        );
        let mut t = self.default_study()?;
        let (fidelity, fidelity_low_bit) = self.fidelity_stage(&t)?;
        let mut rounding = Vec::new();
        for (v, o) in t.study.variants.iter().zip([&t.main, &t.low]) {
            rounding.extend(self.rounding_rows(&o.qat, v.run.weight_bits, v.run.act_bits)?);
        }
        let deployed = self.deployed(&[
            (&t.study.variants[0].run, &t.main.qat),
            (&t.study.variants[1].run, &t.low.qat),
        ])?;
        let main_run = &t.study.variants[0].run;
        let ort_top1 = deployed
            .rows
            .iter()
            .find(|r| {
                r.runtime == "onnxruntime"
                    && (r.weight_bits, r.act_bits) == (main_run.weight_bits, main_run.act_bits)
            })
            .and_then(|r| r.top1);
        let latency = self.latency(&t.main.qat, &mut t.float_net, t.float_acc, ort_top1)?;
        let size = self.size(&t.float_net)?;
        let causes = self.causes(&t.float_net)?;
        let fixes = causes::fixes(&t.study, [&t.main, &t.low]);
        let (mut bit_sweep, mut ablations) = (Vec::new(), Vec::new());
        let default_results: Vec<_> = (t.study.variants.iter())
            .zip([&t.main, &t.low])
            .map(|(v, o)| o.summary(v))
            .collect();
        study::report_rows(&t.study, &default_results, &mut bit_sweep, &mut ablations);
        if self.ablations {
            let done: Vec<_> = bit_sweep
                .iter()
                .map(|p| (p.weight_bits, p.act_bits))
                .collect();
            for s in study::ablation_studies(&self.cfg, &done) {
                let results = self.run_study(&t.float_net, t.float_acc, &s)?;
                study::report_rows(&s, &results, &mut bit_sweep, &mut ablations);
            }
        }
        let sensitivity = (!self.studies.is_empty())
            .then(|| self.sensitivity(&t.float_net))
            .transpose()?;
        let mixed_precision = match &sensitivity {
            Some(table) if self.studies.contains(&OptionalStudy::MixedPrecision) => {
                let trained: Vec<_> = (t.study.variants.iter())
                    .zip([&t.main, &t.low])
                    .map(|(v, o)| {
                        let q = xtask::report::QatPoint {
                            fake_quant: 100.0 * o.qat.fake_quant_acc,
                            int8: 100.0 * o.qat.int8_acc,
                            int8_us: None,
                        };
                        (v.run.weight_bits, v.run.act_bits, q, &o.qat.model)
                    })
                    .collect();
                let low_run = t.study.variants[1].run;
                Some(self.mixed_precision(&t.float_net, table, low_run, &trained)?)
            }
            _ => None,
        };
        let mut report = Report {
            run_id: self
                .out
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            quick: self.quick,
            duration_s: started.elapsed().as_secs_f64(),
            machine: machine(),
            config: toml::to_string(&self.cfg).context("cannot print the configuration")?,
            dataset: self.dataset.clone(),
            results: self.result_rows(&t),
            agreement: AgreementSummary {
                int8_vs_fake_quant: t.main.qat.agreement,
                low_bit_int8_vs_fake_quant: t.low.qat.agreement,
                test_images: self.test_labels.len(),
                rounding: t.main.qat.model.rounding.name().into(),
            },
            rounding,
            size,
            latency,
            fidelity,
            fidelity_low_bit,
            torch_vs_simulation: TorchVsSimulation {
                main: t.main.qat.torch_vs_sim.clone(),
                low_bit: t.low.qat.torch_vs_sim.clone(),
            },
            bit_sweep,
            ablations,
            causes: Some(causes),
            fixes,
            sensitivity,
            mixed_precision,
            deployed,
            targets: Vec::new(),
            curves: curves(&t.float_hist, &t.main.qat.history, self.cfg.float.epochs),
            plots: Default::default(),
        };
        report.targets = targets(&report, &t);
        report.plots = plots::write_all(&self.out, &report);
        if let Some(why) = &report.plots.skipped {
            tracing::warn!(error = %why, "plots not written");
            eprintln!(
                "[pipeline] warning: plots not written ({why}); report.json and report.md are complete. \
                 Install a font (e.g. Debian `fonts-dejavu-core`) for the PNG/SVG plots."
            );
        }
        report.write(&self.out)?;
        Ok(report)
    }

    /// Float training, then the default study (8-bit and low-bit PTQ and QAT); saves the float
    /// model and both integer models.
    fn default_study(&self) -> Result<Trained> {
        let base = Run::base(&self.cfg);
        let (float_net, float_hist, float_acc) =
            self.train_float(base.act, self.cfg.float.epochs)?;
        eprintln!("[pipeline] float: {}", pct(float_acc));
        float_net
            .var_store()
            .save(self.out.join("float.safetensors"))
            .context("cannot save the float model")?;
        let study = study::default_study(&self.cfg);
        let mut outcomes = Vec::with_capacity(2);
        for v in &study.variants {
            let o = self.run_variant(&float_net, float_acc, v)?;
            let r = &v.run;
            let file = format!("model_w{}a{}.qat8", r.weight_bits, r.act_bits);
            o.qat
                .model
                .save(self.out.join(&file))
                .with_context(|| format!("cannot save the integer model {file}"))?;
            outcomes.push(o);
        }
        let [main, low]: [VariantOutcome; 2] = outcomes
            .try_into()
            .map_err(|_| anyhow!("the default study must have two variants"))?;
        Ok(Trained {
            float_net,
            float_hist,
            float_acc,
            study,
            main,
            low,
        })
    }

    /// Fidelity of both exports: the int8 runtime vs the fake-quant simulation, layer by layer, on
    /// the first 256 test images.
    fn fidelity_stage(&self, t: &Trained) -> Result<(FidelityReport, FidelityReport)> {
        let batch = self
            .test_nhwc
            .slice_axis(Axis(0), (0..self.test_labels.len().min(256)).into())
            .to_owned();
        let main = qat_export::fidelity_report(&t.main.qat.plan, [batch.view().into_dyn()])
            .context("fidelity report failed")?;
        let low = qat_export::fidelity_report(&t.low.qat.plan, [batch.view().into_dyn()])
            .context("low-bit fidelity report failed")?;
        Ok((main, low))
    }

    /// Float parameter bytes and the saved 8-bit file's size.
    fn size(&self, float_net: &Net) -> Result<ModelSize> {
        let r = Run::base(&self.cfg);
        let file = self
            .out
            .join(format!("model_w{}a{}.qat8", r.weight_bits, r.act_bits));
        let float_bytes = float_net.num_parameters() * 4;
        let int8_bytes = std::fs::metadata(&file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len() as usize;
        Ok(ModelSize {
            float32_parameters_bytes: float_bytes,
            qat8_file_bytes: int8_bytes,
            ratio: if int8_bytes > 0 {
                float_bytes as f64 / int8_bytes as f64
            } else {
                0.0
            },
        })
    }

    /// The main table: float, the 8-bit variant's PTQ and QAT rows, the low-bit variant's.
    fn result_rows(&self, t: &Trained) -> Vec<ResultRow> {
        let mut rows = vec![row("float", "float", None, "libtorch f32", t.float_acc)];
        for (v, o, prefix) in [
            (&t.study.variants[0], &t.main, ""),
            (&t.study.variants[1], &t.low, "low_bit_"),
        ] {
            let bits = Some((v.run.weight_bits, v.run.act_bits));
            for (&per_channel, &acc) in v.ptq.iter().zip(&o.ptq) {
                let (name, label) = match (prefix, per_channel) {
                    ("", false) => ("ptq_per_tensor".to_string(), "PTQ per tensor"),
                    ("", true) => ("ptq_per_channel".to_string(), "PTQ per channel"),
                    (_, true) => (format!("{prefix}ptq"), "PTQ per channel"),
                    // The low-bit per-tensor PTQ is in the table of fixes.
                    (_, false) => continue,
                };
                rows.push(row(&name, label, bits, "qat-int8-runtime", acc));
            }
            rows.push(row(
                &format!("{prefix}qat_fake_quant"),
                "QAT (simulated)",
                bits,
                "libtorch fake quant",
                o.qat.fake_quant_acc,
            ));
            rows.push(row(
                &format!("{prefix}qat_int8"),
                "QAT → integer-only",
                bits,
                "qat-int8-runtime",
                o.qat.int8_acc,
            ));
        }
        rows
    }
}

fn row(
    name: &str,
    label: &str,
    bits: Option<(u32, u32)>,
    engine: &str,
    accuracy: f64,
) -> ResultRow {
    ResultRow {
        name: name.into(),
        label: label.into(),
        accuracy,
        weight_bits: bits.map(|b| b.0),
        act_bits: bits.map(|b| b.1),
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

/// The target "`what` ≥ `min`" (accuracies and agreements, shown as percentages), met by `got`.
fn at_least(what: &str, got: f64, min: f64) -> TargetCheck {
    target(what, format!("≥ {}", pct(min)), pct(got), got >= min)
}

/// The targets of the default run, checked on the assembled report.
fn targets(r: &Report, t: &Trained) -> Vec<TargetCheck> {
    let (main, low) = (&t.main.qat, &t.low.qat);
    let low_name = t.study.variants[1].run.bits_name();
    let float_acc = t.float_acc;
    let lat = |path: &str, n: usize| {
        r.latency
            .iter()
            .find(|l| l.path.starts_with(path) && l.threads == n)
            .map(|l| l.us_per_image)
    };
    let mut targets = vec![
        at_least(
            "QAT int8 ≥ float − 0.3 points",
            main.int8_acc,
            float_acc - 0.003,
        ),
        at_least(
            "QAT int8 ≥ PyTorch ao.quantization QAT int8",
            main.int8_acc,
            PYTORCH_QAT_INT8,
        ),
        at_least(
            &format!("{low_name} QAT"),
            low.fake_quant_acc,
            TARGET_LOW_BIT_QAT,
        ),
        at_least(
            "int8 vs fake-quant argmax agreement",
            main.agreement,
            TARGET_AGREEMENT,
        ),
        at_least(
            &format!("{low_name} int8 vs fake-quant argmax agreement"),
            low.agreement,
            TARGET_AGREEMENT,
        ),
    ];
    for n in [
        1usize,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ] {
        if let (Some(i8), Some(f)) = (lat("int8", n), lat("f32", n)) {
            targets.push(target(
                &format!("int8 latency ≤ 1/3 of f32, batch 1, {n} thread(s)"),
                "≤ 0.333×".into(),
                format!("{:.3}× ({i8:.0} µs vs {f:.0} µs)", i8 / f),
                i8 <= f / 3.0,
            ));
        }
    }
    targets.push(target(
        "run time",
        "< 15 min".into(),
        format!("{:.1} min", r.duration_s / 60.0),
        r.duration_s < 900.0,
    ));
    targets
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
