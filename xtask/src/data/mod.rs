//! `cargo xtask setup --data NAME`: a dataset installed once per machine into the per-user cache
//! (`<cache>/datasets/NAME`, the cache root of the libtorch install), every file checked against a
//! pinned SHA-256.
//!
//! Source: the Debian package of the dataset, fetched with `apt-get download` from the machine's
//! configured sources into a temporary directory and unpacked by [`deb`] (an ar archive holding a
//! `data.tar`, `.tar.gz`, `.tar.xz` or `.tar.zst`), without dpkg; or a package file given with
//! `--deb`; or the files put into the directory by hand.
//!
//! The pinned hashes are of the **uncompressed** IDX content, so the check does not depend on how a
//! packager gzipped the files (Debian's `.gz` files differ byte-wise from the upstream ones; their
//! content is identical). The files are kept as the package ships them (`.gz`); the loaders read
//! both forms.
//!
//! The install is idempotent (a `READY` marker, written last) and locked against concurrent installs
//! (a `LOCK` file holding the installer's pid, as the libtorch install).

mod deb;
#[cfg(test)]
mod tests;

use std::{
    fs::{self, File},
    io::{self, BufReader, Read},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::setup::{Lock, cache_root};

/// One file of a dataset.
#[derive(Debug, Clone, Copy)]
pub struct DataFile {
    /// Name without `.gz`, e.g. `train-images-idx3-ubyte`.
    pub name: &'static str,
    /// SHA-256 (lower-case hex) of the uncompressed content.
    pub sha256: &'static str,
    /// Uncompressed length in bytes.
    pub len: u64,
}

/// A dataset the installer knows.
#[derive(Debug, Clone, Copy)]
pub struct DatasetSpec {
    /// Directory name in the cache and `--data` value.
    pub name: &'static str,
    /// One line for the user: what it is, its size, its licence.
    pub about: &'static str,
    /// Debian package.
    pub package: &'static str,
    /// Where the package puts the files (relative, no leading `/`).
    pub package_dir: &'static str,
    /// The files.
    pub files: &'static [DataFile],
}

/// Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): the Debian package `dataset-fashion-mnist`
/// (0.0~git20200523.55506a9-1). The hashes were computed from that package's files and agree with
/// the published MD5 of the same uncompressed files and, for the label files, with the upstream
/// repository's `.gz` files (whose MD5 is the one in the upstream README).
pub const FASHION_MNIST: DatasetSpec = DatasetSpec {
    name: "fashion-mnist",
    about: "Fashion-MNIST: 60,000 training and 10,000 test images of clothing, 28×28 grey, 10 classes \
            (Zalando Research, MIT licence)",
    package: "dataset-fashion-mnist",
    package_dir: "usr/share/datasets/fashion-mnist",
    files: &[
        DataFile {
            name: "train-images-idx3-ubyte",
            sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            len: 47_040_016,
        },
        DataFile {
            name: "train-labels-idx1-ubyte",
            sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            len: 60_008,
        },
        DataFile {
            name: "t10k-images-idx3-ubyte",
            sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            len: 7_840_016,
        },
        DataFile {
            name: "t10k-labels-idx1-ubyte",
            sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            len: 10_008,
        },
    ],
};

/// The datasets `--data` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    /// Fashion-MNIST, 70,000 images (Debian `dataset-fashion-mnist`).
    FashionMnist,
}

impl Dataset {
    /// Its specification.
    pub fn spec(self) -> &'static DatasetSpec {
        match self {
            Dataset::FashionMnist => &FASHION_MNIST,
        }
    }
}

/// A failed check of an installed or unpacked file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The uncompressed content's SHA-256 is not the pinned one.
    #[error("{file}: SHA-256 of the uncompressed content is {got}, expected {expected}")]
    HashMismatch {
        /// The file.
        file: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Hash found.
        got: String,
    },
    /// The uncompressed content has another length than the pinned one.
    #[error("{file}: uncompressed length is {got} bytes, expected {expected}")]
    LengthMismatch {
        /// The file.
        file: PathBuf,
        /// Pinned length.
        expected: u64,
        /// Length found (at most `expected + 1`: reading stops there).
        got: u64,
    },
    /// The package is not a Debian binary package the reader understands.
    #[error("{deb}: {reason}")]
    BadPackage {
        /// The package file.
        deb: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file the dataset needs is not in the package.
    #[error("{deb} has no {path}")]
    MissingFile {
        /// The package file.
        deb: PathBuf,
        /// The path inside the package.
        path: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the dataset's files come from when they are not installed yet.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<program> download <package>` (normally `apt-get`) in a temporary directory.
    Apt {
        /// The program.
        program: String,
    },
    /// A Debian package file.
    Deb(PathBuf),
}

/// What [`install_into`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `READY` was there.
    AlreadyInstalled,
    /// The files were installed (or found in place and verified); from where.
    Installed(String),
}

/// The cache directory of `spec`: `<cache>/datasets/<name>`.
pub fn dataset_dir(spec: &DatasetSpec) -> Result<PathBuf> {
    Ok(cache_root()?.join("datasets").join(spec.name))
}

/// `cargo xtask setup --data NAME [--deb FILE]`: installs the dataset into the cache if needed and
/// returns its directory.
pub fn ensure(dataset: Dataset, deb: Option<PathBuf>) -> Result<PathBuf> {
    let spec = dataset.spec();
    let dir = dataset_dir(spec)?;
    let source = match deb {
        Some(p) => Source::Deb(p),
        None => Source::Apt {
            program: "apt-get".into(),
        },
    };
    match install_into(&dir, spec, &source)? {
        Outcome::AlreadyInstalled => {
            eprintln!("[setup] {} cached at {}", spec.name, dir.display())
        }
        Outcome::Installed(from) => eprintln!(
            "[setup] {} installed at {} (from {from}): {}",
            spec.name,
            dir.display(),
            spec.about
        ),
    }
    Ok(dir)
}

/// The file of `f` in `dir`: `NAME.gz` or `NAME`, whichever exists (`.gz` first).
fn present(dir: &Path, f: &DataFile) -> Option<PathBuf> {
    [format!("{}.gz", f.name), f.name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn is_ready(dir: &Path, spec: &DatasetSpec) -> bool {
    dir.join("READY").is_file() && spec.files.iter().all(|f| present(dir, f).is_some())
}

/// Installs `spec` into `dir` (see the module docs). Idempotent; concurrent calls wait for each
/// other.
pub fn install_into(dir: &Path, spec: &DatasetSpec, source: &Source) -> Result<Outcome> {
    if is_ready(dir, spec) {
        return Ok(Outcome::AlreadyInstalled);
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = Lock::acquire(&dir.join("LOCK"))?;
    if is_ready(dir, spec) {
        return Ok(Outcome::AlreadyInstalled);
    }
    // Files put there by hand (or by an install interrupted before READY).
    let from = if spec.files.iter().all(|f| present(dir, f).is_some()) {
        for f in spec.files {
            let path = present(dir, f).unwrap_or_default();
            verify(&path, f).with_context(|| manual_help(dir, spec))?;
        }
        format!("the files already in {}", dir.display())
    } else {
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(dir)
            .with_context(|| format!("cannot create a temporary directory in {}", dir.display()))?;
        let (deb, from) = match source {
            Source::Deb(p) => (p.clone(), p.display().to_string()),
            Source::Apt { program } => (
                apt_download(program, spec, tmp.path()).with_context(|| manual_help(dir, spec))?,
                format!("the Debian package {}", spec.package),
            ),
        };
        let staged = deb::extract(&deb, spec, tmp.path())?;
        for (path, f) in staged.iter().zip(spec.files) {
            verify(path, f)?;
        }
        for (path, f) in staged.iter().zip(spec.files) {
            let name = path.file_name().unwrap_or_default();
            let dest = dir.join(name);
            // a stale file of the other form (raw vs .gz) would shadow or confuse; remove it
            for old in [dir.join(f.name), dir.join(format!("{}.gz", f.name))] {
                if old != dest && old.exists() {
                    fs::remove_file(&old).map_err(io_err(&old))?;
                }
            }
            fs::rename(path, &dest).map_err(io_err(&dest))?;
        }
        from
    };
    let ready = dir.join("READY");
    let text: String = spec
        .files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.name))
        .collect();
    fs::write(&ready, text).map_err(io_err(&ready))?;
    Ok(Outcome::Installed(from))
}

/// What to do without apt: where the files go.
fn manual_help(dir: &Path, spec: &DatasetSpec) -> String {
    let names: Vec<String> = spec
        .files
        .iter()
        .map(|f| format!("{}.gz", f.name))
        .collect();
    format!(
        "cannot fetch the Debian package {pkg}. Either put the four files\n    {files}\n\
         (gzipped or not; {about}) into\n    {dir}\n\
         and run `cargo xtask setup --data {name}` again (they are checked against pinned SHA-256 \
         hashes of their uncompressed content), or download the package {pkg} on another machine \
         and run `cargo xtask setup --data {name} --deb FILE.deb`",
        pkg = spec.package,
        files = names.join("\n    "),
        about = spec.about,
        dir = dir.display(),
        name = spec.name,
    )
}

/// `program download <package>` in `into`; returns the `.deb` it wrote.
fn apt_download(program: &str, spec: &DatasetSpec, into: &Path) -> Result<PathBuf> {
    eprintln!("[setup] {program} download {} (about 31 MB)", spec.package);
    let out = Command::new(program)
        .args(["download", spec.package])
        .current_dir(into)
        .output()
        .with_context(|| format!("cannot run {program} (is this a Debian-based system?)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} download {}` failed ({}): {}\n(if the package is unknown, run `apt-get update` \
             first; it is in Debian 11 and later, section science)",
            spec.package,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut debs = fs::read_dir(into)
        .with_context(|| format!("cannot list {}", into.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(spec.package))
        });
    match (debs.next(), debs.next()) {
        (Some(p), None) => Ok(p),
        _ => anyhow::bail!(
            "`{program} download {}` did not leave exactly one {}*.deb in {}",
            spec.package,
            spec.package,
            into.display()
        ),
    }
}

/// Checks the uncompressed length and SHA-256 of `path` (gzip when it ends in `.gz`), reading at
/// most `f.len + 1` uncompressed bytes.
pub fn verify(path: &Path, f: &DataFile) -> Result<(), DataError> {
    let file = File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut hasher = Sha256::new();
    let got = io::copy(&mut reader.take(f.len + 1), &mut hasher).map_err(io_err(path))?;
    if got != f.len {
        return Err(DataError::LengthMismatch {
            file: path.to_path_buf(),
            expected: f.len,
            got,
        });
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if hash != f.sha256 {
        return Err(DataError::HashMismatch {
            file: path.to_path_buf(),
            expected: f.sha256.to_string(),
            got: hash,
        });
    }
    Ok(())
}
