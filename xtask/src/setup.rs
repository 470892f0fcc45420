//! `cargo xtask setup`: make libtorch 2.13 available, once per machine.
//!
//! Resolution order:
//! 1. `LIBTORCH` set by the user: validated and used as is.
//! 2. The per-user cache `$QAT_CACHE_DIR`, else `$XDG_CACHE_HOME/qat`, else `~/.cache/qat`:
//!    `torch-2.13.0/READY` holds the path of a verified install; every checkout on the machine shares it.
//! 3. Otherwise: `python3 -m venv torch-2.13.0/venv`, `pip install torch==2.13.0` (the PyPI wheel,
//!    which carries libtorch), verify the import and version, then write `READY`.
//!
//! The returned directory is what tch's build script wants in `LIBTORCH` (it has `include/` and `lib/`).

use std::{
    env,
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The torch version tch 0.26 is built against.
pub const TORCH_VERSION: &str = "2.13.0";

pub(crate) use xtask::cache::cache_root;

fn help_text() -> String {
    format!(
        "To use an existing libtorch {TORCH_VERSION} instead, point LIBTORCH at a directory with include/ and lib/ \
         (for example the `torch` package directory of a Python environment with torch=={TORCH_VERSION}, \
         or an unpacked libtorch {TORCH_VERSION} zip) and run the command again:\n    \
         export LIBTORCH=/path/to/libtorch"
    )
}

/// Checks that `dir` looks like a libtorch install.
fn validate_libtorch(dir: &Path) -> Result<()> {
    let lib = dir.join("lib");
    let has_lib = ["libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"]
        .iter()
        .any(|f| lib.join(f).exists());
    if !has_lib {
        bail!("{} has no lib/libtorch_cpu.so", dir.display());
    }
    if !dir.join("include").join("torch").exists() {
        bail!("{} has no include/torch", dir.display());
    }
    Ok(())
}

/// Returns the libtorch directory, installing it into the cache if needed.
pub fn ensure_libtorch(quiet: bool) -> Result<PathBuf> {
    if let Some(user) = env::var_os("LIBTORCH") {
        let dir = PathBuf::from(user);
        validate_libtorch(&dir)
            .with_context(|| format!("LIBTORCH={} is not a usable libtorch", dir.display()))?;
        if !quiet {
            eprintln!("[setup] using LIBTORCH={}", dir.display());
        }
        return Ok(dir);
    }
    let root = cache_root()?.join(format!("torch-{TORCH_VERSION}"));
    let usable = |dir: &Path| validate_libtorch(dir).is_ok();
    let (dir, took) = ready_path(&root, usable, || {
        let dir = install(&root).map_err(|e| e.context(help_text()))?;
        validate_libtorch(&dir).map_err(|e| e.context(help_text()))?;
        Ok(dir)
    })?;
    match took {
        Some(t) => eprintln!(
            "[setup] libtorch {TORCH_VERSION} installed at {} in {t:.0?}",
            dir.display()
        ),
        None if !quiet => eprintln!(
            "[setup] libtorch {TORCH_VERSION} cached at {}",
            dir.display()
        ),
        None => {}
    }
    Ok(dir)
}

/// The path that `root/READY` records if `usable` accepts it, else the one `install` returns,
/// then recorded there ([`cached_or_install`]: once per machine). With the time the install took
/// (`None`: found installed).
pub(crate) fn ready_path(
    root: &Path,
    usable: impl Fn(&Path) -> bool,
    install: impl FnOnce() -> Result<PathBuf>,
) -> Result<(PathBuf, Option<Duration>)> {
    let ready = root.join("READY");
    let cached = || {
        let path = PathBuf::from(fs::read_to_string(&ready).ok()?.trim());
        usable(&path).then_some((path, None))
    };
    let (found, _) = cached_or_install(root, cached, || {
        let started = Instant::now();
        let path = install()?;
        fs::write(&ready, path.to_string_lossy().as_bytes())
            .with_context(|| format!("cannot write {}", ready.display()))?;
        Ok((path, Some(started.elapsed())))
    })?;
    Ok(found)
}

/// What `cached` finds in the cache directory `root`, else what `install` puts there, once per
/// machine: under the lock `root/LOCK`, and looked for again once the lock is held (another
/// process may have installed it meanwhile). The flag says whether it was found installed.
pub(crate) fn cached_or_install<T>(
    root: &Path,
    cached: impl Fn() -> Option<T>,
    install: impl FnOnce() -> Result<T>,
) -> Result<(T, bool)> {
    if let Some(found) = cached() {
        return Ok((found, true));
    }
    fs::create_dir_all(root)
        .with_context(|| format!("cannot create cache directory {}", root.display()))?;
    let _lock = Lock::acquire(&root.join("LOCK"))?;
    if let Some(found) = cached() {
        return Ok((found, true));
    }
    Ok((install()?, false))
}

/// `python -m pip install` with the options every install here shares (no cache, no version
/// check, no progress bar); the caller adds what to install.
pub(crate) fn pip_install(python: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
    ]);
    cmd
}

pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn install(root: &Path) -> Result<PathBuf> {
    let python = env::var("QAT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .with_context(|| format!("no Python found ({python}); libtorch is installed from the PyPI wheel torch=={TORCH_VERSION}"))?;
    if !out.status.success() {
        bail!(
            "{python} does not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let venv = root.join("venv");
    if venv.exists() && !venv.join("bin").join("python").exists() {
        fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove broken venv {}", venv.display()))?;
    }
    if !venv.exists() {
        eprintln!("[setup] creating {}", venv.display());
        run_checked(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    let vpy = venv.join("bin").join("python");
    eprintln!(
        "[setup] pip install torch=={TORCH_VERSION} (about 4.7 GB with its CUDA libraries; once per machine)"
    );
    run_checked(
        pip_install(&vpy).arg(format!("torch=={TORCH_VERSION}")),
        "pip install torch (is PyPI reachable?)",
    )?;
    let out = Command::new(&vpy)
        .args([
            "-c",
            "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .context("cannot run the venv's python to locate torch")?;
    if !out.status.success() {
        bail!(
            "import torch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default().trim().to_string();
    let dir = PathBuf::from(lines.next().unwrap_or_default().trim());
    if !version.starts_with(TORCH_VERSION) {
        bail!("installed torch is {version}, tch 0.26 needs {TORCH_VERSION}");
    }
    Ok(dir)
}

/// An exclusive lock file so two checkouts do not install at the same time.
pub(crate) struct Lock(PathBuf);

impl Lock {
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Self(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = fs::read_to_string(path).unwrap_or_default();
                    let alive = pid
                        .trim()
                        .parse::<u32>()
                        .map(|p| Path::new(&format!("/proc/{p}")).exists())
                        .unwrap_or(false);
                    if !alive {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "timed out waiting for another setup holding {}",
                            path.display()
                        );
                    }
                    eprintln!(
                        "[setup] another setup (pid {}) is installing; waiting",
                        pid.trim()
                    );
                    std::thread::sleep(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create lock {}", path.display()));
                }
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
