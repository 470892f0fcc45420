//! `cargo xtask torch-models`: regenerate the PyTorch-made test models of the ONNX importer
//! (`data/torch-models/*.onnx`, committed) with `xtask/py/make_torch_models.py`.
//!
//! The script runs in the torch 2.13 venv of `cargo xtask setup` (or `$QAT_TORCH_PYTHON`, a Python
//! with `torch==2.13.0`). `torch.onnx.export` also needs the `onnx` package: it and its
//! dependencies, pinned in `xtask/py/torch-models-requirements.txt`, are installed once per machine
//! with `pip install --target <cache>/torch-models-py-<hash>` (PyPI wheels only) and put on
//! `PYTHONPATH`, so the torch venv itself is never modified.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup::{
    TORCH_VERSION, cache_root, cached_or_install, ensure_libtorch, pip_install, run_checked,
};

/// The pinned packages the script needs besides torch.
const REQUIREMENTS: &str = include_str!("../py/torch-models-requirements.txt");

/// The environment variable naming a Python with torch (default: the setup venv's).
const PYTHON_ENV: &str = "QAT_TORCH_PYTHON";

#[derive(Debug, clap::Args)]
pub struct TorchModelsArgs {
    /// Output directory (default: `data/torch-models` of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The Python that imports torch: `$QAT_TORCH_PYTHON`, else the venv that holds the libtorch of
/// setup (`<venv>/lib/pythonX.Y/site-packages/torch` → `<venv>/bin/python`).
fn torch_python() -> Result<PathBuf> {
    if let Some(p) = env::var_os(PYTHON_ENV) {
        return Ok(PathBuf::from(p));
    }
    let libtorch = ensure_libtorch(false)?;
    let python = libtorch
        .ancestors()
        .nth(4)
        .map(|venv| venv.join("bin").join("python"))
        .filter(|p| p.exists())
        .with_context(|| {
            format!(
                "LIBTORCH={} is not the torch package of a Python venv; set {PYTHON_ENV} to a Python \
                 with torch=={TORCH_VERSION}",
                libtorch.display()
            )
        })?;
    Ok(python)
}

/// The directory holding the pinned `onnx` package and its dependencies, installed if needed.
fn ensure_deps(python: &Path) -> Result<PathBuf> {
    let h = REQUIREMENTS.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let root = cache_root()?.join(format!("torch-models-py-{h:016x}"));
    let site = root.join("site");
    let ready = root.join("READY");
    cached_or_install(
        &root,
        || ready.exists().then(|| site.clone()),
        || {
            if site.exists() {
                fs::remove_dir_all(&site)
                    .with_context(|| format!("cannot remove stale {}", site.display()))?;
            }
            let req = root.join("requirements.txt");
            fs::write(&req, REQUIREMENTS)
                .with_context(|| format!("cannot write {}", req.display()))?;
            eprintln!(
                "[torch-models] pip install --target {} onnx (pinned, once per machine)",
                site.display()
            );
            run_checked(
                pip_install(python)
                    .args(["--only-binary", ":all:", "--no-deps", "--target"])
                    .arg(&site)
                    .arg("-r")
                    .arg(&req),
                "pip install of the onnx package (is PyPI reachable?)",
            )?;
            fs::write(&ready, b"ok")
                .with_context(|| format!("cannot write {}", ready.display()))?;
            Ok(site.clone())
        },
    )
    .map(|(site, _)| site)
}

pub fn run(args: &TorchModelsArgs) -> Result<()> {
    let root = crate::cargo::workspace_root().context("no workspace root")?;
    let python = torch_python()?;
    let site = ensure_deps(&python)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("data").join("torch-models"));
    let status = Command::new(&python)
        .arg(root.join("xtask/py/make_torch_models.py"))
        .arg("--data")
        .arg(root.join("data/mnist-10k"))
        .arg("--out")
        .arg(&out)
        .env("PYTHONPATH", &site)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!("make_torch_models.py failed ({status})");
    }
    eprintln!("[torch-models] written to {}", out.display());
    Ok(())
}
