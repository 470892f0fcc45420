//! Training: float pretraining and QAT fine-tuning of one [`Run`], export of the trained model, and
//! its accuracy in libtorch (fake quant) and in the integer runtime.

use anyhow::{Context, Result, anyhow, ensure};
use qat_export::QuantPlan;
use qat_int8_runtime::Int8Model;
use qat_train::{
    convert,
    data::Augment,
    fidelity,
    layers::{Activation, BnFoldMode, QuantConfig},
    models::{self, Architecture, LayerBitsOverride, ModelSpec, Net},
    schedule::ScheduleConfig,
    trainer::{self, Event, History, TrainConfig},
};
use xtask::report::pct;

use super::{Pipeline, data::nchw_tensor, eval::agreement, study::Run};

/// A trained QAT model and what was measured on it.
pub(super) struct QatOutcome {
    pub fake_quant_acc: f64,
    pub int8_acc: f64,
    pub agreement: f64,
    /// Test-set predictions of the fake-quant (libtorch) model.
    pub fq_pred: Vec<i64>,
    /// libtorch fake quant vs the export's simulation, per node (256 test images).
    pub torch_vs_sim: Vec<fidelity::NodeMatch>,
    pub model: Int8Model,
    pub plan: QuantPlan,
    pub history: History,
}

impl Pipeline {
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
            layer_bits: Vec::new(),
        }
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
            optimizer: f.optimizer(lr, steps),
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
    pub(super) fn train_float(
        &self,
        act: Activation,
        epochs: usize,
    ) -> Result<(Net, History, f64)> {
        trainer::seed_everything(self.cfg.seed);
        let spec = self.spec(
            act,
            self.cfg.qat.quant(8, 8, true),
            BnFoldMode::Whitepaper,
            false,
        );
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

    /// QAT fine-tuning from `float_net`'s weights, export, and evaluation of both.
    pub(super) fn qat(&self, float_net: &Net, run: Run) -> Result<QatOutcome> {
        self.qat_with_layer_bits(float_net, run, Vec::new())
    }

    /// [`Pipeline::qat`] with per-layer bit widths (mixed precision) replacing `run`'s for the
    /// layers named in `layer_bits`.
    pub(super) fn qat_with_layer_bits(
        &self,
        float_net: &Net,
        run: Run,
        layer_bits: Vec<LayerBitsOverride>,
    ) -> Result<QatOutcome> {
        let mixed = !layer_bits.is_empty();
        let Run {
            act,
            weight_bits: w_bits,
            act_bits: a_bits,
            per_channel,
            fold,
            stats_grad,
            epochs,
            lr,
            compare_nodes,
        } = run;
        let q = &self.cfg.qat;
        let spec = ModelSpec {
            layer_bits,
            ..self.spec(
                act,
                self.cfg.qat.quant(w_bits, a_bits, per_channel),
                fold,
                stats_grad,
            )
        };
        trainer::seed_everything(self.cfg.seed);
        let mut net = models::build(&spec, self.device).context("cannot build the QAT model")?;
        copy_weights(float_net, &net)?;
        let steps_per_epoch = self.train.len().div_ceil(self.cfg.data.batch_size).max(1) as u64;
        let total = steps_per_epoch * epochs as u64;
        // Delays are clamped into the run so that observers are frozen before it ends (export needs it).
        let schedule = q.phases(self.cfg.data.calibration_batches).schedule(total);
        let cfg = self.train_config(epochs, lr, schedule);
        let label = if mixed {
            "QAT mixed precision".to_string()
        } else {
            format!("QAT W{w_bits}A{a_bits}")
        };
        let history = self.fit(&mut net, &cfg, &label)?;
        let (_, fake_quant_acc) = trainer::evaluate(&mut net, &self.test, &cfg, None)?;

        // The trainer grants export only with observers frozen and every range calibrated.
        let graph = trainer::export_graph(&net, &cfg, &history)
            .with_context(|| format!("{label}: not exportable"))?;
        let plan = QuantPlan::new(&graph, &convert::export_options_for(self.cfg.qat.target))
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
