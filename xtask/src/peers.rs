//! The peer runtimes: onnxruntime and LiteRT (`ai-edge-litert`) with numpy, in a cached venv,
//! once per machine, for the cross-check of exported models and the model benchmarks.
//!
//! Resolution order (like libtorch in [`crate::setup`]):
//! 1. `QAT_PEERS_PYTHON` set by the user: a Python that imports the pinned versions; used as is.
//! 2. The per-user cache: `peers-<key>/READY` holds the venv's Python, where `<key>` names the
//!    onnxruntime and LiteRT versions and hashes `xtask/py/peers-requirements.txt` (every package
//!    pinned), so a changed pin gets a new venv.
//! 3. Otherwise: `python3 -m venv peers-<key>/venv`, `pip install --only-binary :all: -r` the
//!    requirements (PyPI wheels only), verify the imports and versions, then write `READY`.
//!
//! `cargo xtask setup --print-peers-python` prints the interpreter, for
//! `export QAT_PEERS_PYTHON=$(cargo xtask setup --print-peers-python)`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::setup::{cache_root, pip_install, ready_path, run_checked};

pub use xtask::peers_cache::REQUIREMENTS;
use xtask::peers_cache::{key, pinned};
use xtask::process::output_ok;

/// The environment variable that points at a ready Python (and that tests read).
pub const PYTHON_ENV: &str = "QAT_PEERS_PYTHON";

/// `(import name, pip name)` of the packages whose versions are verified after the install.
const CHECKED: [(&str, &str); 3] = [
    ("numpy", "numpy"),
    ("onnxruntime", "onnxruntime"),
    ("ai_edge_litert", "ai-edge-litert"),
];

/// Checks that `python` imports every checked package at its pinned version.
fn verify(python: &Path) -> Result<()> {
    // Import every module (a wheel that installs but cannot load fails here), then print the
    // installed distribution versions.
    let imports = CHECKED
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ");
    let versions = CHECKED
        .iter()
        .map(|(_, pip)| format!("print(md.version('{pip}'))"))
        .collect::<Vec<_>>()
        .join("; ");
    let script = format!("import importlib.metadata as md, {imports}; {versions}");
    let out = output_ok(
        Command::new(python).args(["-c", &script]),
        || format!("cannot run {}", python.display()),
        |_| format!("{} cannot import the peer runtimes", python.display()),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    for ((_, pip), got) in CHECKED.iter().zip(text.lines()) {
        let want = pinned(pip).unwrap_or("?");
        if got.trim() != want {
            bail!(
                "{} has {pip} {}, the pin is {want}",
                python.display(),
                got.trim()
            );
        }
    }
    Ok(())
}

/// Returns the peers' Python, installing the venv into the cache if needed.
pub fn ensure_peers(quiet: bool) -> Result<PathBuf> {
    if let Some(user) = env::var_os(PYTHON_ENV) {
        let python = PathBuf::from(user);
        verify(&python).with_context(|| format!("{PYTHON_ENV} is not usable"))?;
        if !quiet {
            eprintln!("[setup] using {PYTHON_ENV}={}", python.display());
        }
        return Ok(python);
    }
    let root = cache_root()?.join(format!("peers-{}", key()));
    let (python, took) = ready_path(&root, Path::exists, || {
        let python = install(&root)?;
        verify(&python)?;
        Ok(python)
    })?;
    match took {
        Some(t) => eprintln!(
            "[setup] peer runtimes (onnxruntime {}, ai-edge-litert {}) installed at {} in {t:.0?}",
            pinned("onnxruntime").unwrap_or("?"),
            pinned("ai-edge-litert").unwrap_or("?"),
            python.display(),
        ),
        None if !quiet => eprintln!("[setup] peer runtimes cached at {}", python.display()),
        None => {}
    }
    Ok(python)
}

fn install(root: &Path) -> Result<PathBuf> {
    let python = env::var("QAT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let venv = root.join("venv");
    if venv.exists() {
        // A venv without READY is a broken or interrupted install: start over.
        fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove stale venv {}", venv.display()))?;
    }
    eprintln!("[setup] creating {}", venv.display());
    // Child output goes to stderr: stdout carries only the interpreter's path
    // (`--print-peers-python`).
    let to_stderr = || Stdio::from(std::io::stderr());
    run_checked(
        Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .stdout(to_stderr()),
        "python3 -m venv (peer runtimes)",
    )?;
    let req = root.join("requirements.txt");
    fs::write(&req, REQUIREMENTS).with_context(|| format!("cannot write {}", req.display()))?;
    let vpy = venv.join("bin").join("python");
    eprintln!(
        "[setup] pip install onnxruntime, ai-edge-litert, numpy (about 100 MB; once per machine)"
    );
    run_checked(
        pip_install(&vpy)
            .args(["--only-binary", ":all:", "-r"])
            .arg(&req)
            .stdout(to_stderr()),
        "pip install of the peer runtimes (is PyPI reachable?)",
    )?;
    Ok(vpy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_checked_package_is_pinned_and_the_key_is_stable() {
        for (_, pip) in CHECKED {
            assert!(pinned(pip).is_some(), "{pip} has no pin");
        }
        assert_eq!(key(), key());
        assert!(key().starts_with("ort1.32.0-litert2.3.0-"), "{}", key());
        assert_eq!(pinned("nonexistent"), None);
    }
}
