//! Reading a Debian binary package without dpkg (deb(5)): an ar archive whose members are
//! `debian-binary` (`2.0\n`), `control.tar.*` and `data.tar`, `data.tar.gz`, `data.tar.xz` or
//! `data.tar.zst`. The data member is decompressed into a temporary `data.tar` (at most
//! [`MAX_DATA_TAR`] bytes), then the dataset's files are copied out of it (at most [`MAX_FILE`]
//! bytes each).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use super::{DataError, DatasetSpec, io_err};

/// Largest uncompressed `data.tar` accepted (the Fashion-MNIST one is 31 MB).
pub const MAX_DATA_TAR: u64 = 1 << 30;
/// Largest single file copied out of the package.
pub const MAX_FILE: u64 = 256 << 20;

/// How the data member is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

fn bad(deb: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadPackage {
        deb: deb.to_path_buf(),
        reason: reason.into(),
    }
}

/// Extracts the files of `spec` from the package `deb` into `into`; returns their paths, in the
/// order of `spec.files` (each named as in the package, `NAME.gz` or `NAME`).
pub fn extract(deb: &Path, spec: &DatasetSpec, into: &Path) -> Result<Vec<PathBuf>, DataError> {
    let tar_path = into.join("data.tar");
    unpack_data_member(deb, &tar_path)?;
    let file = File::open(&tar_path).map_err(io_err(&tar_path))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut found: Vec<Option<PathBuf>> = vec![None; spec.files.len()];
    let entries = archive
        .entries()
        .map_err(|e| bad(deb, format!("data.tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(deb, format!("data.tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| bad(deb, format!("data.tar: {e}")))?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./").trim_start_matches('/');
        let Some(rel) = path
            .strip_prefix(spec.package_dir)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let Some(i) = spec
            .files
            .iter()
            .position(|f| rel == f.name || rel.strip_suffix(".gz") == Some(f.name))
        else {
            continue;
        };
        if entry.size() > MAX_FILE {
            return Err(bad(
                deb,
                format!("{path} is {} bytes (limit {MAX_FILE})", entry.size()),
            ));
        }
        let dest = into.join(rel);
        let mut out = File::create(&dest).map_err(io_err(&dest))?;
        io::copy(&mut (&mut entry).take(MAX_FILE), &mut out).map_err(io_err(&dest))?;
        found[i] = Some(dest);
    }
    std::fs::remove_file(&tar_path).map_err(io_err(&tar_path))?;
    found
        .into_iter()
        .zip(spec.files)
        .map(|(p, f)| {
            p.ok_or_else(|| DataError::MissingFile {
                deb: deb.to_path_buf(),
                path: format!("{}/{}(.gz)", spec.package_dir, f.name),
            })
        })
        .collect()
}

/// Finds the `data.tar*` member of the ar archive `deb` and writes it, decompressed, to `tar_path`.
fn unpack_data_member(deb: &Path, tar_path: &Path) -> Result<(), DataError> {
    let file = File::open(deb).map_err(io_err(deb))?;
    let mut ar = ar::Archive::new(BufReader::new(file));
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| bad(deb, format!("not an ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if first {
            first = false;
            let mut magic = [0u8; 4];
            let n = entry.read(&mut magic).map_err(io_err(deb))?;
            if name != "debian-binary" || !magic[..n].starts_with(b"2.") {
                return Err(bad(
                    deb,
                    "not a Debian binary package (the first member must be debian-binary holding 2.x)",
                ));
            }
            continue;
        }
        let compression = match name.strip_prefix("data.tar") {
            Some("") => Compression::None,
            Some(".gz") => Compression::Gzip,
            Some(".xz") => Compression::Xz,
            Some(".zst") => Compression::Zstd,
            Some(other) => {
                return Err(bad(
                    deb,
                    format!(
                        "data member data.tar{other}: unsupported compression \
                         (supported: none, .gz, .xz, .zst)"
                    ),
                ));
            }
            None => continue,
        };
        let out = File::create(tar_path).map_err(io_err(tar_path))?;
        let mut out = Limited {
            inner: BufWriter::new(out),
            left: MAX_DATA_TAR,
        };
        let fail = |e: String| bad(deb, format!("{name}: {e}"));
        match compression {
            Compression::None => copy(&mut entry, &mut out).map_err(|e| fail(e.to_string()))?,
            Compression::Gzip => copy(&mut flate2::read::GzDecoder::new(entry), &mut out)
                .map_err(|e| fail(e.to_string()))?,
            Compression::Xz => lzma_rs::xz_decompress(&mut BufReader::new(entry), &mut out)
                .map_err(|e| fail(e.to_string()))?,
            Compression::Zstd => {
                let mut dec = ruzstd::decoding::StreamingDecoder::new(entry)
                    .map_err(|e| fail(e.to_string()))?;
                copy(&mut dec, &mut out).map_err(|e| fail(e.to_string()))?
            }
        }
        out.inner.flush().map_err(io_err(tar_path))?;
        return Ok(());
    }
    Err(bad(
        deb,
        if first {
            "empty archive"
        } else {
            "no data.tar member"
        },
    ))
}

fn copy(r: &mut impl Read, w: &mut impl Write) -> io::Result<()> {
    io::copy(r, w).map(|_| ())
}

/// A writer that fails once more than `left` bytes were written.
struct Limited<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "uncompressed data.tar exceeds {MAX_DATA_TAR} bytes"
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
