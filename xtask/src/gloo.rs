//! Gloo's C++ headers for `qat-dist`, once per machine.
//!
//! libtorch's c10d is built with the Gloo backend, but the libtorch wheels do not ship Gloo's
//! headers, which c10d's `ProcessGroupGloo.hpp` includes. qat-dist takes only declarations from
//! them (the Gloo code that runs is libtorch's own copy), so Debian's `libgloo-dev` serves:
//! `apt-get download libgloo-dev` (the machine's apt sources verify it), unpacked with
//! `dpkg-deb -x` into `<cache>/gloo/pkg`, whose `usr/include` is recorded in `<cache>/gloo/READY`.
//! qat-dist's build script reads that file (or `QAT_GLOO_INCLUDE`, or the system's
//! `/usr/include/gloo`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::setup::{cache_root, ready_path};

/// The Debian package with the headers.
const PACKAGE: &str = "libgloo-dev";

fn usable(dir: &Path) -> bool {
    dir.join("gloo").join("context.h").exists()
}

/// The directory that holds `gloo/context.h`, installing the headers into the cache if needed.
pub fn ensure_gloo(quiet: bool) -> Result<PathBuf> {
    if let Some(d) = env::var_os("QAT_GLOO_INCLUDE") {
        let d = PathBuf::from(d);
        if !usable(&d) {
            bail!("QAT_GLOO_INCLUDE={} has no gloo/context.h", d.display());
        }
        return Ok(d);
    }
    let system = PathBuf::from("/usr/include");
    if usable(&system) {
        return Ok(system);
    }
    let root = cache_root()?.join("gloo");
    let (dir, took) = ready_path(&root, usable, || install(&root))?;
    match took {
        Some(t) => eprintln!(
            "[setup] Gloo headers ({PACKAGE}) at {} in {t:.0?}",
            dir.display()
        ),
        None if !quiet => eprintln!("[setup] Gloo headers cached at {}", dir.display()),
        None => {}
    }
    Ok(dir)
}

fn install(root: &Path) -> Result<PathBuf> {
    let tmp = root.join("download");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    eprintln!("[setup] apt-get download {PACKAGE} (headers only, under 1 MB)");
    let download = || {
        Command::new("apt-get")
            .args(["download", PACKAGE])
            .current_dir(&tmp)
            .output()
    };
    let mut out = download().context("cannot run apt-get (qat-dist needs Debian's libgloo-dev)")?;
    if !out.status.success() {
        // A fresh machine may not have its package lists yet.
        eprintln!("[setup] apt-get download failed; apt-get update, then once more");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        out = download().context("cannot run apt-get")?;
    }
    if !out.status.success() {
        bail!(
            "`apt-get download {PACKAGE}` failed ({}): {}\ninstall it by hand (apt-get install \
             {PACKAGE}) or set QAT_GLOO_INCLUDE to a directory with gloo/context.h",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
    let pkg = root.join("pkg");
    if pkg.exists() {
        fs::remove_dir_all(&pkg).with_context(|| format!("cannot clear {}", pkg.display()))?;
    }
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&pkg)
        .status()
        .context("cannot run dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    let _ = fs::remove_dir_all(&tmp);
    let include = pkg.join("usr").join("include");
    if !usable(&include) {
        bail!(
            "{PACKAGE} unpacked without gloo/context.h under {}",
            include.display()
        );
    }
    Ok(include)
}
