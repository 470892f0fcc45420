//! The CIFAR-10 binary format (`cifar-10-batches-bin`, Krizhevsky 2009): a sequence of 3073-byte records,
//! one label byte (0–9) followed by 3072 pixel bytes: the 1024 red values, then green, then blue, each plane
//! row-major 32×32 — i.e. one CHW image, exactly the NCHW layout of [`super::Dataset`].

use std::path::Path;

use super::{DataError, Result, read_maybe_gz};

/// Number of CIFAR-10 classes.
pub const CIFAR10_CLASSES: usize = 10;
const PIXELS: usize = 3 * 32 * 32;
const RECORD: usize = 1 + PIXELS;

/// Reads one CIFAR-10 binary batch file (raw or gzip): returns `(pixels [n,3,32,32], labels)`.
///
/// Errors: [`DataError::Io`] (missing), [`DataError::Truncated`] (size not a multiple of 3073 bytes, or empty),
/// [`DataError::LabelOutOfRange`] (a label byte ≥ 10, which is also how a non-CIFAR file usually shows).
pub fn read_cifar10_batch(path: impl AsRef<Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        let expected = (bytes.len() / RECORD + 1) * RECORD;
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: bytes.len(),
        });
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (index, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if usize::from(rec[0]) >= CIFAR10_CLASSES {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label: rec[0],
                num_classes: CIFAR10_CLASSES,
            });
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}
