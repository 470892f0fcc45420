//! Exported models in their official runtimes: `.tflite` in LiteRT (reference kernels, optimized
//! builtin kernels, the default XNNPACK delegate) and ONNX QDQ in onnxruntime, compared code by
//! code — every intermediate tensor a runtime exposes — with the qat runtime on the same input.
//!
//! Needs the peer runtimes: `QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python)`.
//! Without it every test here prints why it is skipped and passes.

mod common;

use std::path::PathBuf;

use common::{GenOptions, batch, random_cnn, rng};
use ndarray::ArrayD;
use qat_export::crosscheck::{CrosscheckResult, expected_codes, run_harness, write_case};
use qat_export::ir::{WeightQuant, WeightScheme};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_export::{ExportOptions, Format, PtqConfig, ptq};
use qat_int8_runtime::{Executor, Int8Model, Rounding};

/// The peers' Python and the harness script, or `None` (with the reason printed).
fn peers(test: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(python) = std::env::var_os("QAT_PEERS_PYTHON") else {
        eprintln!(
            "SKIPPED {test}: QAT_PEERS_PYTHON is not set (export QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python))"
        );
        return None;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../xtask/py/crosscheck.py");
    Some((PathBuf::from(python), script))
}

/// A random CNN quantized to `bits` (weights per channel, activations), rounding `rounding`,
/// and a test batch whose inputs lie exactly on the input grid (every runtime quantizes them to
/// the same codes: no ties).
fn random_model(
    seed: u64,
    bits: u32,
    rounding: Rounding,
    opts: &GenOptions,
) -> (Int8Model, ArrayD<f32>) {
    let g = random_cnn(seed, opts);
    let shape = g.validate().expect("valid")[0].clone();
    let r = &mut rng(seed ^ 0xc0de);
    let cal = [batch(r, 8, &shape), batch(r, 8, &shape)];
    let cfg = PtqConfig {
        weight_quant: Some(WeightQuant {
            scheme: WeightScheme::SymmetricPerChannel,
            bits,
        }),
        activation_bits: Some(bits),
        export: ExportOptions {
            rounding,
            ..ExportOptions::default()
        },
        ..PtqConfig::default()
    };
    let model = ptq(&g, cal.iter().map(|b| b.view()), &cfg)
        .expect("ptq")
        .to_int8_model();
    let q = model.tensors[model
        .ops
        .iter()
        .find_map(|op| match op {
            qat_int8_runtime::Op::Quantize { output, .. } => Some(*output),
            _ => None,
        })
        .expect("quantized input")]
    .quant
    .expect("params");
    let x = batch(r, 16, &shape).mapv(|v| q.dequantize(q.quantize(v)));
    (model, x)
}

fn crosscheck(
    model: &Int8Model,
    x: &ArrayD<f32>,
    format: Format,
    python: &PathBuf,
    script: &PathBuf,
) -> CrosscheckResult {
    let values = Executor::new(model)
        .expect("executor")
        .run_all(x.view())
        .expect("run");
    let (deploy, debug) = match format {
        Format::Tflite => (
            to_tflite(model, &TfliteOptions::default()).expect("tflite"),
            to_tflite(
                model,
                &TfliteOptions {
                    expose_all_tensors: true,
                    ..TfliteOptions::default()
                },
            )
            .expect("tflite debug"),
        ),
        Format::Onnx => unreachable!("not yet"),
    };
    let expected = expected_codes(model, &deploy, &values).expect("expected");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = match std::env::var_os("QAT_CROSSCHECK_KEEP") {
        // Keep the case files for inspection: QAT_CROSSCHECK_KEEP=/some/dir.
        Some(keep) => {
            let d = PathBuf::from(keep).join(format!("{}-{}", model.name, format.extension()));
            std::fs::create_dir_all(&d).expect("keep dir");
            Kept::Dir(d)
        }
        None => Kept::Temp(dir),
    };
    let input_name = &deploy.mapping(model.input).expect("input").name;
    write_case(
        &dir.path(),
        format,
        &deploy.bytes,
        Some(&debug.bytes),
        input_name,
        x.view(),
        &expected,
    )
    .expect("case");
    let res = run_harness(python, script, &dir.path(), 1).expect("harness");
    eprintln!("{} {}:\n{}", model.name, format, res.to_table());
    res
}

/// The case directory: temporary, or kept for inspection.
enum Kept {
    Temp(tempfile::TempDir),
    Dir(PathBuf),
}

impl Kept {
    fn path(&self) -> PathBuf {
        match self {
            Kept::Temp(t) => t.path().to_path_buf(),
            Kept::Dir(d) => d.clone(),
        }
    }
}

#[test]
fn tflite_random_cnns() {
    let Some((python, script)) = peers("tflite_random_cnns") else {
        return;
    };
    for seed in 0..4 {
        let (model, x) = random_model(seed, 8, Rounding::Gemmlowp, &GenOptions::default());
        let res = crosscheck(&model, &x, Format::Tflite, &python, &script);
        for (rt, r) in &res.runtimes {
            assert!(r.error.is_none(), "{rt}: {:?}", r.error);
        }
    }
}
