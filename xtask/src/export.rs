//! `cargo xtask export --format qat8|tflite|onnx --input M.qat8 --out F`: write an integer model
//! in an interchange format. The writers express the model exactly or refuse, naming the layer
//! and the reason (qat-export's `ExportFormatError`).

use std::path::PathBuf;

use anyhow::{Context, Result};
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
    /// The `.qat8` model to convert.
    #[arg(long)]
    pub input: PathBuf,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// TFLite: refuse per-channel fully connected layers (for runtimes that read one scale).
    #[arg(long)]
    pub per_tensor_fully_connected: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let model = Int8Model::load(&args.input)
        .with_context(|| format!("cannot load {}", args.input.display()))?;
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
        args.input.display(),
        model.ops.len(),
        args.out.display(),
        args.format,
        bytes.len()
    );
    Ok(())
}
