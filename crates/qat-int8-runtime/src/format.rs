//! The `.qat8` file: a fixed 28-byte header followed by a bincode payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic [`MAGIC`] = `\x89QAT8\r\n\x1a` (PNG-style: catches text-mode and 7-bit transfers) |
//! | 8 | 4 | format version, u32 little endian ([`FORMAT_VERSION`]; version 1 is still read) |
//! | 12 | 4 | flags, u32 LE, must be 0 (reserved) |
//! | 16 | 8 | payload length in bytes, u64 LE; must equal the remaining file length |
//! | 24 | 4 | CRC-32 (ISO-HDLC, the zlib/PNG polynomial) of the payload, u32 LE |
//! | 28 | … | payload: [`Int8Model`] as serde + bincode 2 (standard config, varint lengths) |
//!
//! Versions: 2 added [`Int8Model::rounding`] (the last field of the payload, a bincode enum
//! index: 0 = `Gemmlowp`, 1 = `Single`). A version-1 payload is the same encoding without that
//! field; it decodes as `Target::Tflite` (the old `Rounding::Gemmlowp`), the only rounding version-1 runtimes had: an
//! old file runs as a `tflite` model.
//!
//! Loading checks, in order: length (at most [`MAX_FILE_BYTES`]), magic, version, flags, payload
//! length, checksum, then decodes with bincode's byte limit set to [`MAX_FILE_BYTES`], refuses
//! trailing bytes, and finally runs [`Int8Model::validate`]. No input makes it panic. Memory: the
//! file itself, plus what decoding allocates — bincode counts every string it preallocates against
//! the limit (so they total at most [`MAX_FILE_BYTES`], whatever the file's size) and serde's
//! cautious size hints keep every other preallocation small, growing only with bytes actually
//! read.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::model::{Int8Model, Op, TensorId, TensorInfo};
use crate::validate::ValidationError;
use qat_core::target::Target;

/// The first 8 bytes of every `.qat8` file.
pub const MAGIC: [u8; 8] = *b"\x89QAT8\r\n\x1a";
/// The format version this crate writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this crate reads (version 1: no [`Int8Model::rounding`] field, read
/// as `Target::Tflite`, the old `Rounding::Gemmlowp`).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the fixed header preceding the payload.
pub const HEADER_LEN: usize = 28;
/// Largest file accepted by [`Int8Model::load`] / [`Int8Model::from_bytes`] (1 GiB), and the
/// byte limit of the payload decoder.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why a `.qat8` file could not be read.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is shorter than the header.
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("file is {len} bytes, larger than the {MAX_FILE_BYTES}-byte limit")]
    TooLarge {
        /// Bytes present.
        len: u64,
    },
    /// Not a `.qat8` file.
    #[error("bad magic bytes {found:02x?} (not a .qat8 file)")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// Written by a newer (or unknown) version of the format.
    #[error(
        "format version {found} is not supported (this build reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
    },
    /// Reserved flags were set.
    #[error("header flags {flags:#x} are not supported (must be 0)")]
    UnsupportedFlags {
        /// Flags in the header.
        flags: u32,
    },
    /// The header's payload length disagrees with the file.
    #[error("header declares a {declared}-byte payload but {actual} bytes follow the header")]
    LengthMismatch {
        /// Payload length in the header.
        declared: u64,
        /// Bytes actually present after the header.
        actual: u64,
    },
    /// The payload does not match its checksum (corrupt or truncated file).
    #[error(
        "payload checksum mismatch: header says {stored:#010x}, payload hashes to {computed:#010x}"
    )]
    ChecksumMismatch {
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the payload.
        computed: u32,
    },
    /// The payload is not a valid bincode encoding of an `Int8Model`.
    #[error("decoding payload: {message}")]
    Decode {
        /// bincode's description.
        message: String,
    },
    /// The payload has bytes after the encoded model.
    #[error("payload has {trailing} trailing bytes after the model")]
    TrailingBytes {
        /// Unread bytes.
        trailing: usize,
    },
    /// The model decoded but is inconsistent.
    #[error("invalid model: {0}")]
    Invalid(#[from] ValidationError),
}

/// Why a model could not be written.
#[derive(Debug, Error)]
pub enum SaveError {
    /// The model fails [`Int8Model::validate`]; invalid models are never written.
    #[error("refusing to save an invalid model: {0}")]
    Invalid(#[from] ValidationError),
    /// bincode could not encode the model.
    #[error("encoding model: {message}")]
    Encode {
        /// bincode's description.
        message: String,
    },
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32_TABLE: [u32; 256] = crc32_table();

/// CRC-32/ISO-HDLC (reflected polynomial `0xEDB88320`, init and final xor `0xFFFFFFFF`), the
/// checksum of zlib, PNG and gzip.
///
/// ```
/// assert_eq!(qat_int8_runtime::format::crc32(b"123456789"), 0xCBF4_3926);
/// ```
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = CRC32_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_FILE_BYTES as usize }>()
}

/// The version-1 payload: [`Int8Model`] without `rounding` (same field order and encoding).
#[derive(Deserialize)]
struct ModelV1 {
    name: String,
    tensors: Vec<TensorInfo>,
    ops: Vec<Op>,
    input: TensorId,
    outputs: Vec<TensorId>,
}

impl From<ModelV1> for Int8Model {
    fn from(m: ModelV1) -> Self {
        Int8Model {
            name: m.name,
            tensors: m.tensors,
            ops: m.ops,
            input: m.input,
            outputs: m.outputs,
            rounding: Target::Tflite,
        }
    }
}

/// Decodes a payload of `version` with the byte limit, returning the model and bytes used.
fn decode_payload(payload: &[u8], version: u32) -> Result<(Int8Model, usize), LoadError> {
    let decode_err = |e: bincode::error::DecodeError| LoadError::Decode {
        message: e.to_string(),
    };
    if version == 1 {
        let (m, used): (ModelV1, usize) =
            bincode::serde::decode_from_slice(payload, bincode_config()).map_err(decode_err)?;
        Ok((m.into(), used))
    } else {
        bincode::serde::decode_from_slice(payload, bincode_config()).map_err(decode_err)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Int8Model {
    /// Encodes the model as a `.qat8` byte string (header + checksum + bincode payload).
    /// Validates first: an invalid model is never written.
    ///
    /// ```
    /// # use qat_int8_runtime::{Int8Model, TensorInfo, DType, Op, Target};
    /// # use qat_core::QuantParams;
    /// let q = QuantParams::asymmetric(-1.0, 1.0, 8)?;
    /// let model = Int8Model {
    ///     name: "tiny".into(),
    ///     tensors: vec![
    ///         TensorInfo { name: "x".into(), shape: vec![4], dtype: DType::F32, quant: None },
    ///         TensorInfo { name: "xq".into(), shape: vec![4], dtype: DType::U8, quant: Some(q) },
    ///     ],
    ///     ops: vec![Op::Quantize { input: 0, output: 1 }],
    ///     input: 0,
    ///     outputs: vec![1],
    ///     rounding: Target::Qat,
    /// };
    /// let bytes = model.to_bytes()?;
    /// assert_eq!(Int8Model::from_bytes(&bytes)?, model);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>, SaveError> {
        self.validate()?;
        let payload = bincode::serde::encode_to_vec(self, bincode_config()).map_err(|e| {
            SaveError::Encode {
                message: e.to_string(),
            }
        })?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes and validates a `.qat8` byte string (see the [format table](crate::format)).
    /// Never panics; returns a [`LoadError`] naming the first problem found.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() < HEADER_LEN {
            return Err(LoadError::TooShort { len: bytes.len() });
        }
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(LoadError::TooLarge {
                len: bytes.len() as u64,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(LoadError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 8);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(LoadError::UnsupportedVersion { found: version });
        }
        let flags = u32_at(bytes, 12);
        if flags != 0 {
            return Err(LoadError::UnsupportedFlags { flags });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[16..24]);
        let declared = u64::from_le_bytes(len);
        let payload = &bytes[HEADER_LEN..];
        if declared != payload.len() as u64 {
            return Err(LoadError::LengthMismatch {
                declared,
                actual: payload.len() as u64,
            });
        }
        let stored = u32_at(bytes, 24);
        let computed = crc32(payload);
        if stored != computed {
            return Err(LoadError::ChecksumMismatch { stored, computed });
        }
        let (model, used) = decode_payload(payload, version)?;
        if used != payload.len() {
            return Err(LoadError::TrailingBytes {
                trailing: payload.len() - used,
            });
        }
        model.validate()?;
        Ok(model)
    }

    /// Writes the model to `path` as a `.qat8` file (see [`Int8Model::to_bytes`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SaveError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| SaveError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and validates a `.qat8` file (see [`Int8Model::from_bytes`]). Files larger than
    /// [`MAX_FILE_BYTES`] are refused before reading.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE_BYTES {
            return Err(LoadError::TooLarge { len });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(&bytes)
    }
}
