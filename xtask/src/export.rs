//! `cargo xtask export --format qat8|tflite|onnx --input M.qat8|RUN_DIR [--model NAME] --out F`:
//! write an integer model in an interchange format. `--input` is a `.qat8` file or a pipeline run
//! directory (`target/qat-report/<run-id>`), whose `model_<NAME>.qat8` is taken (`--model`, default
//! `w8a8`; `w4a4`, `mixed`, … as the run wrote them). The writers express the model exactly or refuse, naming the layer
//! and the reason (qat-export's `ExportFormatError`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use qat_export::onnx::{OnnxOptions, to_onnx_qdq};
use qat_export::tflite::{TfliteOptions, to_tflite};
use qat_int8_runtime::Int8Model;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The qat runtime's own `.qat8` (a validated copy).
    Qat8,
    /// TFLite flatbuffer, int8.
    Tflite,
    /// ONNX QDQ, uint8 activations, opset 13.
    Onnx,
}

/// Arguments of `cargo xtask export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The `.qat8` model to convert, or a pipeline run directory.
    #[arg(long)]
    pub input: PathBuf,
    /// With a run directory: which of its models (`model_<NAME>.qat8`).
    #[arg(long, default_value = "w8a8")]
    pub model: String,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// TFLite: refuse per-channel fully connected layers (for runtimes that read one scale).
    #[arg(long)]
    pub per_tensor_fully_connected: bool,
}

/// The `.qat8` file `input` names: itself, or in a run directory its `model_<name>.qat8`; a missing
/// model names the ones the directory has.
fn model_file(input: &Path, name: &str) -> Result<PathBuf> {
    if !input.is_dir() {
        return Ok(input.to_path_buf());
    }
    let file = input.join(format!("model_{name}.qat8"));
    if file.is_file() {
        return Ok(file);
    }
    let mut have: Vec<String> = std::fs::read_dir(input)
        .with_context(|| format!("cannot list {}", input.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| Some(n.strip_prefix("model_")?.strip_suffix(".qat8")?.to_string()))
        .collect();
    have.sort();
    bail!(
        "{} has no model_{name}.qat8 (models there: {})",
        input.display(),
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        }
    )
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let input = model_file(&args.input, &args.model)?;
    let model =
        Int8Model::load(&input).with_context(|| format!("cannot load {}", input.display()))?;
    let bytes = match args.format {
        ExportFormat::Qat8 => model.to_bytes().context("cannot serialize the model")?,
        ExportFormat::Tflite => {
            let opts = TfliteOptions {
                per_channel_fully_connected: !args.per_tensor_fully_connected,
                ..TfliteOptions::default()
            };
            to_tflite(&model, &opts)?.bytes
        }
        ExportFormat::Onnx => to_onnx_qdq(&model, &OnnxOptions::default())?.bytes,
    };
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "[export] {} ({} ops) → {} ({:?}, {} bytes)",
        input.display(),
        model.ops.len(),
        args.out.display(),
        args.format,
        bytes.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::model_file;

    #[test]
    fn a_run_directory_gives_the_named_model_or_lists_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["model_w4a4.qat8", "model_mixed.qat8", "report.json"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        assert_eq!(
            model_file(dir.path(), "w4a4").unwrap(),
            dir.path().join("model_w4a4.qat8")
        );
        let e = model_file(dir.path(), "w8a8").unwrap_err().to_string();
        assert!(
            e.contains("no model_w8a8.qat8") && e.contains("models there: mixed, w4a4"),
            "{e}"
        );
        let file = dir.path().join("model_mixed.qat8");
        assert_eq!(model_file(&file, "ignored").unwrap(), file);
    }
}
