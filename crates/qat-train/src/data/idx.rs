//! The IDX format of MNIST and Fashion-MNIST (LeCun et al.): a big-endian header
//! `00 00 <type> <ndim>`, then `ndim` big-endian u32 dimensions, then the data. We read unsigned-byte
//! (`type = 0x08`) files: images with `ndim = 3` (magic `0x00000803`) and labels with `ndim = 1`
//! (magic `0x00000801`). Files may be gzipped.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Result, read_maybe_gz};

/// Magic of an unsigned-byte 3-D IDX file (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an unsigned-byte 1-D IDX file (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

fn be_u32(bytes: &[u8], at: usize, path: &Path) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| DataError::Truncated {
            path: path.to_path_buf(),
            expected: at + 4,
            got: bytes.len(),
        })
}

/// Reads the header of an IDX file and returns its dimensions and the offset of the data.
fn header(bytes: &[u8], path: &Path, magic: u32) -> Result<(Vec<usize>, usize)> {
    let got = be_u32(bytes, 0, path)?;
    if got != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            got,
        });
    }
    let ndim = (magic & 0xff) as usize;
    let dims: Vec<usize> = (0..ndim)
        .map(|i| be_u32(bytes, 4 + 4 * i, path).map(|d| d as usize))
        .collect::<Result<_>>()?;
    let offset = 4 + 4 * ndim;
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_add(offset))
        .ok_or_else(|| DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("dimensions {dims:?} overflow"),
        })?;
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            got: bytes.len(),
        });
    }
    if bytes.len() > expected {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!(
                "{} trailing bytes after the {expected} the header announces",
                bytes.len() - expected
            ),
        });
    }
    Ok((dims, offset))
}

/// Reads an IDX image file (raw or gzip): returns `(pixels, n, rows, cols)` with pixels row-major
/// `[n, rows, cols]`.
///
/// Errors: [`DataError::Io`] (missing/unreadable), [`DataError::BadMagic`] (not `0x00000803`),
/// [`DataError::Truncated`] (shorter than `16 + n·rows·cols`), [`DataError::Malformed`] (trailing bytes,
/// zero-sized images).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = path.as_ref();
    let mut bytes = read_maybe_gz(path)?;
    let (dims, offset) = header(&bytes, path, IDX_IMAGES_MAGIC)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::Malformed {
            path: path.to_path_buf(),
            reason: format!("zero-sized images {dims:?}"),
        });
    }
    bytes.drain(..offset);
    Ok((bytes, dims[0], dims[1], dims[2]))
}

/// Reads an IDX label file (raw or gzip): one `u8` label per sample.
///
/// Errors as [`read_idx_images`], with magic `0x00000801` and size `8 + n`.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let mut bytes = read_maybe_gz(path)?;
    let (_, offset) = header(&bytes, path, IDX_LABELS_MAGIC)?;
    bytes.drain(..offset);
    Ok(bytes)
}

/// Loads an image file and a label file into a single-channel [`Dataset`], checking that the counts agree and
/// that every label is below `num_classes`.
pub(crate) fn load_idx_pair(images: &Path, labels: &Path, num_classes: usize) -> Result<Dataset> {
    let (pixels, n, rows, cols) = read_idx_images(images)?;
    let lab = read_idx_labels(labels)?;
    if lab.len() != n {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            n_images: n,
            labels: labels.to_path_buf(),
            n_labels: lab.len(),
        });
    }
    if let Some((index, &label)) = lab
        .iter()
        .enumerate()
        .find(|(_, l)| usize::from(**l) >= num_classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: PathBuf::from(labels),
            index,
            label,
            num_classes,
        });
    }
    Dataset::new(
        images.display().to_string(),
        pixels,
        lab,
        [1, rows, cols],
        num_classes,
    )
}
