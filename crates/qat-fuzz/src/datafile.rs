//! IDX (MNIST) and CIFAR-10 batch files through qat-train's readers, raw or gzipped. Every result
//! is data of the size the header announces or a typed `DataError` naming the file.
//!
//! Structure-aware mutations edit the IDX header (magic, a dimension set to a boundary value or
//! moved by one, so the count lies), CIFAR labels and record lengths, and wrap the result in gzip,
//! sometimes cut or damaged afterwards.

use std::io::{Read, Write};
use std::path::Path;

use qat_train::data::{DataError, read_cifar10_batch, read_idx_images, read_idx_labels};

use crate::mutate::{self, BOUNDARY};
use crate::rng::Rng;
use crate::scratch;
use crate::targets::BUG;

/// Big-endian IDX file of unsigned bytes with dimensions `dims`.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// `n` CIFAR-10 records.
pub fn cifar(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|r| {
            std::iter::once((r % 10) as u8).chain((0..3072).map(move |i| (i * 7 + r) as u8))
        })
        .collect()
}

/// Gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// The seeds: IDX images and labels, a CIFAR batch, raw and gzipped.
pub fn seeds() -> Vec<(bool, Vec<u8>)> {
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 13) as u8).collect();
    let images = idx(&[3, 4, 5], &pixels);
    let labels = idx(&[3], &[1, 7, 9]);
    let c = cifar(2);
    vec![
        (false, gzip(&images)),
        (false, images),
        (false, gzip(&labels)),
        (false, labels),
        (true, gzip(&c)),
        (true, c),
    ]
}

/// The content of `bytes`, gunzipped (at most 1 MiB) when it is gzip.
fn inner(bytes: &[u8]) -> (Vec<u8>, bool) {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let r = flate2::read::GzDecoder::new(bytes)
            .take(1 << 20)
            .read_to_end(&mut out);
        if r.is_ok() {
            return (out, true);
        }
    }
    (bytes.to_vec(), false)
}

/// A structure-aware mutant of an IDX (`cifar = false`) or CIFAR file.
pub fn mutate(rng: &mut Rng, cifar: bool, base: &[u8], other: &[u8]) -> Vec<u8> {
    let (mut v, was_gz) = inner(base);
    match rng.below(3) {
        0 if !cifar && v.len() >= 4 => {
            // A header field: the magic's type or rank, or one dimension.
            let ndim = (v[3] as usize).min(4);
            let field = rng.below(ndim + 1);
            if field == 0 {
                v[2 + rng.below(2)] = *rng.pick(&[0, 1, 3, 8, 9, 0xFF]);
            } else if let Some(d) = v.get_mut(4 * field..4 * field + 4) {
                let old = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                let new = match rng.below(3) {
                    0 => *rng.pick(&BOUNDARY) as u32,
                    1 => old.wrapping_add(rng.below(5) as u32).wrapping_sub(2),
                    _ => old.wrapping_mul(2),
                };
                d.copy_from_slice(&new.to_be_bytes());
            }
        }
        0 if cifar && !v.is_empty() => {
            let r = rng.below(v.len().div_ceil(3073)) * 3073;
            if let Some(l) = v.get_mut(r) {
                *l = *rng.pick(&[0, 9, 10, 0x7F, 0xFF]);
            }
        }
        1 => {
            // Records or samples removed or repeated.
            let cut = rng.below(v.len() + 1);
            if rng.one_in(2) {
                v.truncate(cut);
            } else {
                let tail = v[cut..].to_vec();
                v.extend_from_slice(&tail);
            }
        }
        _ => mutate::bytes(rng, &mut v, other),
    }
    if was_gz || rng.one_in(4) {
        v = gzip(&v);
        match rng.below(4) {
            // A truncated gzip stream.
            0 => v.truncate(rng.below(v.len() + 1)),
            1 => mutate::bytes(rng, &mut v, other),
            _ => {}
        }
    }
    v
}

/// Whether `e` names `path`.
fn names(e: &DataError, path: &Path) -> bool {
    match e {
        DataError::Io { path: p, .. }
        | DataError::Truncated { path: p, .. }
        | DataError::BadMagic { path: p, .. }
        | DataError::Malformed { path: p, .. }
        | DataError::LabelOutOfRange { path: p, .. } => p == path,
        _ => false,
    }
}

fn check<T>(r: Result<T, DataError>, path: &Path) -> Result<T, String> {
    r.map_err(|e| {
        if names(&e, path) {
            e.to_string()
        } else {
            format!("{BUG}error does not name {}: {e}", path.display())
        }
    })
}

/// One IDX case: the file read as images and as labels; `Ok` when either reader accepts it.
pub fn run_idx(bytes: &[u8]) -> Result<(), String> {
    let path = scratch::dir()?.join("train-images-idx3-ubyte");
    std::fs::write(&path, bytes).map_err(|e| format!("scratch: {e}"))?;
    let images = read_idx_images(&path);
    let labels = read_idx_labels(&path);
    if let Ok((pixels, n, rows, cols)) = &images
        && Some(pixels.len()) != n.checked_mul(*rows).and_then(|x| x.checked_mul(*cols))
    {
        return Err(format!(
            "{BUG}{} pixel bytes for {n}×{rows}×{cols}",
            pixels.len()
        ));
    }
    match (check(images, &path), check(labels, &path)) {
        (Err(e), _) | (_, Err(e)) if e.starts_with(BUG) => Err(e),
        (Ok(_), _) | (_, Ok(_)) => Ok(()),
        (Err(e), Err(_)) => Err(e),
    }
}

/// One CIFAR case.
pub fn run_cifar(bytes: &[u8]) -> Result<(), String> {
    let path = scratch::dir()?.join("data_batch_1.bin");
    std::fs::write(&path, bytes).map_err(|e| format!("scratch: {e}"))?;
    let (pixels, labels) = check(read_cifar10_batch(&path), &path)?;
    if pixels.len() != labels.len() * 3072 || labels.iter().any(|&l| l >= 10) {
        return Err(format!(
            "{BUG}{} pixel bytes for {} labels",
            pixels.len(),
            labels.len()
        ));
    }
    Ok(())
}
