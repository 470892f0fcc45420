//! A minimal `.npy` (NumPy format version 1.0) writer and reader for the cross-check files:
//! little-endian `int8`, `uint8`, `int32` and `float32`, C order.
//!
//! Layout: the magic `\x93NUMPY`, version `1 0`, a little-endian u16 header length, then an ASCII
//! dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
//! final `\n` so that the data starts at a multiple of 64 bytes, then the raw elements.
//!
//! ```
//! use qat_export::crosscheck::npy::{Npy, read, to_bytes};
//! let bytes = to_bytes(&[2, 3], &Npy::I8(vec![1, -2, 3, -4, 5, -6]));
//! assert_eq!(bytes.len() % 64, 6); // 64-byte header, then 6 bytes
//! let (shape, data) = read(&bytes)?;
//! assert_eq!((shape, data), (vec![2, 3], Npy::I8(vec![1, -2, 3, -4, 5, -6])));
//! # Ok::<(), qat_export::crosscheck::CrosscheckError>(())
//! ```

use super::CrosscheckError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The elements of one array.
#[derive(Debug, Clone, PartialEq)]
pub enum Npy {
    /// `|i1`.
    I8(Vec<i8>),
    /// `|u1`.
    U8(Vec<u8>),
    /// `<i4`.
    I32(Vec<i32>),
    /// `<f4`.
    F32(Vec<f32>),
}

impl Npy {
    fn descr(&self) -> &'static str {
        match self {
            Npy::I8(_) => "|i1",
            Npy::U8(_) => "|u1",
            Npy::I32(_) => "<i4",
            Npy::F32(_) => "<f4",
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Npy::I8(v) => v.len(),
            Npy::U8(v) => v.len(),
            Npy::I32(v) => v.len(),
            Npy::F32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn extend_le(&self, out: &mut Vec<u8>) {
        match self {
            Npy::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            Npy::U8(v) => out.extend_from_slice(v),
            Npy::I32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Npy::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

/// The `.npy` bytes of an array of the given shape (the element count must match the shape;
/// a mismatch is a caller bug and is reported by [`read`] on the way back, not here).
pub fn to_bytes(shape: &[usize], data: &Npy) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {tuple}, }}",
        data.descr()
    );
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    data.extend_le(&mut out);
    out
}

/// Writes an array to `path`.
pub fn write(path: &std::path::Path, shape: &[usize], data: &Npy) -> Result<(), CrosscheckError> {
    std::fs::write(path, to_bytes(shape, data)).map_err(|e| CrosscheckError::io(path, e))
}

fn bad(why: impl Into<String>) -> CrosscheckError {
    CrosscheckError::Npy(why.into())
}

/// Parses `.npy` bytes written by [`to_bytes`] (or NumPy, for the four element types, C order,
/// version 1.0): `(shape, elements)`.
pub fn read(bytes: &[u8]) -> Result<(Vec<usize>, Npy), CrosscheckError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC || bytes[6] != 1 {
        return Err(bad("not a version-1 .npy file"));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let field = |key: &str| -> Result<&str, CrosscheckError> {
        let at = header
            .find(key)
            .ok_or_else(|| bad(format!("header has no {key}")))?;
        Ok(header[at + key.len()..].trim_start_matches([':', ' ']))
    };
    if field("'fortran_order'")?.starts_with("True") {
        return Err(bad("fortran order"));
    }
    let descr = field("'descr'")?;
    let shape_s = field("'shape'")?;
    let close = shape_s.find(')').ok_or_else(|| bad("unterminated shape"))?;
    let shape = shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("shape entry {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let body = &bytes[10 + hlen..];
    let want = |size: usize| -> Result<&[u8], CrosscheckError> {
        let len = n.checked_mul(size).ok_or_else(|| bad("size overflows"))?;
        body.get(..len)
            .filter(|_| body.len() == len)
            .ok_or_else(|| {
                bad(format!(
                    "{} data bytes for {n} elements of {size}",
                    body.len()
                ))
            })
    };
    let data = if descr.starts_with("'|i1'") {
        Npy::I8(want(1)?.iter().map(|&b| b as i8).collect())
    } else if descr.starts_with("'|u1'") {
        Npy::U8(want(1)?.to_vec())
    } else if descr.starts_with("'<i4'") {
        Npy::I32(words(want(4)?).map(i32::from_le_bytes).collect())
    } else if descr.starts_with("'<f4'") {
        Npy::F32(words(want(4)?).map(f32::from_le_bytes).collect())
    } else {
        return Err(bad(format!("element type {descr}")));
    };
    Ok((shape, data))
}

/// The 4-byte words of `b` (whose length is a multiple of 4).
fn words(b: &[u8]) -> impl Iterator<Item = [u8; 4]> + '_ {
    b.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_with_64_byte_aligned_data() {
        let cases = [
            (vec![3], Npy::U8(vec![0, 128, 255])),
            (vec![1, 2, 2], Npy::I32(vec![i32::MIN, -1, 0, i32::MAX])),
            (vec![2, 1], Npy::F32(vec![-0.5, 3.25])),
            (vec![0, 4], Npy::I8(vec![])),
        ];
        for (shape, data) in cases {
            let bytes = to_bytes(&shape, &data);
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            assert_eq!(read(&bytes).unwrap(), (shape, data));
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(read(b"not numpy").is_err());
        let mut b = to_bytes(&[4], &Npy::F32(vec![1.0; 4]));
        b.pop();
        assert!(read(&b).is_err());
    }
}
